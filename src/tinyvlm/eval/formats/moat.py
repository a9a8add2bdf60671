"""MOAT-style capability-tagged questions (JSON list or JSONL): an id (`id`, `index` or
`question_id`), `question`, optional `choices` (a list), the answer (`ground_truth` or
`answer`), `capability` (a list or a comma-separated string) and images (`images`: a list of
paths, or `image`). Answer file: one run's records in the scorer's layout, {id, question,
choices, answer, prediction, capabilities} lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.data.answers import normalize_answer
from tinyvlm.data.conversation import image_field
from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import LETTERS, Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import moat as scorer
from tinyvlm.io import read_json, read_jsonl_numbered, write_jsonl

KIND = "moat"
PROMPT = KIND


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and "capability" in first and "question" in first


def load(path: Path, ctx: LoadContext) -> Benchmark:
    if path.suffix == ".jsonl":
        rows = read_jsonl_numbered(path)
    else:
        doc = read_json(path)
        if not isinstance(doc, list):
            raise InputError("expected a JSON list of MOAT questions", path)
        rows = [(None, r) for r in doc]
    items = []
    for i, (line, r) in enumerate(rows):
        if not isinstance(r, dict) or "question" not in r:
            raise InputError(f"question {i} needs 'question'", path, line)
        qid = next((r[k] for k in ("id", "index", "question_id") if k in r), i)
        caps = r.get("capability", [])
        caps = [c.strip() for c in caps.split(",")] if isinstance(caps, str) else list(caps)
        names = image_field(r.get("images", r.get("image")))
        if names is None:
            raise InputError(f"question {i}: 'images' must be a path or a list of paths",
                             path, line)
        choices = r.get("choices") or []
        items.append(Item(
            id=str(qid), question=str(r["question"]),
            images=[ctx.find_image(path, [n], line) for n in names],
            answer=str(r.get("ground_truth", r.get("answer", ""))),
            options=list(zip(LETTERS, map(str, choices), strict=False)),
            meta={"question_id": qid, "capabilities": caps},
        ))
    return Benchmark(KIND, path, items)


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.answers.jsonl"
    write_jsonl(path, ({"id": s["id"], "question": s["question"],
                        "choices": [text for _, text in s.get("options", [])],
                        "answer": s["answer"], "prediction": s["prediction"],
                        "capabilities": s["meta"]["capabilities"]} for s in samples))
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    for s in samples:  # exact match after normalisation, the scorer's default verdict
        parsed = normalize_answer(s["prediction"])
        s.update(parsed=parsed, score=float(parsed == normalize_answer(s["answer"])))
    return dict(scorer.score_files([answers]))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {name: (result.get("overall"), result.get("unit"))}
