"""Images: read from a path, bytes or a PIL image, resized, kept as uint8, normalised."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tinyvlm.errors import InputError

ImageSource = Path | str | bytes | Image.Image


def load_image(source: ImageSource, size: int) -> torch.Tensor:
    """An RGB image as a uint8 tensor (3, size, size), resized if needed."""
    if isinstance(source, Image.Image):
        return _to_tensor(source, size)
    if isinstance(source, bytes):
        return _decode(io.BytesIO(source), size, "<image bytes>")
    path = Path(source)
    if not path.is_file():
        raise InputError("image not found", path)
    return _decode(path, size, path)


def _decode(file: Any, size: int, where: str | Path) -> torch.Tensor:
    try:
        with Image.open(file) as img:
            return _to_tensor(img, size)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"cannot read image ({e.__class__.__name__}: {e})", where) from None


def _to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1)


class ImageStore:
    """Loads images once and keeps them as uint8; `pixels` normalises to [-1, 1] floats.

    Images given by path are cached (by path); bytes and PIL images are decoded each time."""

    def __init__(self, size: int, cache: bool = True):
        self.size = size
        self.cache = cache
        self._images: dict[Path, torch.Tensor] = {}

    def uint8(self, source: ImageSource) -> torch.Tensor:
        if isinstance(source, bytes | Image.Image):
            return load_image(source, self.size)
        path = Path(source)
        img = self._images.get(path)
        if img is None:
            img = load_image(path, self.size)
            if self.cache:
                self._images[path] = img
        return img

    def pixels(self, sources: list[Any]) -> torch.Tensor | None:
        if not sources:
            return None
        batch = torch.stack([self.uint8(p) for p in sources]).float()
        return batch.div_(127.5).sub_(1.0)
