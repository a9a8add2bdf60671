"""POPE question files: JSONL lines {question_id, image, text, label} (label may be absent in
LLaVA's copies, which carry `category` instead), read by data.pope. The answer file is
LLaVA's layout: {question_id, prompt, text} per line; the POPE scorer scores it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.data.pope import read_questions, split_name
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import pope as scorer
from tinyvlm.io import write_jsonl

KIND = "pope"
PROMPT = KIND


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and {"question_id", "image", "text"} <= set(first)


def load(path: Path, ctx: LoadContext) -> Benchmark:
    items = [Item(id=str(q.question_id), question=str(q.text),
                  images=[ctx.find_image(path, [str(q.image)], q.line)], answer=q.label,
                  meta={"split": split_name(path, q.category), "question_id": q.question_id})
             for q in read_questions(path)]
    return Benchmark(KIND, path, items)


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.answers.jsonl"
    write_jsonl(path, ({"question_id": s["meta"]["question_id"], "prompt": s["prompt"],
                        "text": s["prediction"]} for s in samples))
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    for s in samples:
        parsed = scorer.pope_answer(s["prediction"])
        s.update(parsed=parsed, score=float(parsed == s["answer"].strip().lower()))
    return dict(scorer.score_files([bench.path], [answers]))


def score_splits(files: list[tuple[Path, Path]]) -> dict[str, Any]:
    """Several POPE files (random, popular, adversarial) scored together: per split, pooled,
    and the mean of the split F1s that papers print; files are (questions, answers)."""
    return dict(scorer.score_files([q for q, _ in files], [a for _, a in files]))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    unit = result.get("unit")
    if "mean_f1" in result:  # several splits
        return {f"{name} mean F1": (result.get("mean_f1"), unit)}
    return {f"{name} F1": (result.get("f1"), unit)}
