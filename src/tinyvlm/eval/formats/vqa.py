"""VQAv2 question files ({"data_subtype", "questions": [{question_id, image_id, question}]},
annotations found beside them under the official name) and TextVQA files ({"data":
[{question_id, image_id, question, answers}]}). Images: COCO_<subtype>_<image_id:012d>.jpg
(VQAv2) or <image_id>.jpg (TextVQA) under the image root or its <subtype>/, train_images/.
Answer file: the official results list [{question_id, answer}]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import vqa as scorer
from tinyvlm.io import read_json, write_json

KIND = "vqa"
PROMPT = KIND
# Per-question accuracy needs the human answers, not one ground truth: files without them
# are still scored where annotations sit beside them.
NEEDS_ANSWERS = False


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and {"question_id", "image_id", "question"} <= set(first)


def annotations_path(path: Path) -> Path:
    """v2_OpenEnded_mscoco_val2014_questions.json -> v2_mscoco_val2014_annotations.json."""
    name = path.name.replace("OpenEnded_", "").replace("questions", "annotations")
    return path.with_name(name)


def load(path: Path, ctx: LoadContext) -> Benchmark:
    doc = read_json(path)
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):  # TextVQA
        rows, subtype, answers, variant = doc["data"], "", None, "textvqa"
        ann_file: Path | None = path
    elif isinstance(doc, dict) and isinstance(doc.get("questions"), list):
        rows, subtype, variant = doc["questions"], str(doc.get("data_subtype", "")), "vqav2"
        answers, ann_file = None, None
        ann = annotations_path(path)
        if ann.is_file() and ann != path:
            ann_file = ann
            answers = {str(a["question_id"]): a for a in read_json(ann).get("annotations", [])}
    else:
        raise InputError("expected VQAv2 questions ('questions') or TextVQA ('data')", path)
    items = []
    for i, q in enumerate(rows):
        if not isinstance(q, dict) or not {"question_id", "image_id", "question"} <= set(q):
            raise InputError(f"question {i} needs question_id, image_id and question", path)
        image_id = q["image_id"]
        if variant == "vqav2":
            name = f"COCO_{subtype}_{int(image_id):012d}.jpg"
            candidates = [Path(name), Path(subtype, name)]
            gts = [a["answer"] for a in answers[str(q["question_id"])]["answers"]] \
                if answers and str(q["question_id"]) in answers else None
        else:
            name = f"{image_id}.jpg"
            candidates = [Path(name), Path("train_images", name)]
            gts = q.get("answers")
        items.append(Item(
            id=str(q["question_id"]), question=str(q["question"]),
            images=[ctx.find_image(path, candidates, None)],
            answer=None if not gts else str(gts[0]),
            meta={"question_id": q["question_id"], "answers": gts, "variant": variant},
        ))
    return Benchmark(KIND, path, items, extra={"variant": variant, "annotations": ann_file,
                                               "questions": path if variant == "vqav2" else None})


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.results.json"
    write_json(path, [{"question_id": s["meta"]["question_id"], "answer": s["prediction"]}
                      for s in samples])
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path
          ) -> dict[str, Any] | None:
    variant = bench.extra["variant"]
    for s in samples:
        gts = s["meta"].get("answers")
        s.update(parsed=scorer.normalize_vqa(s["prediction"]),
                 score=None if not gts else scorer.question_accuracy(s["prediction"], gts,
                                                                     variant))
    if bench.extra.get("annotations") is None:
        bench.notes.append("no annotations beside the questions file: not scored")
        return None
    return dict(scorer.score_files(bench.extra["annotations"], answers,
                                   bench.extra.get("questions"), variant=variant))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {name: (result.get("overall"), result.get("unit"))}
