"""MMHal-Bench's response_template.json: 96 records {question_type, question_topic, image_id,
image_src, image_content, question, gt_answer, model_answer}. The image is the file named
at the end of image_src (as the dataset's loader finds it), under the image root or its
images/. Answer file: the same records with model_answer filled in, what eval_gpt4.py reads.
Ratings need a judge, which the harness never calls: the result reports what can be
computed without one, and `tinyvlm score mmhal` rates the answer file with a judge or its
saved replies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import mmhal as scorer
from tinyvlm.io import write_json

KIND = "mmhal"
PROMPT = KIND


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and {"image_content", "gt_answer", "question_type"} <= \
        set(first)


def load(path: Path, ctx: LoadContext) -> Benchmark:
    records = scorer.load_records(path)
    items = []
    for i, r in enumerate(records):
        name = Path(str(r.get("image_src") or f"{r.get('image_id')}.jpg")).name
        items.append(Item(
            id=str(i), question=str(r["question"]),
            images=[ctx.find_image(path, [Path(name), Path("images", name)], None)],
            answer=str(r["gt_answer"]), meta={"question_type": r["question_type"]}))
    return Benchmark(KIND, path, items, extra={"records": records})


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.responses.json"
    records = bench.extra["records"]
    write_json(path, [{**records[int(s["id"])], "model_answer": s["prediction"]}
                      for s in samples])
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    for s in samples:
        s.update(parsed=None, score=None)
    bench.notes.append(f"MMHal-Bench is rated by a judge model, not called here: rate "
                       f"{answers.name} with `tinyvlm score mmhal`")
    return dict(scorer.score_files(answers))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    if not result.get("judged"):
        return {}
    return {name: (result.get("average_score"), None),
            f"{name} hallucination": (result.get("hallucination_rate"), "fraction")}
