"""results.json, report.md, capabilities.png and a terminal table from evaluation summaries.

results.json schema (keys are only ever added, never renamed)::

    {"models": [{"name", "total_params", "activated_params", "accuracy", "per_capability",
                 "per_combination", "pope": {"accuracy", "precision", "recall", "f1",
                 "yes_ratio", ..., "splits", "mean_f1"}, ...extra keys}],
     "baseline": {"accuracy", "per_capability", "per_combination", "pope", ...} | None,
     ...extra keys}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tinyvlm.eval.metrics import capability_key
from tinyvlm.io import atomic_path, write_json, write_text

BASELINE_NAME = "majority baseline"
_ROW_KEYS = ("name", "total_params", "activated_params")
_SUMMARY_KEYS = ("accuracy", "per_capability", "per_combination", "pope")


def model_row(name: str, total_params: int, activated_params: int,
              summary: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One entry of results["models"]: name, parameter counts, every summary key, then extra.

    `summary` is metrics.summarize's output (its other keys, e.g. n and counts, are kept).
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


def humanize_params(n: int | None) -> str:
    """1_300_000 -> '1.3M'; below a thousand the plain number."""
    if n is None:
        return "-"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        # Rounded first, so 999_950 reads '1.0M' rather than '1000.0K'.
        if round(abs(n) / scale, 1) >= 1:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _entries(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], bool]]:
    """(label, summary, is_baseline) for every model and then the baseline, if any."""
    out = [(str(m["name"]), m, False) for m in results.get("models", [])]
    if results.get("baseline") is not None:
        out.append((BASELINE_NAME, results["baseline"], True))
    return out


def _capabilities(results: Mapping[str, Any]) -> list[str]:
    caps = {c for _, s, _ in _entries(results) for c in s.get("per_capability") or {}}
    return sorted(caps, key=capability_key)


def _combinations(results: Mapping[str, Any]) -> list[str]:
    combos = {c for _, s, _ in _entries(results) for c in s.get("per_combination") or {}}
    return sorted(combos, key=lambda k: (k.count("+"), [capability_key(c) for c in k.split("+")]))


def summary_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cell strings of the main table (report.md's first table, format_table)."""
    caps = _capabilities(results)
    header = ["model", "total params", "activated params", "overall", *caps,
              "POPE F1", "POPE yes-ratio"]
    rows = []
    for label, s, is_baseline in _entries(results):
        pope = s.get("pope") or {}
        per_cap = s.get("per_capability") or {}
        params = ["-", "-"] if is_baseline else [humanize_params(s.get("total_params")),
                                                 humanize_params(s.get("activated_params"))]
        rows.append([label, *params, _pct(s.get("accuracy")),
                     *(_pct(per_cap.get(c)) for c in caps),
                     _pct(pope.get("f1")), _pct(pope.get("yes_ratio"))])
    return header, rows


def combination_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per capability combination, one column per model (and the baseline)."""
    entries = _entries(results)
    # Question counts from the first entry that has them: every model sees the same questions.
    counts: Mapping[str, int] = next(
        (s["counts"]["per_combination"] for _, s, _ in entries if "counts" in s), {})
    header = ["combination", "n", *(label for label, _, _ in entries)]
    rows = [[combo, str(counts[combo]) if combo in counts else "-",
             *(_pct((s.get("per_combination") or {}).get(combo)) for _, s, _ in entries)]
            for combo in _combinations(results)]
    return header, rows


def _score(value: Any, unit: str | None) -> str:
    """A scorer's number as it prints: fractions as percentages, points and percents as is."""
    if not isinstance(value, int | float):
        return "-"
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "percent":
        return f"{value:.1f}%"
    return f"{value:.1f}"


def headlines(row: Mapping[str, Any]) -> dict[str, str]:
    """Column title -> cell for each benchmark the row's run scored (not LLaVA files: the
    main accuracy columns cover them)."""
    out: dict[str, str] = {}
    for name, bench in (row.get("benchmarks") or {}).items():
        result = bench.get("result") if isinstance(bench, Mapping) else None
        if not isinstance(result, Mapping) or bench.get("format") == "llava":
            continue
        unit = result.get("unit")
        if "perception" in result:  # MME: the two totals papers print
            out[f"{name} perception"] = _score(result.get("perception"), unit)
            out[f"{name} cognition"] = _score(result.get("cognition"), unit)
        elif "mean_f1" in result:  # POPE over several splits
            out[f"{name} mean F1"] = _score(result.get("mean_f1"), unit)
        elif "f1" in result:  # one POPE split
            out[f"{name} F1"] = _score(result.get("f1"), unit)
        elif "overall" in result:
            out[name] = _score(result.get("overall"), unit)
        elif "accuracy" in result:
            out[name] = _score(result.get("accuracy"), unit or "fraction")
    return out


def benchmark_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per model, one column per benchmark headline (empty without benchmarks)."""
    models = results.get("models", [])
    cols: list[str] = []
    for m in models:
        cols += [c for c in headlines(m) if c not in cols]
    if not cols:
        return ["model"], []
    return ["model", *cols], [[str(m["name"]), *(headlines(m).get(c, "-") for c in cols)]
                              for m in models]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(header) - 1)  # names left, numbers right
    return "\n".join([line(header), "|" + "|".join(align) + "|", *map(line, rows)])


def _fixed_width(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_table(results: Mapping[str, Any]) -> str:
    """The main table as fixed-width plain text for the terminal."""
    return _fixed_width(*summary_table(results))


def format_benchmarks(results: Mapping[str, Any]) -> str:
    """The benchmark headline table as fixed-width text ('' when no benchmark was scored)."""
    header, rows = benchmark_table(results)
    return _fixed_width(header, rows) if rows else ""


def render_markdown(results: Mapping[str, Any]) -> str:
    parts = ["# Evaluation report", "", _markdown(*summary_table(results)), ""]
    header, rows = combination_table(results)
    if rows:
        parts += ["## Accuracy per capability combination", "", _markdown(header, rows), ""]
    header, rows = benchmark_table(results)
    if rows:
        parts += ["## Benchmarks", "", _markdown(header, rows), ""]
    parts.append("Accuracies are exact match after normalisation; POPE answers are parsed with "
                 "the official POPE rule and the yes-ratio is the share of predictions that "
                 "say yes.")
    return "\n".join(parts) + "\n"


def plot_capabilities(results: Mapping[str, Any], path: str | Path, dpi: int = 120) -> None:
    """Grouped bars: one group per capability, one colour per model, the baseline grey hatched."""
    # The object API with an explicit Agg canvas leaves pyplot's global backend and figure
    # registry alone, so this is safe inside any host process (notebooks, GUIs, threads).
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    caps = _capabilities(results)
    entries = _entries(results)
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


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and capabilities.png into `out_dir` (each atomically).

    Returns ``{"results": ..., "report": ..., "chart": ...}`` paths.
    """
    out = Path(out_dir)
    paths = {"results": out / "results.json", "report": out / "report.md",
             "chart": out / "capabilities.png"}
    write_json(paths["results"], results)
    write_text(paths["report"], render_markdown(results))
    plot_capabilities(results, paths["chart"])
    return paths
