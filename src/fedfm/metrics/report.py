"""Self-contained HTML report for a finished (or interrupted) run.

:func:`write_report` turns the per-round metrics (the rows of ``metrics.jsonl``), the run summary
and the resolved TOML config into ``run_dir/report.html``: a single page with no JavaScript, no
external resources and the plots embedded inline as base64 PNGs. The same PNGs are also written to
``run_dir/plots/`` so they can be reused elsewhere. Every file is written atomically (temporary
file in the same directory, then :func:`os.replace`), so a crash never leaves a half-written page.

Plots use the object-oriented :class:`matplotlib.figure.Figure` API, which needs no backend and
never touches global pyplot state.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedfm.errors import FedFMError
from fedfm.metrics.charts import contributions_figure

__all__ = ["rebuild_report", "write_report"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
PLOTS_DIR = "plots"

_MB = 1_000_000  # decimal megabytes, as used everywhere in the report
_DASH = "\u2014"

# Keys of a metrics row that have a dedicated column (or are shown through one).
_BASE_KEYS = frozenset(
    {
        "round",
        "accuracy",
        "loss",
        "bytes_up",
        "bytes_down",
        "round_seconds",
        "peak_rss_mb",
        "clients",
    }
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; }
.plots img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto;
      font-size: 0.85em; }
.muted { color: #777; }
""".strip()


# --------------------------------------------------------------------------------------------
# Value helpers
# --------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """Return ``value`` as a float if it is a real number (bools excluded), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _fmt_float(value: float) -> str:
    """Format a float with 4 decimals; tiny or huge magnitudes use 4 significant digits."""
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if value == 0 or 1e-3 <= magnitude < 1e9:
        return f"{value:.4f}"
    return f"{value:.4g}"


def _fmt_number(value: Any) -> str:
    """Format an int with thousands separators and a float via :func:`_fmt_float`."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f"{int(value):,}"
    number = _num(value)
    return _DASH if number is None else _fmt_float(number)


def _fmt_mb(value: Any) -> str:
    """Format a byte count as decimal megabytes with 2 decimals (``—`` if not numeric)."""
    number = _num(value)
    return _DASH if number is None else f"{number / _MB:.2f}"


def _compact_json(value: Any) -> str:
    """Serialise nested values compactly; anything JSON cannot handle falls back to ``str``."""
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def _fmt_summary_value(key: str, value: Any) -> str:
    """Format one summary value as plain (unescaped) text."""
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Real):
        if "bytes" in key.lower():
            return f"{_fmt_mb(value)} MB"
        return _fmt_number(value)
    return _compact_json(value)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _round_axis(rows: list[dict]) -> list[float]:
    """X coordinates of the rows: their ``round`` when numeric, else their 1-based position."""
    xs: list[float] = []
    for index, row in enumerate(rows, start=1):
        number = _num(row.get("round"))
        xs.append(number if number is not None else float(index))
    return xs


def _series(xs: list[float], rows: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """Pairs (x, row[key] / scale) for the rows where ``row[key]`` is a finite number."""
    px: list[float] = []
    py: list[float] = []
    for x, row in zip(xs, rows, strict=True):
        number = _num(row.get(key))
        if number is not None and math.isfinite(number):
            px.append(x)
            py.append(number / scale)
    return px, py


def _plot(
    title: str,
    ylabel: str,
    series: Iterable[tuple[str, list[float], list[float]]],
    xlabel: str = "round",
    y_from_zero: bool = False,
) -> Figure:
    """Draw line series (label, xs, ys) on one axis.

    Axes show plain values, never an offset ("+1.5e6" in a corner); ``y_from_zero`` starts the
    y axis at 0 (for amounts such as MB, where a zoomed axis exaggerates small changes)."""
    fig = Figure(figsize=(5.6, 3.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    drawn = 0
    for label, xs, ys in series:
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
            drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
    elif drawn > 1:
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if xlabel == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(style="plain", useOffset=False)
    if y_from_zero and drawn:
        ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    # Drop the "Software" tEXt chunk (it carries a URL) to keep the page free of links.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _make_plots(rows: list[dict]) -> dict[str, bytes]:
    """Render the plots as PNG bytes; keys are the file names."""
    return {name: _png(fig) for name, fig in _figures(rows).items()}


def _figures(rows: list[dict]) -> dict[str, Figure]:
    """The accuracy, loss, traffic and accuracy-against-MB plots; keys are the PNG file names."""
    xs = _round_axis(rows)
    acc_x, acc_y = _series(xs, rows, "accuracy")
    loss_x, loss_y = _series(xs, rows, "loss")
    up_x, up_y = _series(xs, rows, "bytes_up", scale=_MB)
    down_x, down_y = _series(xs, rows, "bytes_down", scale=_MB)
    # Accuracy against the MB sent so far (uplink + downlink): what a codec buys per byte.
    sent, cumulative = 0.0, []
    for row in rows:
        sent += sum(_num(row.get(k)) or 0.0 for k in ("bytes_up", "bytes_down")) / _MB
        cumulative.append(sent)
    acc_mb_x, acc_mb_y = _series(cumulative, rows, "accuracy")
    return {
        "accuracy.png": _plot("Accuracy per round", "accuracy", [("accuracy", acc_x, acc_y)]),
        "loss.png": _plot(
            "Training loss per round", "mean client loss", [("loss", loss_x, loss_y)]
        ),
        "bytes.png": _plot(
            "MB sent per round",
            "MB",
            [("uplink", up_x, up_y), ("downlink", down_x, down_y)],
            y_from_zero=True,
        ),
        "accuracy_vs_mb.png": _plot(
            "Accuracy against MB sent",
            "accuracy",
            [("accuracy", acc_mb_x, acc_mb_y)],
            xlabel="MB sent so far (up + down)",
        ),
    }


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _extra_columns(rows: list[dict]) -> list[str]:
    """Non-base keys holding a scalar number in at least one row, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in _BASE_KEYS and key not in seen and _num(value) is not None:
                seen[str(key)] = None
    return list(seen)


