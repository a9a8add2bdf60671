"""SEED-Bench JSON: {"questions": [{question_id, question, choice_a..choice_d, answer,
data_id, data_type, question_type_id}], "question_type": {name: id}}. Image questions only
(video questions are skipped with a note); the image is `<data_id>` under the image root
(with .jpg or .png appended when data_id has no extension). Answer file: {question_id,
prediction} lines, the layout SEED-Bench's leaderboard takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import seed as scorer
from tinyvlm.io import read_json, write_jsonl

KIND = "seed"
PROMPT = KIND
_CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and "choice_a" in first


def load(path: Path, ctx: LoadContext) -> Benchmark:
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("questions"), list):
        raise InputError("expected SEED-Bench JSON with a 'questions' list", path)
    names = {v: k for k, v in (doc.get("question_type") or {}).items()}
    items, skipped = [], 0
    for i, q in enumerate(doc["questions"]):
        if not isinstance(q, dict) or not {"question_id", "question", *_CHOICES} <= set(q):
            raise InputError(f"question {i} needs question_id, question and choice_a..d", path)
        if q.get("data_type", "image") != "image":
            skipped += 1
            continue
        data_id = str(q.get("data_id", ""))
        base = Path(data_id)
        candidates = [base] if base.suffix else [base, base.with_suffix(".jpg"),
                                                 base.with_suffix(".png")]
        items.append(Item(
            id=str(q["question_id"]), question=str(q["question"]),
            images=[ctx.find_image(path, candidates, None)],
            answer=None if q.get("answer") is None else str(q["answer"]),
            options=[(c[-1].upper(), str(q[c])) for c in _CHOICES],
            meta={"question_id": q["question_id"],
                  "question_type_id": q.get("question_type_id"),
                  "dimension": names.get(q.get("question_type_id"), "unknown")},
        ))
    notes = [f"{skipped} video questions skipped"] if skipped else []
    return Benchmark(KIND, path, items, notes)


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.answers.jsonl"
    write_jsonl(path, ({"question_id": s["meta"]["question_id"], "prediction": s["prediction"]}
                       for s in samples))
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    questions, names = scorer.load(bench.path)
    asked = {s["id"] for s in samples}  # video questions were skipped, not failed
    questions = [q for q in questions if str(q["question_id"]) in asked]
    by_id = {str(q["question_id"]): q for q in questions}
    for s in samples:
        parsed = scorer.extract(s["prediction"], by_id[s["id"]])
        s.update(parsed=parsed, score=float(parsed == s["answer"]))
    return dict(scorer.score(questions, {s["id"]: s["prediction"] for s in samples},
                             dimension_names=names))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {name: (result.get("overall"), result.get("unit"))}
