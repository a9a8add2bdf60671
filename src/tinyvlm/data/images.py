"""Images: read from a path, bytes or a PIL image, resized, kept as uint8, normalised."""

from __future__ import annotations

import io
import os
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
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large to decode safely ({e})", where) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read image ({e.__class__.__name__}: {e})", where) from None


def _to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    img = _eight_bit(img).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1)


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
        batch = torch.stack([self.uint8(p) for p in sources]).float()
        return batch.div_(127.5).sub_(1.0)
