"""`tinyvlm report`: one table comparing the models of several runs (Markdown and HTML), and a
chart of per-capability accuracy (grouped bars, or a radar).

Reads each run's results.json (the schema in report.py); writes comparison.md,
comparison.html and comparison.png. Columns: parameters and cost (efficiency keys of
results.json, '-' where a run predates them), overall accuracy, each capability, and the
headline number of each benchmark the runs scored (POPE F1, MME perception/cognition,
MMBench/SEED/ScienceQA/VQA/MOAT overall).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval import report
from tinyvlm.eval.report import headlines
from tinyvlm.io import atomic_path, read_json, write_text

Results = Mapping[str, Any]


def load_runs(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One results document with every model of every run (a run directory or its
    results.json). Names that repeat across runs get the run's directory name appended; the
    first run with a baseline provides it."""
    models: list[dict[str, Any]] = []
    baseline = None
    for p in paths:
        path = Path(p)
        file = path / "results.json" if path.is_dir() else path
        if not file.is_file():
            raise InputError("no results.json here (run `tinyvlm eval` first)", path)
        doc = read_json(file)
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
            raise InputError("not a tinyvlm results.json (no 'models' list)", file)
        names = {m["name"] for m in models}
        for row in doc["models"]:
            if not isinstance(row, dict) or "name" not in row:
                raise InputError("a model row without 'name'", file)
            row = dict(row)
            if row["name"] in names:
                row["name"] = f"{row['name']} ({file.parent.name})"
            models.append(row)
        if baseline is None:
            baseline = doc.get("baseline")
    return report.build_results(models, baseline)


# --------------------------------------------------------------------------- cells


def _num(x: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def _flops(x: float | None) -> str:
    if x is None:
        return "-"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _bytes(x: float | None) -> str:
    if x is None:
        return "-"
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} B"


_COST = (  # (column, results.json key, formatter)
    ("visual tokens", "visual_tokens_per_image", _num),
    ("prefill FLOPs/token", "prefill_flops_per_token", _flops),
    ("decode FLOPs/token", "decode_flops_per_token", _flops),
    ("vision FLOPs/image", "vision_flops_per_image", _flops),
    ("latency ms/sample", "latency_ms_per_sample", lambda x: _num(x, "{:.2f}")),
    ("peak memory", "peak_memory_bytes", _bytes),
    ("KV cache/sample", "kv_cache_bytes", _bytes),
)


def comparison_table(results: Results) -> tuple[list[str], list[list[str]]]:
    """The main summary table plus cost columns and benchmark headline columns."""
    header, rows = report.summary_table(results)
    entries = report._entries(results)
    bench_cols: list[str] = []
    for _, s, _ in entries:
        bench_cols += [c for c in headlines(s) if c not in bench_cols]
    cost = [c for c, key, _ in _COST if any(key in s for _, s, b in entries if not b)]
    out_rows = []
    for row, (_, s, is_baseline) in zip(rows, entries, strict=True):
        costs = {c: ("-" if is_baseline else fmt(s.get(key))) for c, key, fmt in _COST}
        heads = headlines(s)
        out_rows.append([*row[:3], *(costs[c] for c in cost), *row[3:],
                         *(heads.get(c, "-") for c in bench_cols)])
    return [*header[:3], *cost, *header[3:], *bench_cols], out_rows


def render_markdown(results: Results) -> str:
    parts = ["# Model comparison", "", report._markdown(*comparison_table(results)), "",
             _NOTE, ""]
    return "\n".join(parts)


_NOTE = ("Cost columns come from each run's results.json: FLOPs are analytic (2 per "
         "multiply-accumulate, matmuls and attention), latency is generation time per sample "
         "at the run's batch size, peak memory is measured as the row's peak_memory_method "
         "says. Benchmark columns are the official scorers' headline numbers.")


def render_html(results: Results) -> str:
    header, rows = comparison_table(results)

    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values)

    body = "\n".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Model comparison</title>\n"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 8px}td{text-align:right}"
        "td:first-child{text-align:left}th{background:#f4f4f4}</style></head><body>\n"
        "<h1>Model comparison</h1>\n"
        f"<table>\n<thead><tr>{cells('th', header)}</tr></thead>\n<tbody>\n{body}\n"
        f"</tbody></table>\n<p>{html.escape(_NOTE)}</p>\n</body></html>\n"
    )


def plot_radar(results: Results, path: str | Path, dpi: int = 120) -> None:
    """Per-capability accuracy on a polar chart, one polygon per model (needs >= 3
    capabilities to read as a radar; fewer fall back to the bar chart)."""
    import math

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    caps = report._capabilities(results)
    if len(caps) < 3:
        report.plot_capabilities(results, path, dpi)
        return
    fig = Figure(figsize=(6.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="polar")
    angles = [2 * math.pi * i / len(caps) for i in range(len(caps))]
    colours = matplotlib.colormaps["tab10"]
    for i, (label, s, is_baseline) in enumerate(report._entries(results)):
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


def write_comparison(results: Results, out_dir: str | Path, chart: str = "bars"
                     ) -> dict[str, Path]:
    """comparison.md, comparison.html and comparison.png in `out_dir`."""
    out = Path(out_dir)
    paths = {"markdown": out / "comparison.md", "html": out / "comparison.html",
             "chart": out / "comparison.png"}
    write_text(paths["markdown"], render_markdown(results))
    write_text(paths["html"], render_html(results))
    if chart == "radar":
        plot_radar(results, paths["chart"])
    else:
        report.plot_capabilities(results, paths["chart"])
    return paths
