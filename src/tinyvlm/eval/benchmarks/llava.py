"""LLaVA conversation files (JSON list or JSONL), e.g. ShapesWorld's test.json and pope.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.data.formats import load_llava
from tinyvlm.eval.benchmarks.base import Benchmark, Item, LoadContext

KIND = "llava"


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and "conversations" in first


def load(path: Path, ctx: LoadContext) -> Benchmark:
    items = []
    for conv in load_llava(path):  # image paths beside the file; the image root wins below
        meta = conv.meta[-1] if conv.meta else {}
        images = [_under_root(p, path, ctx) for p in conv.images]
        items.append(Item(
            id=conv.id, question=conv.question, images=images, answer=conv.answer,
            history=list(conv.turns[:-1]),
            meta={"type": meta.get("type", "unknown"),
                  "capabilities": list(meta.get("capabilities", [])),
                  "pope": meta.get("pope")},
        ))
    return Benchmark(KIND, path, items)


def _under_root(image: Path, path: Path, ctx: LoadContext) -> Path:
    if ctx.image_root is None or not image.is_relative_to(path.parent):
        return image  # no root given, or an absolute path in the record
    moved = ctx.image_root / image.relative_to(path.parent)
    return moved if moved.is_file() else image
