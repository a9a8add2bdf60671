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
    return path.suffix == ".jsonl" and isinstance(first, dict) and \
        {"image_id", "image"} <= set(first) and "question_id" not in first


def load(path: Path, ctx: LoadContext) -> Benchmark:
    items = []
    gt: dict[str, set[str]] = {}
    classes = set(scorer.synonyms()[1].values())
    for line, row in read_jsonl_numbered(path):
        if not isinstance(row, dict) or not {"image_id", "image"} <= set(row):
            raise InputError("each line needs image_id and image", path, line)
        try:
            key = scorer.image_key(row["image_id"])
        except InputError as e:
            raise InputError(str(e), path, line) from None
        image = str(row["image"])
        if image.lower().endswith(_IMAGE_SUFFIXES):
            img = ctx.find_image(path, [Path(image)], line)
        else:
            img = write_embedded(image, ctx, path, line)
        items.append(Item(id=f"{key}#{line}",  # an image may be asked twice
                          question=str(row.get("question") or DEFAULT_QUESTION),
                          images=[img], meta={"image_id": row["image_id"]}))
        if "objects" in row:
            objects = row["objects"]
            if not isinstance(objects, list) or not all(o in classes for o in objects):
                raise InputError("'objects' must be a list of COCO class names (e.g. "
                                 "'dining table', 'tv')", path, line)
            if key in gt and gt[key] != set(objects):
                raise InputError(f"image {key} has other objects on an earlier line", path, line)
            gt[key] = set(objects)
    keys = {scorer.image_key(i.meta["image_id"]) for i in items}
    if not gt and _coco_beside(path):
        gt = scorer.ground_truth_from_coco(path.parent, keys)
    missing = sorted(keys - set(gt))
    if gt and missing:
        raise InputError(f"{len(missing)} images have no ground-truth objects (first: "
                         f"{missing[0]}): give 'objects' on every line or none", path)
    return Benchmark(KIND, path, items, extra={"objects": gt})


def _coco_beside(path: Path) -> bool:
    return any((path.parent / f"{k}_{s}.json").is_file() for k in ("instances", "captions")
               for s in ("val2014", "train2014"))


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.captions.jsonl"
    write_jsonl(path, ({"image_id": s["meta"]["image_id"], "caption": s["prediction"]}
                       for s in samples))
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path
          ) -> dict[str, Any] | None:
    gt = bench.extra["objects"]
    for s in samples:
        _, classes, _ = scorer.caption_objects(s["prediction"])
        truth = gt.get(scorer.image_key(s["meta"]["image_id"]))
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
