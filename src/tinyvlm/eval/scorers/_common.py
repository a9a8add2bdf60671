"""Pieces every scorer shares: conventions, id-keyed input files, TSV files, float sums, the
text table."""

from __future__ import annotations

import csv
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError, closest
from tinyvlm.io import read_jsonl_numbered

CONVENTIONS = ("official", "lmms-eval", "vlmevalkit")


def check_convention(bench: str, convention: str, supported: Sequence[str]) -> str:
    """`convention` if `bench` supports it, else an InputError naming the supported ones."""
    if convention in supported:
        return convention
    hint = closest(convention, supported) if convention not in CONVENTIONS else ""
    raise InputError(f"{bench}: convention '{convention}' is not supported{hint} "
                     f"(choose from: {', '.join(supported)})")


def sum_left(values: Iterable[float]) -> float:
    """Left-to-right float sum from 0, as `sum()` adds up to Python 3.11 (no compensation)."""
    total = 0.0
    for v in values:
        total += v
    return total


def sum_compensated(values: Iterable[float]) -> float:
    """Python 3.12's `sum()` of floats: Neumaier-compensated, correction added once at the end.

    Written out so that scores match a script run under Python >= 3.12 whatever Python runs us.
    """
    it = iter(values)
    try:
        total = 0.0 + next(it)
    except StopIteration:
        return 0.0
    comp = 0.0
    for x in it:
        t = total + x
        comp += (total - t) + x if abs(total) >= abs(x) else (x - t) + total
        total = t
    if comp and math.isfinite(comp):
        total += comp
    return total


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def key_of(value: Any) -> str:
    """Question ids compare as strings: 101669 and "101669" name the same question."""
    return str(value)


def rows_by_id(path: str | Path, id_key: str = "question_id",
               required: Sequence[str] = ()) -> dict[str, tuple[int, dict[str, Any]]]:
    """JSONL rows keyed by str(row[id_key]) with their line numbers.

    A line that is not an object, lacks `id_key` or a `required` key, or repeats an id raises
    InputError naming the file and line.
    """
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for line, row in read_jsonl_numbered(path):
        if not isinstance(row, dict):
            raise InputError("expected a JSON object on each line", path, line)
        for key in (id_key, *required):
            if key not in row:
                raise InputError(f"missing key '{key}'", path, line)
        qid = key_of(row[id_key])
        if qid in out:
            raise InputError(f"{id_key} {row[id_key]!r} repeats line {out[qid][0]}", path, line)
        out[qid] = (line, row)
    return out


def read_tsv(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line, row) pairs of a TSV file written the way pandas writes them (quoted
    cells may span lines; cells may be very long, e.g. base64 images). Blank rows are
    skipped; a row with another number of cells than the header is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if not header:
                raise InputError("empty TSV file", path)
            rows = []
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise InputError(f"{len(cells)} cells for {len(header)} columns", path,
                                     reader.line_num)
                rows.append((reader.line_num, dict(zip(header, cells, strict=True))))
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", path) from None
    return header, rows


# The cells pandas.read_csv reads as missing by default (pandas >= 2: 'None' too); VLMEvalKit
# reads TSVs with pandas, so an option spelled like one of these is no option there.
NA_CELLS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                      "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                      "nan", "null"})
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|Inf|INF|"
                    r"infinity|Infinity|INFINITY)")
_BOOL = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False,
         "false": False}


def is_missing(value: Any) -> bool:
    """A cell pandas reads as missing (exactly: ' NA' is not)."""
    return value is None or str(value) in NA_CELLS


def pandas_cells(header: Sequence[str], rows: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """TSV cells as pandas.read_csv(sep='\t') types them by default, column by column: a
    missing cell is None; a column of integers without a missing cell holds ints, a column
    of numbers floats (str(1.0) is '1.0'), a column of True/False without a missing cell
    bools; every other column keeps its strings."""
    columns: dict[str, Callable[[str], Any]] = {}
    for col in header:
        present = [r[col] for r in rows if not is_missing(r[col])]
        complete = len(present) == len(rows)
        if present and complete and all(_INT.fullmatch(v) for v in present):
            columns[col] = int
        elif present and all(_INT.fullmatch(v) or _FLOAT.fullmatch(v) for v in present):
            columns[col] = float
        elif present and complete and all(v in _BOOL for v in present):
            columns[col] = _BOOL.__getitem__
        else:
            columns[col] = str
    return [{col: None if is_missing(r[col]) else columns[col](r[col]) for col in header}
            for r in rows]


def text_field(row: Mapping[str, Any], keys: Sequence[str], path: str | Path,
               line: int | None) -> str:
    """The first of `keys` present in `row`, as a string; InputError if none is there."""
    for key in keys:
        if key in row:
            value = row[key]
            if not isinstance(value, str):
                raise InputError(f"'{key}' must be a string, got {type(value).__name__}",
                                 path, line)
            return value
    raise InputError(f"missing key '{keys[0]}'" +
                     (f" (or {', '.join(repr(k) for k in keys[1:])})" if len(keys) > 1 else ""),
                     path, line)


def require_same_ids(expected: Iterable[str], got: Iterable[str], expected_path: str | Path,
                     got_path: str | Path) -> None:
    """InputError when the two id sets differ, naming a few ids missing on each side."""
    exp, have = set(expected), set(got)
    if exp == have:
        return
    parts = []
    for ids, where in ((exp - have, f"missing from {got_path}"),
                       (have - exp, f"not in {expected_path}")):
        if ids:
            shown = ", ".join(sorted(ids, key=_id_order)[:5])
            more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
            parts.append(f"{len(ids)} question ids {where} ({shown}{more})")
    raise InputError("unmatched question ids: " + "; ".join(parts))


def _id_order(qid: str) -> tuple[int, int | str]:
    return (0, int(qid)) if qid.lstrip("-").isdigit() else (1, qid)


def format_table(result: Mapping[str, Any]) -> str:
    """A two-column text table of a scorer's result: nested keys joined with '.'."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            rows.append((prefix, _cell(value)))

    walk("", result)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) if value else "-"
    return str(value)


def reject_unknown(got: Iterable[str], known: Iterable[str], what: str, where: str,
                   path: str | Path) -> None:
    """InputError on `path` when `got` holds ids outside `known`: "N {what} not in {where}"."""
    extra = sorted(set(got) - set(known))
    if extra:
        raise InputError(f"{len(extra)} {what} not in {where} (first: {extra[0]})", path)
