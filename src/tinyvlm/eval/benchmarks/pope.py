"""POPE question files: JSONL lines {question_id, image, text, label} (label may be absent in
LLaVA's copies, which carry `category` instead). The answer file is LLaVA's layout:
{question_id, prompt, text} per line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.benchmarks.base import Benchmark, Item, LoadContext
from tinyvlm.io import read_jsonl_numbered, write_jsonl

KIND = "pope"
SPLITS = ("random", "popular", "adversarial")


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and {"question_id", "image", "text"} <= set(first)


def split_of(path: Path, row: dict[str, Any]) -> str:
    """random/popular/adversarial from the row's category or the file name, else the stem."""
    if row.get("category") in SPLITS:
        return str(row["category"])
    return next((s for s in SPLITS if s in path.stem), path.stem)


def load(path: Path, ctx: LoadContext) -> Benchmark:
    items = []
    for line, row in read_jsonl_numbered(path):
        if not isinstance(row, dict) or not {"question_id", "image", "text"} <= set(row):
            raise InputError("a POPE line needs question_id, image and text", path, line)
        label = row.get("label")
        items.append(Item(
            id=str(row["question_id"]), question=str(row["text"]),
            images=[ctx.find_image(path, [str(row["image"])], line)],
            answer=None if label is None else str(label),
            meta={"split": split_of(path, row), "question_id": row["question_id"]},
        ))
    return Benchmark(KIND, path, items)


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.answers.jsonl"
    write_jsonl(path, ({"question_id": s["meta"]["question_id"], "prompt": s["prompt"],
                        "text": s["prediction"]} for s in samples))
    return path
