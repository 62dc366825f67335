"""Charts of the report beyond the per-round curves: the clients' contribution values."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure


def contributions_figure(data: dict[str, Any]) -> Figure:
    """Each client's value (with its 95% half-width, for sampled methods) and payout share,
    highest value first; flagged clients in grey."""
    values: dict[str, float] = data["values"]
    order = sorted(values, key=lambda c: -values[c])
    flagged = set(data.get("flags", {}))
    confidence = data.get("confidence", {})
    payouts = data.get("payouts", {})
    fig = Figure(figsize=(5.6, 0.5 + 0.32 * max(3, len(order))), dpi=100, layout="constrained")
    ax = fig.subplots()
    ys = range(len(order))
    errors = [confidence.get(c, 0.0) if confidence.get(c) != float("inf") else 0.0 for c in order]
    colors = ["0.6" if c in flagged else "tab:blue" for c in order]
    ax.barh(list(ys), [values[c] for c in order], xerr=errors, color=colors, capsize=2)
    ax.set_yticks(list(ys), [f"{c} ({payouts.get(c, 0):.0%})" for c in order])
    ax.invert_yaxis()
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.set_title(f"Contribution values ({data.get('method', '?')}; payout share in brackets)")
    ax.set_xlabel(f"value ({data.get('utility', 'utility')})")
    ax.grid(True, axis="x", alpha=0.3)
    return fig
