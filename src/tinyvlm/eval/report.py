"""Reports: the results.json document, report.md, capabilities.png and the terminal table of
one evaluation, and `tinyvlm report`'s comparison of several runs (comparison.md, .html, .png).

results.json schema (keys are only ever added, never renamed)::

    {"models": [{"name", "total_params", "activated_params", "accuracy", "per_capability",
                 "per_combination", "pope": {"accuracy", "precision", "recall", "f1",
                 "yes_ratio", ..., "splits", "mean_f1"}, ...extra keys}],
     "baseline": {"accuracy", "per_capability", "per_combination", "pope", ...} | None,
     ...extra keys}
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval import charts, tables
from tinyvlm.io import read_json, write_json, write_text

BASELINE_NAME = tables.BASELINE_NAME
_ROW_KEYS = ("name", "total_params", "activated_params")
_SUMMARY_KEYS = ("accuracy", "per_capability", "per_combination", "pope")
Results = Mapping[str, Any]


def model_row(name: str, total_params: int, activated_params: int,
              summary: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One entry of results["models"]: name, parameter counts, every summary key, then extra.

    `summary` is the capability scorer's summarize output (its other keys, e.g. n and counts,
    are kept).
    """
    missing = [k for k in _SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"model_row({name!r}): summary lacks {', '.join(missing)}")
    clash = sorted(set(extra) & {*_ROW_KEYS, *_SUMMARY_KEYS})
    if clash:
        raise ValueError(f"model_row({name!r}): extra keys {clash} would overwrite the schema")
    return {"name": name, "total_params": int(total_params),
            "activated_params": int(activated_params), **summary, **extra}


def build_results(rows: Iterable[Mapping[str, Any]], baseline_summary: Mapping[str, Any] | None,
                  **extra: Any) -> dict[str, Any]:
    """The results.json document; ``baseline`` is None when no training set gave a prior."""
    if {"models", "baseline"} & set(extra):
        raise ValueError("build_results: extra keys may not be 'models' or 'baseline'")
    return {"models": [dict(r) for r in rows],
            "baseline": None if baseline_summary is None else dict(baseline_summary), **extra}


# --------------------------------------------------------------------------- one evaluation


def format_table(results: Results) -> str:
    """The main table as fixed-width plain text for the terminal."""
    return tables.fixed_width(*tables.summary_table(results))


def format_benchmarks(results: Results) -> str:
    """The benchmark headline table as fixed-width text ('' when no benchmark was scored)."""
    header, rows = tables.benchmark_table(results)
    return tables.fixed_width(header, rows) if rows else ""


def render_markdown(results: Results) -> str:
    parts = ["# Evaluation report", "", tables.markdown(*tables.summary_table(results)), ""]
    header, rows = tables.combination_table(results)
    if rows:
        parts += ["## Accuracy per capability combination", "", tables.markdown(header, rows),
                  ""]
    header, rows = tables.benchmark_table(results)
    if rows:
        parts += ["## Benchmarks", "", tables.markdown(header, rows), ""]
    parts.append("Accuracies are exact match after normalisation; POPE answers are parsed with "
                 "the official POPE rule and the yes-ratio is the share of predictions that "
                 "say yes.")
    return "\n".join(parts) + "\n"


def write_report(results: Results, out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and capabilities.png into `out_dir` (each atomically).

    Returns ``{"results": ..., "report": ..., "chart": ...}`` paths.
    """
    out = Path(out_dir)
    paths = {"results": out / "results.json", "report": out / "report.md",
             "chart": out / "capabilities.png"}
    write_json(paths["results"], results)
    write_text(paths["report"], render_markdown(results))
    charts.plot_capabilities(results, paths["chart"])
    return paths


# --------------------------------------------------------------------------- several runs


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
    return build_results(models, baseline)


_NOTE = ("Cost columns come from each run's results.json: FLOPs are analytic (2 per "
         "multiply-accumulate, matmuls and attention), latency is generation time per sample "
         "at the run's batch size, peak memory is measured as the row's peak_memory_method "
         "says. Benchmark columns are the official scorers' headline numbers.")


def render_comparison(results: Results) -> str:
    parts = ["# Model comparison", "", tables.markdown(*tables.comparison_table(results)), "",
             _NOTE, ""]
    return "\n".join(parts)


def render_html(results: Results) -> str:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Model comparison</title>\n"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 8px}td{text-align:right}"
        "td:first-child{text-align:left}th{background:#f4f4f4}</style></head><body>\n"
        "<h1>Model comparison</h1>\n"
        f"{tables.html_table(*tables.comparison_table(results))}\n"
        f"<p>{html.escape(_NOTE)}</p>\n</body></html>\n"
    )


def write_comparison(results: Results, out_dir: str | Path, chart: str = "bars"
                     ) -> dict[str, Path]:
    """comparison.md, comparison.html and comparison.png in `out_dir`."""
    out = Path(out_dir)
    paths = {"markdown": out / "comparison.md", "html": out / "comparison.html",
             "chart": out / "comparison.png"}
    write_text(paths["markdown"], render_comparison(results))
    write_text(paths["html"], render_html(results))
    if chart == "radar":
        charts.plot_radar(results, paths["chart"])
    else:
        charts.plot_capabilities(results, paths["chart"])
    return paths