def _clients_count(value: Any) -> str:
    """Number of clients in a round (``—`` when the value is not a list)."""
    if isinstance(value, list | tuple | set):
        return str(len(value))
    return _DASH


def _cell(text: str, numeric: bool = True) -> str:
    """One escaped table cell."""
    css = ' class="num"' if numeric else ""
    return f"<td{css}>{html.escape(text)}</td>"


def _summary_table(summary: dict) -> str:
    """HTML for the "Final figures" table."""
    if not summary:
        return '<p class="muted">No summary recorded.</p>'
    lines = ["<table>", "<tr><th>figure</th><th>value</th></tr>"]
    for key, value in summary.items():
        name = str(key)
        cell = _cell(_fmt_summary_value(name, value), numeric=_num(value) is not None)
        lines.append(f"<tr><th>{html.escape(name)}</th>{cell}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _rounds_table(rows: list[dict]) -> str:
    """HTML for the per-round table (base columns followed by extra numeric columns)."""
    if not rows:
        return '<p class="muted">No rounds recorded.</p>'
    extras = _extra_columns(rows)
    base: list[tuple[str, Callable[[dict], str]]] = [
        ("round", lambda r: _fmt_number(r.get("round"))),
        ("accuracy", lambda r: _fmt_number(r.get("accuracy"))),
        ("loss", lambda r: _fmt_number(r.get("loss"))),
        ("MB up", lambda r: _fmt_mb(r.get("bytes_up"))),
        ("MB down", lambda r: _fmt_mb(r.get("bytes_down"))),
        ("seconds", lambda r: _fmt_number(r.get("round_seconds"))),
        ("peak RSS MB", lambda r: _fmt_number(r.get("peak_rss_mb"))),
        ("clients", lambda r: _clients_count(r.get("clients"))),
    ]
    header = "".join(f"<th>{html.escape(name)}</th>" for name, _ in base)
    header += "".join(f"<th>{html.escape(name)}</th>" for name in extras)
    lines = ["<table>", f"<tr>{header}</tr>"]
    for row in rows:
        cells = [_cell(fmt(row)) for _, fmt in base]
        cells += [_cell(_fmt_number(row.get(name))) for name in extras]
        lines.append(f"<tr>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _plots_section(plots: dict[str, bytes]) -> str:
    """HTML embedding each PNG inline as a base64 data URI."""
    if not plots:
        return '<p class="muted">No rounds recorded, so nothing to plot.</p>'
    figures = []
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        alt = html.escape(name.removesuffix(".png"))
        figures.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>')
    return '<div class="plots">\n' + "\n".join(figures) + "\n</div>"


def _render_page(
    title: str, config_toml: str, rows: list[dict], summary: dict, plots: dict[str, bytes]
) -> str:
    """Assemble the whole HTML document."""
    safe_title = html.escape(title)
    n_rounds = len(rows)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{safe_title} \u2014 fedfm report</title>",
            f"<style>\n{_CSS}\n</style>",
            "</head>",
            "<body>",
            f"<h1>{safe_title}</h1>",
            f'<p class="muted">fedfm run report \u00b7 {n_rounds} round(s) recorded</p>',
            "<h2>Final figures</h2>",
            _summary_table(summary),
            "<h2>Plots</h2>",
            _plots_section(plots),
            "<h2>Per-round metrics</h2>",
            _rounds_table(rows),
            "<h2>Resolved config</h2>",
            f"<pre>{html.escape(config_toml)}</pre>",
            "</body>",
            "</html>",
            "",
        ]
    )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; a report is for sharing: the usual 0666 minus umask.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _run_title(run_dir: Path, summary: dict) -> str:
    """The run's name: ``summary["name"]`` if set, else the run directory's name."""
    name = summary.get("name") if isinstance(summary, dict) else None
    if isinstance(name, str) and name.strip():
        return name
    return run_dir.resolve().name or str(run_dir)


