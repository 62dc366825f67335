"""Teachers: a zero-shot FM labels real news well above chance; black-box access yields labels
only; predictions are cached; bad teachers fail with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedfm.bench.scenarios import AGNEWS_DESCRIPTIONS
from fedfm.config import load_config
from fedfm.data.table import load_labelled_text
from fedfm.errors import ConfigError, ModelError
from fedfm.fm4fl import teacher as t
from tests.conftest import DATA


@pytest.fixture(scope="module")
def news():
    return load_labelled_text(DATA / "agnews" / "test.tsv", "text", "label", None, 200, "t")


def keyword_labels(texts: list[str]) -> list[str]:
    """A black-box 'API' for the function teacher: sports words → Sports, else no answer."""
    return ["Sports" if "game" in x.lower() or "win" in x.lower() else "?" for x in texts]


def test_embedding_teacher_labels_news_zero_shot_well_above_chance(news, monkeypatch):
    config = load_config(None, ["teacher.type=embedding", AGNEWS_DESCRIPTIONS])
    teacher = t.build_teacher(config, news.label_names)
    probs = t.teach(teacher, news.texts)
    assert probs.shape == (200, 4)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    accuracy = (probs.argmax(1) == news.labels).mean()
    assert accuracy > 0.65  # chance is 0.25; measured 0.78 on 1,000 rows

    calls = []
    monkeypatch.setattr(teacher, "predict", lambda *a, **k: calls.append(1))
    again = t.teach(teacher, news.texts)  # read from the cache, not asked again
    assert not calls and np.array_equal(again, probs)

    black = load_config(None, ["teacher.type=embedding", "teacher.access=black_box"])
    hard = t.teach(t.build_teacher(black, news.label_names), news.texts[:20])
    assert set(np.unique(hard)) <= {0.0, 1.0} and (hard.sum(1) == 1).all()


def test_the_cache_keeps_label_orders_apart(news):
    config = load_config(None, ["teacher.type=embedding", AGNEWS_DESCRIPTIONS])
    forward = t.teach(t.build_teacher(config, news.label_names), news.texts[:8])
    backward = t.teach(t.build_teacher(config, news.label_names[::-1]), news.texts[:8])
    assert np.allclose(forward, backward[:, ::-1], atol=1e-5)


def test_calibration_divides_out_the_teachers_label_prior():
    class Skewed(t.Teacher):
        def identity(self):
            return {"type": "test-skewed"}

        def _predict(self, texts):
            return np.tile([0.7, 0.3], (len(texts), 1)).astype(np.float32)

    probs = t.teach(Skewed(["a", "b"], "white_box"), ["x", "y"], calibrate=True)
    assert np.allclose(probs, 0.5)
    raw = t.teach(Skewed(["a", "b"], "white_box"), ["x", "y"], calibrate=False)
    assert np.allclose(raw[:, 0], 0.7)


def test_function_teacher_is_black_box_and_abstains_on_unknown_answers():
    config = load_config(
        None,
        [
            "teacher.type=function",
            "teacher.access=black_box",
            f"teacher.model=tests.fm4fl.test_teacher:{keyword_labels.__name__}",
        ],
    )
    teacher = t.build_teacher(config, ("Business", "Sports"))
    rows = t.teach(teacher, ["They win the game", "Shares fell"])
    assert rows.tolist() == [[0.0, 1.0], [0.0, 0.0]]  # an answer naming no label abstains
    with pytest.raises(ConfigError, match="black_box"):
        load_config(None, ["teacher.type=function", "teacher.model=os:getcwd"])
    with pytest.raises(ConfigError, match="could not be imported"):
        bad = load_config(
            None, ["teacher.type=function", "teacher.access=black_box", "teacher.model=nope:f"]
        )
        t.build_teacher(bad, ("a", "b"))


def test_function_teacher_must_answer_every_text():
    teacher = t.FunctionTeacher("tests.fm4fl.test_teacher:keyword_labels", ("a", "b"))
    teacher.function = lambda texts: ["a", "b"]
    with pytest.raises(ModelError, match="returned 2 labels for 1 texts"):
        teacher.predict(["xy"])


def test_generative_teacher_white_and_black_box(tiny_lm, news):
    base = [f"teacher.model={tiny_lm}", "teacher.type=generative", "teacher.max_length=32"]
    white = t.build_teacher(load_config(None, base), news.label_names)
    assert white.answers == ["Business", "Sci", "Sports", "World"]
    probs = white.predict(news.texts[:5])
    assert probs.shape == (5, 4) and np.allclose(probs.sum(1), 1.0, atol=1e-5)

    black = t.build_teacher(
        load_config(None, [*base, "teacher.access=black_box"]), news.label_names
    )
    rows = black.predict(news.texts[:3])
    assert set(np.unique(rows)) <= {0.0, 1.0} and (rows.sum(1) <= 1).all()
    assert black.parse(" Sports.") == 2 and black.parse("It is about sci stuff") == 1
    assert black.parse("**World**!") == 3 and black.parse("'Business':") == 0
    assert black.parse("no idea") == -1

    with pytest.raises(ConfigError, match="distinct tokens"):
        same = load_config(None, [*base, 'teacher.answers=["World=Sports"]'])
        t.build_teacher(same, news.label_names)


def test_descriptions_must_name_known_labels():
    config = load_config(None, ['data.descriptions=["Weather=rain and sun"]'])
    with pytest.raises(ConfigError, match="'Weather', which the data do not have"):
        t.descriptions(config, ("World", "Sports"))
