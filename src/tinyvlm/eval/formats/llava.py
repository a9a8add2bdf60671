"""LLaVA conversation files (JSON list or JSONL), e.g. ShapesWorld's test.json and pope.json:
scored from the samples by the capability scorer (exact match per capability, POPE probes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.data.answers import normalize_answer
from tinyvlm.data.llava import load_llava
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import capabilities

KIND = "llava"
PROMPT = KIND  # prompts/llava.yaml


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


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path | None
          ) -> dict[str, Any]:
    """Mark each sample (POPE probes by the POPE rule, the rest by exact match) and score."""
    for s in samples:
        if s.get("pope") is not None:
            parsed = capabilities.pope_answer(s["prediction"])
            s.update(parsed=parsed, score=float(parsed == normalize_answer(s["answer"])))
        else:
            s.update(parsed=normalize_answer(s["prediction"]),
                     score=float(capabilities.is_correct(s)))
    return capabilities.summarize(samples)


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {}  # the report's accuracy columns are this format's headline
