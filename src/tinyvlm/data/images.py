"""Images: read from a path, bytes or a PIL image, resized, kept as uint8, normalised."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tinyvlm.config import ImagePreprocess
from tinyvlm.errors import InputError

ImageSource = Path | str | bytes | Image.Image
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}


def load_image(source: ImageSource, size: int, preprocess: ImagePreprocess | None = None
               ) -> torch.Tensor:
    """An RGB image as a uint8 tensor (3, size, size), resized (and cropped) if needed."""
    preprocess = preprocess or ImagePreprocess()
    if isinstance(source, Image.Image):
        return _to_tensor(source, size, preprocess)
    if isinstance(source, bytes):
        return _decode(io.BytesIO(source), size, "<image bytes>", preprocess)
    path = Path(source)
    if not path.is_file():
        raise InputError("image not found", path)
    return _decode(path, size, path, preprocess)


def _decode(file: Any, size: int, where: str | Path, preprocess: ImagePreprocess
            ) -> torch.Tensor:
    try:
        with Image.open(file) as img:
            return _to_tensor(img, size, preprocess)
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large to decode safely ({e})", where) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read image ({e.__class__.__name__}: {e})", where) from None


def _to_tensor(img: Image.Image, size: int, preprocess: ImagePreprocess) -> torch.Tensor:
    img = _eight_bit(img).convert("RGB")
    resample = RESAMPLE[preprocess.resample]
    if preprocess.resize == "shortest_edge":
        # CLIP's processor: the short side to `edge` (the long side truncated), then the
        # centre size x size crop, offsets rounded down.
        edge = preprocess.shortest_edge or size
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new_long = int(edge * long / short)
        target = (edge, new_long) if w <= h else (new_long, edge)
        if img.size != target:
            img = img.resize(target, resample)
        left, top = (target[0] - size) // 2, (target[1] - size) // 2
        if left < 0 or top < 0:
            raise InputError(f"image of {w}x{h} resized to {target[0]}x{target[1]} is smaller "
                             f"than the {size}x{size} crop")
        if target != (size, size):
            img = img.crop((left, top, left + size, top + size))
    elif img.size != (size, size):
        img = img.resize((size, size), resample)
    array = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1)


def pixel_table(preprocess: ImagePreprocess) -> torch.Tensor:
    """(channels, 256) float32: the pixel value of each uint8 level, computed as
    transformers' processors do (x * rescale in float64, to float32, then (x - mean) / std in
    float32), so indexing it gives their values bit for bit. The defaults give x / 127.5 - 1."""
    levels = np.arange(256, dtype=np.float64) * preprocess.rescale
    levels = levels.astype(np.float32)
    mean = np.asarray(preprocess.mean, dtype=np.float32)[:, None]
    std = np.asarray(preprocess.std, dtype=np.float32)[:, None]
    return torch.from_numpy((levels[None] - mean) / std)


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled to 8 bits (PIL's own conversion clips them, so a
    16-bit PNG would turn black and white). Float images are read as [0, 1] when they fit in
    it, else as [0, 255]."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return img
    array = np.asarray(img, dtype=np.float64)
    top = 65535.0
    if img.mode == "F":
        top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
    scaled = np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


class ImageStore:
    """Loads images once and keeps them as uint8; `pixels` normalises to [-1, 1] floats.

    Images given by path are cached (by path); bytes and PIL images are decoded each time."""

    def __init__(self, size: int, cache: bool = True, preprocess: ImagePreprocess | None = None):
        self.size = size
        self.cache = cache
        self.preprocess = preprocess or ImagePreprocess()
        self.table = pixel_table(self.preprocess)
        self._images: dict[Path, torch.Tensor] = {}

    @classmethod
    def for_model(cls, vision: Any, cache: bool = True) -> ImageStore:
        """The store of a model's vision config (its image size and preprocessing)."""
        return cls(vision.image_size, cache, vision.preprocess)

    def uint8(self, source: ImageSource) -> torch.Tensor:
        if isinstance(source, bytes | Image.Image):
            return load_image(source, self.size, self.preprocess)
        path = Path(source)
        img = self._images.get(path)
        if img is None:
            img = load_image(path, self.size, self.preprocess)
            if self.cache:
                self._images[path] = img
        return img

    def check(self, sources: list[Any], progress: bool = True, desc: str = "images"
              ) -> dict[Any, str]:
        """Decode every image once (in threads), keeping them cached: {source: problem} for
        those that cannot be read; nothing fails later at the step that reads one."""
        from concurrent.futures import ThreadPoolExecutor

        from tinyvlm.progress import Progress

        unique = list(dict.fromkeys(s for s in sources if not isinstance(s, bytes | Image.Image)))
        bad: dict[Any, str] = {}
        bar = Progress(len(unique), desc, "img", enabled=progress)

        def one(source: Any) -> None:
            try:
                self.uint8(source)
            except InputError as e:
                bad[source] = str(e)
            bar.update(1)

        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            list(pool.map(one, unique))
        bar.close()
        return bad

    def pixels(self, sources: list[Any]) -> torch.Tensor | None:
        if not sources:
            return None
        batch = torch.stack([self.uint8(p) for p in sources]).long()
        channels = torch.arange(batch.shape[1]).view(1, -1, 1, 1)
        return self.table[channels, batch]
