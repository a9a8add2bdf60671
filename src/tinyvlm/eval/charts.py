"""Charts of results: per-capability accuracy as grouped bars or a radar, as PNG.

The object API with an explicit Agg canvas leaves pyplot's global backend and figure registry
alone, so these are safe inside any host process (notebooks, GUIs, threads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tinyvlm.eval import tables
from tinyvlm.io import atomic_path

Results = Mapping[str, Any]


def plot_capabilities(results: Mapping[str, Any], path: str | Path, dpi: int = 120) -> None:
    """Grouped bars: one group per capability, one colour per model, the baseline grey hatched."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    caps = tables.capabilities(results)
    entries = tables.entries(results)
    fig = Figure(figsize=(max(6.0, 1.5 + 1.1 * len(caps) * max(1, len(entries)) ** 0.5), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    width = 0.8 / max(1, len(entries))
    for i, (label, s, is_baseline) in enumerate(entries):
        per_cap = s.get("per_capability") or {}
        xs = [j + (i - (len(entries) - 1) / 2) * width for j in range(len(caps))]
        # A missing score is a gap, not a zero-height bar that would read as 0%.
        ys = [float("nan") if per_cap.get(c) is None else 100 * per_cap[c] for c in caps]
        style: dict[str, Any] = (
            {"color": "0.8", "edgecolor": "0.4", "hatch": "//"} if is_baseline
            else {"color": colours(i % colours.N)})
        ax.bar(xs, ys, width, label=label, **style)
    ax.set_xticks(range(len(caps)), caps)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("capability")
    ax.set_title("Accuracy per capability")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if not caps:
        ax.text(0.5, 0.5, "no capability scores", ha="center", va="center",
                transform=ax.transAxes)
    if entries:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})


def plot_radar(results: Results, path: str | Path, dpi: int = 120) -> None:
    """Per-capability accuracy on a polar chart, one polygon per model (needs >= 3
    capabilities to read as a radar; fewer fall back to the bar chart)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    caps = tables.capabilities(results)
    if len(caps) < 3:
        plot_capabilities(results, path, dpi)
        return
    fig = Figure(figsize=(6.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="polar")
    angles = [2 * math.pi * i / len(caps) for i in range(len(caps))]
    colours = matplotlib.colormaps["tab10"]
    for i, (label, s, is_baseline) in enumerate(tables.entries(results)):
        per_cap = s.get("per_capability") or {}
        ys = [100 * (per_cap.get(c) or 0.0) for c in caps]
        style: dict[str, Any] = ({"color": "0.5", "linestyle": "--"} if is_baseline
                                 else {"color": colours(i % colours.N)})
        ax.plot([*angles, angles[0]], [*ys, ys[0]], label=label, **style)
        if not is_baseline:
            ax.fill([*angles, angles[0]], [*ys, ys[0]], alpha=0.1, color=style["color"])
    ax.set_xticks(angles, caps)
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per capability (%)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.05, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
