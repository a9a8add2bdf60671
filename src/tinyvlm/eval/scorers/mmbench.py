"""MMBench: single-choice questions under circular evaluation.

A question is asked several times with its options rotated; the copies share ``index mod
1_000_000`` (the original has index < 1e6). A question counts as right only if every copy's
answer is right; a TSV without copies is scored question by question.

Conventions:

- ``official`` (MMBench's evaluation as its published numbers were computed: VLMEvalKit's
  rule before August 2025, `choice.vlmevalkit_choice_2024`, also selectable as
  ``vlmevalkit-2024``): each copy's prediction names an option; a copy that names a wrong
  option fails the question at once; if every copy names the right one, it passes; copies
  that name none go to the judge, and without a judge the question fails (VLMEvalKit's
  exact-matching mode). The answer file's cells are read as written: an option spelled
  "None" or "N/A" is an option, since that is the text the question showed.
- ``vlmevalkit``: VLMEvalKit as it is now: its current rule (`choice.vlmevalkit_choice`) and
  its reading of the TSV with pandas, so options spelled like pandas' missing values ("None",
  "N/A", "NA", "nan", empty, ...) are no options, a prediction spelled that way reads "nan",
  and a column of numbers holds numbers ("1" reads "1.0" where the column has a gap).
- ``lmms-eval``: the same circular logic with `choice.lmms_eval_choice`.

The optional judge is a callable ``judge(row) -> str | None`` given the row (question,
options, prediction) and returning text naming an option, which is parsed by the same rule;
an answer it cannot settle counts as wrong. No judge is called unless one is passed.
Accuracies are fractions: overall, per category and per l2-category.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import check_convention, pandas_cells
from tinyvlm.eval.scorers._common import read_tsv as read_tsv_rows
from tinyvlm.eval.scorers.choice import (
    Choices,
    lmms_eval_choice,
    vlmevalkit_choice,
    vlmevalkit_choice_2024,
)

CONVENTIONS = ("official", "vlmevalkit", "vlmevalkit-2024", "lmms-eval")
CIRCULAR_OFFSET = 1_000_000

Row = Mapping[str, Any]
Judge = Callable[[Row], "str | None"]
_RULES: dict[str, Callable[[str, Choices], str | None]] = {
    "official": vlmevalkit_choice_2024, "vlmevalkit-2024": vlmevalkit_choice_2024,
    "vlmevalkit": vlmevalkit_choice, "lmms-eval": lmms_eval_choice,
}


def pick(prediction: str, choices: Choices, convention: str = "official") -> str | None:
    """The option a prediction names under `convention` (None: none, a judge's case)."""
    return _RULES[convention](prediction, choices)


def row_choices(row: Row) -> dict[str, str]:
    """The options of a row: the letter columns A, B, ... that are present and not empty
    (None, in rows read as pandas reads them)."""
    return {c: str(row[c]) for c in string.ascii_uppercase
            if c in row and row[c] is not None and str(row[c]) != ""}


def group_hit(rows: Sequence[Row], convention: str = "official",
              judge: Judge | None = None) -> tuple[int, bool]:
    """(1 or 0, whether a judge was needed but absent) for one question's circular copies."""
    rule = _RULES[convention]
    # str(): a prediction pandas read as missing is the text "nan", as VLMEvalKit sees it.
    picked = [rule("nan" if r["prediction"] is None else str(r["prediction"]), row_choices(r))
              for r in rows]
    for r, p in zip(rows, picked, strict=True):
        if p is not None and p != r["answer"]:
            return 0, False
    unresolved = [r for r, p in zip(rows, picked, strict=True) if p is None]
    if not unresolved:
        return 1, False
    if judge is None:
        return 0, True
    for r in unresolved:
        verdict = judge(r)
        if verdict is None or rule(str(verdict), row_choices(r)) != r["answer"]:
            return 0, False
    return 1, False


def score(rows: Sequence[Row], convention: str = "official",
          judge: Judge | None = None) -> dict[str, Any]:
    """Circular accuracy of `rows` (``index``, ``answer``, ``prediction``, option columns
    ``A``..., optional ``category`` and ``l2-category``).

    Returns ``{"overall", "per_category", "per_l2_category", "questions", "rows",
    "needs_judge", "convention", "unit": "fraction"}``; ``needs_judge`` counts questions
    failed only because no judge was given.
    """
    check_convention("mmbench", convention, CONVENTIONS)
    groups: dict[int, list[Row]] = {}
    for r in rows:
        groups.setdefault(int(r["index"]) % CIRCULAR_OFFSET, []).append(r)
    mains = [r for r in rows if int(r["index"]) < CIRCULAR_OFFSET]
    if not mains:
        raise InputError("mmbench: no question with index < 1000000 (the originals)")
    hits: list[tuple[Row, int]] = []
    needs_judge = 0
    for main in mains:
        hit, missing = group_hit(groups[int(main["index"])], convention, judge)
        hits.append((main, hit))
        needs_judge += missing
    per_cat = _by(hits, "category")
    per_l2 = _by(hits, "l2-category")
    return {"convention": convention, "unit": "fraction",
            "overall": sum(h for _, h in hits) / len(hits),
            "per_category": per_cat, "per_l2_category": per_l2, "questions": len(hits),
            "rows": len(rows), "needs_judge": needs_judge}


def _by(hits: Sequence[tuple[Row, int]], key: str) -> dict[str, float]:
    groups: dict[str, list[int]] = {}
    for row, hit in hits:
        if row.get(key) not in (None, ""):
            groups.setdefault(str(row[key]), []).append(hit)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def read_tsv(path: str | Path, as_pandas: bool = False) -> list[dict[str, Any]]:
    """Rows of an MMBench TSV with predictions: index, question, A..D, answer, prediction,
    category, l2-category (other columns, e.g. base64 images, are kept and ignored).
    `as_pandas`: the cells as pandas reads them (see _common.pandas_cells)."""
    header, table = read_tsv_rows(path)
    absent = [k for k in ("index", "answer", "prediction") if k not in header]
    if absent:
        raise InputError(f"missing column(s) {', '.join(absent)} "
                         f"(header: {', '.join(header)})", path, 1)
    rows: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    for line, row in table:
        try:
            index = int(row["index"])
        except (TypeError, ValueError):
            raise InputError(f"index {row['index']!r} is not an integer", path, line) from None
        if index in seen:
            raise InputError(f"index {index} repeats line {seen[index]}", path, line)
        seen[index] = line
        if row["answer"] not in row_choices(row):
            raise InputError(f"answer {row['answer']!r} is not one of the options "
                             f"{', '.join(row_choices(row)) or '(none)'}", path, line)
        rows.append({**row, "index": index, "prediction": row["prediction"] or ""})
    if as_pandas:
        typed = pandas_cells(header, [r for _, r in table])
        return [{**t, "index": r["index"], "answer": r["answer"]}
                for t, r in zip(typed, rows, strict=True)]
    return rows


def score_files(predictions: str | Path, convention: str = "official",
                judge: Judge | None = None) -> dict[str, Any]:
    """Read an MMBench TSV with a prediction column and score it (see score)."""
    check_convention("mmbench", convention, CONVENTIONS)
    return score(read_tsv(predictions, as_pandas=convention == "vlmevalkit"), convention, judge)
