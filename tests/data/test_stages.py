"""Continual learning's stage schedule: which rows a client trains on in each round."""

from __future__ import annotations

import numpy as np
import pytest

from fedfm.client.app import ClientData, stage_data
from fedfm.config import load_config
from fedfm.data.stages import Stages
from fedfm.errors import ConfigError, DataError

NAMES = ("Business", "Sci/Tech", "Sports", "World")
STAGES = 'continual.stages=[["World", "Sports"], ["Business", "Sci/Tech"]]'


def config(*overrides: str):
    return load_config(
        None, [STAGES, "federation.rounds=4", "continual.rounds_per_stage=2", *overrides]
    )


def client(labels: list[int]) -> ClientData:
    """A client holding one row per entry of ``labels`` (rows 0 … n − 1)."""
    labels = np.array(labels, dtype=np.int64)
    return ClientData(None, labels, np.arange(len(labels)))


def test_names_and_indices_resolve_to_the_same_stages():
    train = np.array([0, 1, 2, 3])
    by_name = Stages.resolve(config(), NAMES, train)
    by_index = Stages.resolve(config("continual.stages=[[3, 2], [0, 1]]"), NAMES, train)
    assert by_name.labels == by_index.labels == ((3, 2), (0, 1))
    assert [by_name.stage_of(r) for r in (1, 2, 3, 4)] == [0, 0, 1, 1]


def test_each_round_trains_only_its_stage_labels_without_replay():
    stages = Stages.resolve(config(), NAMES, np.array([0, 1, 2, 3]))
    data = client([3, 0, 2, 1, 3, 0, 2, 1])  # World Business Sports Sci/Tech, twice
    for rnd, labels in ((1, {2, 3}), (2, {2, 3}), (3, {0, 1}), (4, {0, 1})):
        rows = stage_data(stages, "c0", 0, rnd, data).rows
        assert set(data.labels[rows]) == labels
        assert len(rows) == 4  # every row of the stage, nothing else


def test_replay_adds_a_seeded_buffer_of_earlier_stage_rows():
    stages = Stages.resolve(
        config("continual.mitigation=replay", "continual.replay_rows=3"),
        NAMES,
        np.array([0, 1, 2, 3]),
    )
    data = client([3, 2] * 10 + [0, 1] * 5)  # 20 rows of stage 0, 10 of stage 1
    first = stage_data(stages, "c0", 0, 1, data).rows
    assert len(first) == 20 and set(data.labels[first]) == {2, 3}  # stage 0: nothing to replay
    later = stage_data(stages, "c0", 0, 3, data).rows
    current, replay = later[:10], later[10:]
    assert set(data.labels[current]) == {0, 1} and len(current) == 10
    assert len(replay) == 3 and set(data.labels[replay]) <= {2, 3}  # only earlier stages
    # seeded: the same buffer again, another client index draws another one
    assert np.array_equal(stage_data(stages, "c0", 0, 4, data).rows[10:], replay)
    others = {tuple(stages.replay(data.labels, data.rows, 1, i)) for i in range(1, 6)}
    assert others - {tuple(replay)}


def test_a_client_without_rows_of_the_stage_is_refused_not_trained():
    stages = Stages.resolve(config("continual.mitigation=replay"), NAMES, np.array([0, 1, 2, 3]))
    data = client([3, 2, 3])  # stage-0 labels only: nothing to train in stage 1, even with replay
    with pytest.raises(DataError, match="holds no rows of stage 1"):
        stage_data(stages, "c7", 0, 3, data)


@pytest.mark.parametrize(
    ("stages", "train", "message"),
    [
        ('[["World", "Weather"], ["Business"]]', [0, 1, 2, 3], "a label of the data set"),
        ('[["World", "Sports"], ["Sports"]]', [0, 1, 2, 3], "labels in one stage only"),
        ("[[3, 2], [0, 7]]", [0, 1, 2, 3], "a label of the data set"),
        ('[["World"], ["Business"]]', [0, 1, 2], "no training row has this one"),
    ],
)
def test_stages_the_data_cannot_fill_are_refused(stages, train, message):
    c = config(f"continual.stages={stages}")
    with pytest.raises(ConfigError, match=message):
        Stages.resolve(c, NAMES, np.array(train))
