"""preprocessor_config.json <-> ImagePreprocess: resize (shortest edge + centre crop, or a
fixed size), the PIL filter, rescale, mean and std, as transformers' image processors
apply them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.config import ImagePreprocess, VisionConfig
from tinyvlm.io import read_json
from tinyvlm.models.hf.common import require

RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
RESAMPLE_IDS = {v: k for k, v in RESAMPLE.items()}


def _size(value: Any, key: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if value.get("height") == value.get("width") and "height" in value:
            return int(value["height"])
    raise ValueError(key)


def read_preprocess(directory: Path, vision: VisionConfig) -> ImagePreprocess:
    """The processor of a checkpoint directory (its own defaults when there is none)."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return vision.preprocess
    raw = read_json(path)
    where = path
    require(not raw.get("do_pad", False), "padding images to a square (do_pad) is not "
            "supported", where)
    require(raw.get("do_resize", True) and raw.get("do_rescale", True)
            and raw.get("do_normalize", True), "do_resize, do_rescale and do_normalize must "
            "be true", where)
    resample = RESAMPLE.get(raw.get("resample", 3))
    require(resample is not None, f"resample {raw.get('resample')!r} is not supported", where)
    size = raw.get("size", {"shortest_edge": vision.image_size})
    crop = raw.get("crop_size", size)
    try:
        edge, cropped = _size(size, "size"), _size(crop, "crop_size")
    except ValueError as e:
        raise require(False, f"'{e}' must be a square size or a shortest_edge", where) from None
    shortest = (isinstance(size, dict) and "shortest_edge" in size) or isinstance(size, int)
    require(not shortest or raw.get("do_center_crop", True), "a shortest-edge resize "
            "without a centre crop gives images of varying size", where)
    final = cropped if shortest else edge
    require(final == vision.image_size, f"the processor makes {final}px images but the "
            f"vision tower takes {vision.image_size}px", where)
    return ImagePreprocess(resize="shortest_edge" if shortest else "square",
                           shortest_edge=edge if shortest else 0, resample=resample,
                           rescale=float(raw.get("rescale_factor", 1 / 255)),
                           mean=[float(x) for x in raw.get("image_mean", [0.5] * 3)],
                           std=[float(x) for x in raw.get("image_std", [0.5] * 3)])


def write_preprocess(vision: VisionConfig, tower: str) -> dict[str, Any]:
    """preprocessor_config.json for a tower ("clip" or "siglip")."""
    p = vision.preprocess
    if p.resize == "shortest_edge":
        size: dict[str, int] = {"shortest_edge": p.shortest_edge or vision.image_size}
    else:
        size = {"height": vision.image_size, "width": vision.image_size}
    return {"image_processor_type": "CLIPImageProcessor" if tower == "clip"
            else "SiglipImageProcessor",
            "do_resize": True, "size": size, "resample": RESAMPLE_IDS[p.resample],
            "do_center_crop": p.resize == "shortest_edge",
            "crop_size": {"height": vision.image_size, "width": vision.image_size},
            "do_rescale": True, "rescale_factor": p.rescale, "do_normalize": True,
            "image_mean": p.mean, "image_std": p.std, "do_convert_rgb": True}
