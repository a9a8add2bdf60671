"""MMBench TSV (VLMEvalKit's layout): index, question, hint, A..D (more letters allowed),
answer, category, l2-category, and the image as base64 in `image` (a row whose `image` is
just another row's index shares that row's image, as circular copies do) or as a path in
`image_path`. The answer file is the same TSV without images, plus a `prediction` column."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.benchmarks.base import (
    LETTERS,
    Benchmark,
    Item,
    LoadContext,
    is_missing,
    write_embedded,
)
from tinyvlm.io import atomic_write

KIND = "mmbench"


def sniff(path: Path, first: Any) -> bool:
    return path.suffix == ".tsv"


def read_tsv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line, row) pairs; quoted cells may span lines, as pandas writes them."""
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default
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
