"""Tests for the self-contained HTML run report."""

from __future__ import annotations

import base64
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from fedfm.metrics import report
from fedfm.metrics.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DASH = "\u2014"

CONFIG = """\
[run]
name = "demo"
note = "<script>alert('x')</script> & more"

[strategy]
kind = "fedavg"
"""


class _Tables(HTMLParser):
    """Collect every <table> as a list of rows of cell texts, and every <h2> heading."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self.title = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2", "title"):
            self._tag = tag

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None
        elif tag in ("h1", "h2", "title"):
            self._tag = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._tag == "h2":
            self.headings.append(data.strip())
        elif self._tag == "h1":
            self.title += data


def _parse(page: str) -> _Tables:
    parser = _Tables()
    parser.feed(page)
    parser.close()
    return parser


def _rows() -> list[dict]:
    return [
        {
            "round": 1,
            "loss": 2.5,
            "accuracy": None,
            "bytes_up": 1_500_000,
            "bytes_down": 3_000_000,
            "round_seconds": 1.25,
            "peak_rss_mb": 512.0,
            "clients": ["c0", "c1"],
        },
        {
            "round": 2,
            "loss": 1.75,
            "accuracy": 0.5,
            "bytes_up": 2_000_000,
            "bytes_down": 3_000_000,
            "round_seconds": 1.5,
            "peak_rss_mb": 530.5,
            "clients": ["c0", "c1", "c2"],
            "epsilon": 1.25,
            "note": "warm-up <done>",  # non-numeric unknown key: ignored, no crash
        },
        {
            "round": 3,
            "loss": 1.125,
            "accuracy": 0.8123,
            "bytes_up": 2_500_000,
            "bytes_down": 3_000_000,
            "round_seconds": 1.75,
            "peak_rss_mb": 540.0,
            "clients": ["c1"],
            "epsilon": 2.5,
            "per_client": {"c1": 0.8},  # nested value: not a column, no crash
        },
    ]


def _summary() -> dict:
    return {
        "final_accuracy": 0.8123,
        "rounds": 3,
        "total_seconds": 4.5,
        "bytes_up_total": 6_000_000,
        "bytes_down_total": 9_000_000,
        "peak_rss_mb": 540.0,
        "trainable_params": 12_345,
        "total_params": 1_000_000,
        "per_class_accuracy": {"cat": 0.9, "dog": 0.75},
    }


def test_report_with_three_rounds(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-42"
    run_dir.mkdir()
    path = write_report(run_dir, CONFIG, _rows(), _summary())

    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    parsed = _parse(page)

    # Title falls back to the directory name.
    assert parsed.title.strip() == "run-42"
    assert parsed.headings == [
        "Final figures",
        "Plots",
        "Per-round metrics",
        "Resolved config",
    ]

    # Four inline PNGs, each identical to the file saved under plots/.
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    decoded = [base64.b64decode(data) for data in images]
    names = ("accuracy.png", "loss.png", "bytes.png", "accuracy_vs_mb.png")
    files = [run_dir / "plots" / name for name in names]
    for png, file in zip(decoded, files, strict=True):
        assert png.startswith(PNG_SIGNATURE)
        assert file.read_bytes() == png

    # Config shown escaped, never as live markup.
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script" not in page
    assert "kind = &quot;fedavg&quot;" in page

    summary_table, rounds_table = parsed.tables
    figures = dict(summary_table[1:])
    assert figures["final_accuracy"] == "0.8123"
    assert figures["rounds"] == "3"
    assert figures["bytes_up_total"] == "6.00 MB"
    assert figures["bytes_down_total"] == "9.00 MB"
    assert figures["trainable_params"] == "12,345"
    assert figures["per_class_accuracy"] == '{"cat":0.9,"dog":0.75}'

    header, *body = rounds_table
    assert header == [
        "round",
        "accuracy",
        "loss",
        "MB up",
        "MB down",
        "seconds",
        "peak RSS MB",
        "clients",
        "epsilon",
    ]
    assert [row[0] for row in body] == ["1", "2", "3"]
    assert body[0] == [
        "1",
        DASH,
        "2.5000",
        "1.50",
        "3.00",
        "1.2500",
        "512.0000",
        "2",
        DASH,
    ]
    assert body[1][1] == "0.5000"
    assert body[1][-1] == "1.2500"
    assert body[2][1] == "0.8123"
    assert body[2][7] == "1"
    assert body[2][-1] == "2.5000"
    # Non-numeric and nested unknown keys do not become columns.
    assert "note" not in header and "per_client" not in header
    assert "warm-up" not in page

    # Fully offline: no links of any kind, no scripts.
    assert "http://" not in page
    assert "https://" not in page

    # Atomic write leaves no temporary files behind.
    assert sorted(p.name for p in run_dir.iterdir()) == ["plots", "report.html"]
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "accuracy.png",
        "accuracy_vs_mb.png",
        "bytes.png",
        "loss.png",
    ]


def test_report_with_zero_rows(tmp_path: Path) -> None:
    path = write_report(tmp_path, CONFIG, [], {"final_accuracy": None, "rounds": 0})
    page = path.read_text(encoding="utf-8")
    parsed = _parse(page)

    assert parsed.title.strip() == tmp_path.name
    assert "data:image/png" not in page
    assert not (tmp_path / "plots").exists()
    assert "No rounds recorded" in page
    assert "&lt;script&gt;" in page and "<script" not in page
    (summary_table,) = parsed.tables
    assert dict(summary_table[1:]) == {"final_accuracy": DASH, "rounds": "0"}
    assert "http://" not in page and "https://" not in page


def test_report_with_one_row_and_named_run(tmp_path: Path) -> None:
    row = _rows()[2] | {"attack_success_rate": 0.125, "flag": True}
    summary = {"name": "fedavg <lora>", "final_accuracy": 0.8123}
    page = write_report(tmp_path, "x = 1\n", [row], summary).read_text(encoding="utf-8")
    parsed = _parse(page)

    assert parsed.title.strip() == "fedavg <lora>"
    assert "<h1>fedavg &lt;lora&gt;</h1>" in page
    assert page.count("data:image/png;base64,") == 4
    header, only = parsed.tables[1]
    assert header[-2:] == ["epsilon", "attack_success_rate"]
    assert "flag" not in header  # booleans are not numeric columns
    assert only[0] == "3" and only[-1] == "0.1250"
    for name in ("accuracy.png", "loss.png", "bytes.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_SIGNATURE)


def test_rows_with_odd_values_do_not_crash(tmp_path: Path) -> None:
    rows = [
        {
            "round": 1,
            "loss": "nan?",
            "accuracy": None,
            "bytes_up": None,
            "bytes_down": 10,
            "round_seconds": 0.1,
            "peak_rss_mb": 1.0,
            "clients": "c0",
            "extra": [1, 2],
        }
    ]
    page = write_report(tmp_path, "", rows, {}).read_text(encoding="utf-8")
    header, only = _parse(page).tables[-1]
    assert header[-1] == "clients"
    assert only[2] == DASH and only[3] == DASH and only[7] == DASH
    assert page.count("data:image/png;base64,") == 4


def test_failed_write_keeps_previous_report(tmp_path: Path, monkeypatch) -> None:
    path = write_report(tmp_path, "first = true\n", _rows(), _summary())
    before = path.read_text(encoding="utf-8")

    def boom(src: str, dst: os.PathLike) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, "second = true\n", _rows(), _summary())
    monkeypatch.undo()

    assert path.read_text(encoding="utf-8") == before
    assert "first = true" in before
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert leftovers == []


def test_report_files_are_readable_by_others_as_the_umask_allows(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_report(tmp_path, CONFIG, _rows(), _summary())
    finally:
        os.umask(old)
    for path in [tmp_path / "report.html", *(tmp_path / "plots").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path.name


def test_mb_plot_has_no_offset_and_starts_at_zero() -> None:
    # Nearly constant traffic (as with a fixed-size LoRA update): matplotlib's default would
    # show "+6.1e1" in a corner and zoom into the last digits.
    rows = [{"round": r, "bytes_up": 61_000_000 + r} for r in (1, 2, 3)]
    fig = report._figures(rows)["bytes.png"]
    FigureCanvasAgg(fig).draw()  # the offset text is decided when the figure is drawn
    ax = fig.axes[0]
    assert ax.yaxis.get_major_formatter().get_offset() == ""
    assert ax.get_ylim()[0] == 0


def test_accuracy_against_cumulative_mb() -> None:
    fig = report._figures(_rows())["accuracy_vs_mb.png"]
    ax = fig.axes[0]
    (line,) = ax.lines
    # Round 1 has no accuracy; rounds 2 and 3 at 4.5 + 5.0 and 4.5 + 5.0 + 5.5 MB sent.
    assert list(line.get_xdata()) == pytest.approx([9.5, 15.0])
    assert list(line.get_ydata()) == pytest.approx([0.5, 0.8123])
    assert ax.get_xlabel().startswith("MB sent")
