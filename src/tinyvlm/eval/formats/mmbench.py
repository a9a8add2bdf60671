"""MMBench TSV (VLMEvalKit's layout): index, question, hint, A..D (more letters allowed),
answer, category, l2-category, and the image as base64 in `image` (a row whose `image` is
just another row's index shares that row's image, as circular copies do) or as a path in
`image_path`. The answer file is the same TSV without images, plus a `prediction` column."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import (
    LETTERS,
    Benchmark,
    Item,
    LoadContext,
    is_missing,
    write_embedded,
)
from tinyvlm.eval.scorers import mmbench as scorer
from tinyvlm.eval.scorers._common import read_tsv
from tinyvlm.io import atomic_write

KIND = "mmbench"
PROMPT = KIND


def sniff(path: Path, first: Any) -> bool:
    return path.suffix == ".tsv"


def load(path: Path, ctx: LoadContext) -> Benchmark:
    header, rows = read_tsv(path)
    missing = [c for c in ("index", "question", "A", "B") if c not in header]
    if missing:
        raise InputError(f"missing MMBench columns {missing}", path, 1)
    if "image" not in header and "image_path" not in header:
        raise InputError("no 'image' (base64) or 'image_path' column", path, 1)
    by_index = {r["index"]: (line, r) for line, r in rows}
    letters = [c for c in LETTERS if c in header]
    items = []
    for line, row in rows:
        items.append(Item(
            id=row["index"], question=row["question"],
            images=[_image(row, by_index, ctx, path, line)],
            answer=None if is_missing(row.get("answer")) else row["answer"].strip(),
            hint="" if is_missing(row.get("hint")) else row["hint"],
            options=[(c, row[c]) for c in letters if not is_missing(row[c])],
            meta={k: row[k] for k in ("index", "category", "l2-category", "split")
                  if k in row},
        ))
    # Rows without their images, for the answer file.
    plain = [{k: v for k, v in r.items() if k != "image"} for _, r in rows]
    return Benchmark(KIND, path, items, extra={"header": [h for h in header if h != "image"],
                                               "rows": plain})


def _image(row: dict[str, str], by_index: dict[str, tuple[int, dict[str, str]]],
           ctx: LoadContext, path: Path, line: int) -> Path:
    data = row.get("image", "")
    if is_missing(data) and not is_missing(row.get("image_path")):
        return ctx.find_image(path, [row["image_path"]], line)
    if len(data) < 64 and data in by_index and by_index[data][1] is not row:
        line, row = by_index[data]  # a circular copy pointing at the original row's image
        data = row.get("image", "")
    if is_missing(data):
        raise InputError("row has no image", path, line)
    return write_embedded(data, ctx, path, line)


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    """The input TSV (no image column) with a `prediction` column, in input order."""
    path = out_dir / f"{bench.path.stem}.tsv"
    header = [*bench.extra["header"], "prediction"]
    predictions = {s["id"]: s["prediction"] for s in samples}

    def write(f: Any) -> None:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for row in bench.extra["rows"]:
            w.writerow([*(row.get(h, "") for h in header[:-1]), predictions[row["index"]]])

    atomic_write(path, write)
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    for s in samples:  # per row; the result is circular (every rotation must be right)
        parsed = scorer.pick(s["prediction"], dict(s["options"]))  # the official rule
        s.update(parsed=parsed, score=float(parsed == s["answer"]))
    return dict(scorer.score_files(answers))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {name: (result.get("overall"), result.get("unit"))}
