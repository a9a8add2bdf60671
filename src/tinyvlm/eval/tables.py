"""The tables of a results document (results.json): the main table (parameters, accuracy per
capability, POPE), per capability combination, the benchmarks' headline numbers, and the
comparison with cost columns; as cell strings, rendered as Markdown, HTML or fixed width."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from tinyvlm.eval.formats import headlines as benchmark_headlines
from tinyvlm.eval.scorers.capabilities import capability_key

BASELINE_NAME = "majority baseline"
Results = Mapping[str, Any]
Table = tuple[list[str], list[list[str]]]


def entries(results: Results) -> list[tuple[str, Mapping[str, Any], bool]]:
    """(label, summary, is_baseline) for every model and then the baseline, if any."""
    out = [(str(m["name"]), m, False) for m in results.get("models", [])]
    if results.get("baseline") is not None:
        out.append((BASELINE_NAME, results["baseline"], True))
    return out


def capabilities(results: Results) -> list[str]:
    caps = {c for _, s, _ in entries(results) for c in s.get("per_capability") or {}}
    return sorted(caps, key=capability_key)


def combinations(results: Results) -> list[str]:
    combos = {c for _, s, _ in entries(results) for c in s.get("per_combination") or {}}
    return sorted(combos, key=lambda k: (k.count("+"), [capability_key(c) for c in k.split("+")]))


# --------------------------------------------------------------------------- cells


def humanize_params(n: int | None) -> str:
    """1_300_000 -> '1.3M'; below a thousand the plain number."""
    if n is None:
        return "-"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        # Rounded first, so 999_950 reads '1.0M' rather than '1000.0K'.
        if round(abs(n) / scale, 1) >= 1:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def score_cell(value: Any, unit: str | None) -> str:
    """A scorer's number as it prints: fractions as percentages, points and percents as is."""
    if not isinstance(value, int | float):
        return "-"
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "percent":
        return f"{value:.1f}%"
    return f"{value:.1f}"


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


COST_COLUMNS = (  # (column, results.json key, formatter)
    ("visual tokens", "visual_tokens_per_image", _num),
    ("prefill FLOPs/token", "prefill_flops_per_token", _flops),
    ("decode FLOPs/token", "decode_flops_per_token", _flops),
    ("vision FLOPs/image", "vision_flops_per_image", _flops),
    ("latency ms/sample", "latency_ms_per_sample", lambda x: _num(x, "{:.2f}")),
    ("peak memory", "peak_memory_bytes", _bytes),
    ("KV cache/sample", "kv_cache_bytes", _bytes),
)


# --------------------------------------------------------------------------- tables


def headlines(row: Mapping[str, Any]) -> dict[str, str]:
    """Column title -> cell for each benchmark the row's run scored (not LLaVA files: the
    main accuracy columns cover them), by each benchmark's own headline rule."""
    return {col: score_cell(value, unit)
            for col, (value, unit) in benchmark_headlines(row).items()}


def summary_table(results: Results) -> Table:
    """Header and cell strings of the main table (report.md's first table, format_table)."""
    caps = capabilities(results)
    header = ["model", "total params", "activated params", "overall", *caps,
              "POPE F1", "POPE yes-ratio"]
    rows = []
    for label, s, is_baseline in entries(results):
        pope = s.get("pope") or {}
        per_cap = s.get("per_capability") or {}
        params = ["-", "-"] if is_baseline else [humanize_params(s.get("total_params")),
                                                 humanize_params(s.get("activated_params"))]
        rows.append([label, *params, pct(s.get("accuracy")),
                     *(pct(per_cap.get(c)) for c in caps),
                     pct(pope.get("f1")), pct(pope.get("yes_ratio"))])
    return header, rows


def combination_table(results: Results) -> Table:
    """One row per capability combination, one column per model (and the baseline)."""
    all_entries = entries(results)
    # Question counts from the first entry that has them: every model sees the same questions.
    counts: Mapping[str, int] = next(
        (s["counts"]["per_combination"] for _, s, _ in all_entries if "counts" in s), {})
    header = ["combination", "n", *(label for label, _, _ in all_entries)]
    rows = [[combo, str(counts[combo]) if combo in counts else "-",
             *(pct((s.get("per_combination") or {}).get(combo)) for _, s, _ in all_entries)]
            for combo in combinations(results)]
    return header, rows


def benchmark_table(results: Results) -> Table:
    """One row per model, one column per benchmark headline (empty without benchmarks)."""
    models = results.get("models", [])
    cols: list[str] = []
    for m in models:
        cols += [c for c in headlines(m) if c not in cols]
    if not cols:
        return ["model"], []
    return ["model", *cols], [[str(m["name"]), *(headlines(m).get(c, "-") for c in cols)]
                              for m in models]


def comparison_table(results: Results) -> Table:
    """The main summary table plus cost columns and benchmark headline columns."""
    header, rows = summary_table(results)
    all_entries = entries(results)
    bench_cols: list[str] = []
    for _, s, _ in all_entries:
        bench_cols += [c for c in headlines(s) if c not in bench_cols]
    cost = [c for c, key, _ in COST_COLUMNS if any(key in s for _, s, b in all_entries if not b)]
    out_rows = []
    for row, (_, s, is_baseline) in zip(rows, all_entries, strict=True):
        costs = {c: ("-" if is_baseline else fmt(s.get(key))) for c, key, fmt in COST_COLUMNS}
        heads = headlines(s)
        out_rows.append([*row[:3], *(costs[c] for c in cost), *row[3:],
                         *(heads.get(c, "-") for c in bench_cols)])
    return [*header[:3], *cost, *header[3:], *bench_cols], out_rows


# --------------------------------------------------------------------------- rendering


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(header) - 1)  # names left, numbers right
    return "\n".join([line(header), "|" + "|".join(align) + "|", *map(line, rows)])


def fixed_width(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def html_table(header: list[str], rows: list[list[str]]) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values)

    body = "\n".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return (f"<table>\n<thead><tr>{cells('th', header)}</tr></thead>\n<tbody>\n{body}\n"
            "</tbody></table>")
