"""GQA questions JSON ({id: {imageId, question, answer, isBalanced, types, semantic, groups,
entailed, ...}}, e.g. testdev_balanced_questions.json). The balanced questions are asked
(the others only feed consistency, which needs answers to all); the image is
`<imageId>.jpg` under the image root or its images/. Answer file: the predictions JSON
eval.py reads, [{questionId, prediction}], made as LLaVA's converter makes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import gqa as scorer
from tinyvlm.io import write_json

KIND = "gqa"
PROMPT = KIND


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and {"imageId", "question", "semantic"} <= set(first)


def load(path: Path, ctx: LoadContext) -> Benchmark:
    questions = scorer.load_questions(path)
    items, skipped = [], 0
    for qid, q in questions.items():
        if not q.get("isBalanced", True):
            skipped += 1
            continue
        name = f"{q.get('imageId', '')}.jpg"
        items.append(Item(
            id=qid, question=str(q["question"]),
            images=[ctx.find_image(path, [Path(name), Path("images", name)], None)],
            answer=str(q["answer"]),
            meta={"structural": q["types"]["structural"], "semantic": q["types"]["semantic"]},
        ))
    if not items:
        raise InputError("no balanced question to ask (isBalanced is false everywhere)", path)
    notes = [f"{skipped} unbalanced questions not asked"] if skipped else []
    return Benchmark(KIND, path, items, notes, extra={"questions": questions})


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.predictions.json"
    write_json(path, [{"questionId": s["id"], "prediction": scorer.llava_prediction(
        s["prediction"])} for s in samples])
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    preds = {}
    for s in samples:
        parsed = scorer.llava_prediction(s["prediction"])
        preds[s["id"]] = parsed
        s.update(parsed=parsed, score=float(parsed == s["answer"]))
    asked = {qid: q for qid, q in bench.extra["questions"].items() if qid in preds}
    return dict(scorer.score(asked, preds))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {name: (result.get("accuracy"), result.get("unit"))}
