"""training.png: the loss of every stage of a run, from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from tinyvlm.io import atomic_path, read_jsonl


def plot_training(metrics_file: str | Path, path: str | Path, dpi: int = 120) -> Path | None:
    """One panel per stage (loss against step); None when the run logged nothing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_jsonl(metrics_file) if Path(metrics_file).is_file() else []
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    if not stages:
        return None
    fig = Figure(figsize=(3.2 * len(stages), 3.0))
    FigureCanvasAgg(fig)
    for i, stage in enumerate(stages, 1):
        ax = fig.add_subplot(1, len(stages), i)
        points = [(r["step"], r["loss"]) for r in rows if r["stage"] == stage]
        ax.plot(*zip(*points, strict=True), color="tab:blue")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if i == 1:
            ax.set_ylabel("training loss")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return Path(path)
