"""Object HalBench / CHAIR question files: JSONL rows {image_id, question?, image} where
image is base64 (Object HalBench's obj_halbench_300_with_image.jsonl) or a file name, and
optionally the image's ground-truth COCO classes in "objects". Without "objects", the COCO
annotations found beside the file (instances_val2014.json / captions_val2014.json) give them;
with neither, the captions are written and not scored. Answer file: JSONL {image_id,
caption}, what the CHAIR code reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext, write_embedded
from tinyvlm.eval.scorers import chair as scorer
from tinyvlm.io import read_jsonl_numbered, write_jsonl

KIND = "chair"
PROMPT = KIND
NEEDS_ANSWERS = False
DEFAULT_QUESTION = "Describe this image in detail."
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and {"image_id", "image"} <= set(first) and \
        "question_id" not in first


def load(path: Path, ctx: LoadContext) -> Benchmark:
    items = []
    gt: dict[str, set[str]] = {}
    for line, row in read_jsonl_numbered(path):
        if not isinstance(row, dict) or not {"image_id", "image"} <= set(row):
            raise InputError("each line needs image_id and image", path, line)
        image = str(row["image"])
        if image.lower().endswith(_IMAGE_SUFFIXES):
            img = ctx.find_image(path, [Path(image)], line)
        else:
            img = write_embedded(image, ctx, path, line)
        qid = f"{row['image_id']}#{line}"  # an image may be asked twice
        items.append(Item(id=qid, question=str(row.get("question") or DEFAULT_QUESTION),
                          images=[img], meta={"image_id": row["image_id"]}))
        if "objects" in row:
            objects = row["objects"]
            if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
                raise InputError("'objects' must be a list of COCO class names", path, line)
            gt[str(row["image_id"])] = set(objects)
    return Benchmark(KIND, path, items, extra={"objects": gt})


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.captions.jsonl"
    write_jsonl(path, ({"image_id": s["meta"]["image_id"], "caption": s["prediction"]}
                       for s in samples))
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path
          ) -> dict[str, Any] | None:
    gt = bench.extra["objects"]
    if not gt:
        beside = bench.path.parent
        if any((beside / f"{k}_{s}.json").is_file() for k in ("instances", "captions")
               for s in ("val2014", "train2014")):
            gt = scorer.ground_truth_from_coco(beside, [s["meta"]["image_id"] for s in samples])
    for s in samples:
        _, classes, _ = scorer.caption_objects(s["prediction"])
        truth = gt.get(str(s["meta"]["image_id"]))
        s.update(parsed=classes, score=None if truth is None else
                 float(not any(c not in truth for c in classes)))
    if not gt:
        bench.notes.append("no ground-truth objects (an 'objects' field or COCO annotations "
                           "beside the file): captions written, not scored")
        return None
    return dict(scorer.score(scorer.read_captions(answers), gt))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {f"{name} CHAIRs": (result.get("chair_s"), "fraction"),
            f"{name} CHAIRi": (result.get("chair_i"), "fraction")}
