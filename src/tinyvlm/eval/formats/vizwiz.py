"""VizWiz-VQA annotations (val.json / test.json: [{image, question, answers, answer_type,
answerable}]); the image is `<image>` under the image root or its val/, test/. Answer file:
the results JSON the VizWiz server takes, [{image, answer}], each answer run through the
EvalAI processor as LLaVA's converter does. Files without human answers (the test split) are
written for the server and not scored."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import vizwiz as scorer
from tinyvlm.eval.scorers.vqa import normalize_evalai
from tinyvlm.io import write_json

KIND = "vizwiz"
PROMPT = KIND


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and {"image", "question"} <= set(first) and (
        "answers" in first or "answerable" in first or "VizWiz" in str(first["image"]))


def load(path: Path, ctx: LoadContext) -> Benchmark:
    items = []
    annotations = scorer.load_annotations(path)
    unanswered = sum(1 for a in annotations if not a.get("answers"))
    if 0 < unanswered < len(annotations):
        raise InputError(f"{unanswered} of {len(annotations)} questions have no human "
                         "answers: score a split with answers, or one without (the server's)",
                         path)
    for a in annotations:
        image = str(a["image"])
        answers = [str(x["answer"]) for x in a.get("answers") or []]
        items.append(Item(
            id=image, question=str(a["question"]),
            images=[ctx.find_image(path, [Path(image), Path("val", image), Path("test", image)],
                                   None)],
            # For display and the "has ground truth" test; scoring uses all ten answers.
            answer=Counter(answers).most_common(1)[0][0] if answers else None,
            meta={"answer_type": a.get("answer_type")},
        ))
    return Benchmark(KIND, path, items)


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.results.json"
    write_json(path, [{"image": s["id"], "answer": normalize_evalai(s["prediction"])}
                      for s in samples])
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    anns = {a["image"]: a for a in scorer.load_annotations(bench.path)}
    results = scorer.read_results(answers)
    for s in samples:
        submitted = results[s["id"]]["answer"]
        s.update(parsed=scorer.normalize_prediction(submitted),
                 score=scorer.question_accuracy(
                     submitted, [str(x["answer"]) for x in anns[s["id"]]["answers"]]))
    return dict(scorer.score([anns[s["id"]] for s in samples], results))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {name: (result.get("overall"), result.get("unit"))}