def rebuild_report(run_dir: Path) -> Path:
    """Write ``report.html`` again from a finished run directory's own files."""
    run_dir = Path(run_dir)
    for name in ("config.toml", "metrics.jsonl", "summary.json"):
        if not (run_dir / name).is_file():
            raise FedFMError(f"{str(run_dir)!r} is not a finished run directory: {name} is missing")
    text = (run_dir / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return write_report(run_dir, (run_dir / "config.toml").read_text(), rows, summary)


def write_report(run_dir: Path, config_toml: str, rows: list[dict], summary: dict) -> Path:
    """Write run_dir/report.html: one self-contained page and return its path.

    Args:
        run_dir: The run directory; created if missing. The plots also go to ``run_dir/plots/``
            as ``accuracy.png``, ``loss.png``, ``bytes.png`` and ``accuracy_vs_mb.png`` (only when there are rows).
        config_toml: The resolved config, shown verbatim (escaped) in a ``<pre>`` block.
        rows: Per-round metric dicts as written to ``metrics.jsonl``. Missing or non-numeric
            values are shown as a dash; extra scalar numeric keys get their own column.
        summary: Final figures of the run; byte counts are shown in MB, nested values as JSON.

    Returns:
        The path of the written ``report.html``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [row for row in rows if isinstance(row, dict)]
    summary = summary if isinstance(summary, dict) else {}

    plots = _make_plots(rows) if rows else {}
    contributions = run_dir / "contributions.json"  # `fedfm contrib`, [governance] contrib
    if contributions.is_file():
        try:
            plots["contributions.png"] = _png(
                contributions_figure(json.loads(contributions.read_text()))
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("report: %s is not a contributions file (%s); not drawn", contributions, e)
    if plots:
        plots_dir = run_dir / PLOTS_DIR
        plots_dir.mkdir(exist_ok=True)
        for name, png in plots.items():
            _atomic_write(plots_dir / name, png)

    page = _render_page(_run_title(run_dir, summary), config_toml, rows, summary, plots)
    report_path = run_dir / REPORT_NAME
    _atomic_write(report_path, page.encode("utf-8"))
    return report_path
