"""Files users already have: LLaVA conversation JSON (or JSONL), and images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tinyvlm.data.tokenizer import Turn
from tinyvlm.errors import InputError
from tinyvlm.io import read_json, read_jsonl

IMAGE_PLACEHOLDER = "<image>"


@dataclass
class Conversation:
    """One LLaVA record: images and alternating user/assistant turns."""

    id: str
    images: list[Path]
    turns: list[Turn]
    meta: list[dict[str, Any]] = field(default_factory=list)  # one entry per turn, if given
    source: str = ""  # "file:record" for error messages

    @property
    def question(self) -> str:
        return self.turns[-1][0]

    @property
    def answer(self) -> str:
        return self.turns[-1][1]


def load_llava(path: str | Path, image_root: str | Path | None = None) -> list[Conversation]:
    """Read LLaVA conversation records from a JSON list or a JSONL file.

    Image paths are relative to `image_root` (default: the file's directory). A record with an
    image but no `<image>` in its first user turn gets one prepended, as LLaVA does.
    """
    path = Path(path)
    rows = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    if not isinstance(rows, list):
        raise InputError("expected a JSON list of conversation records", path)
    root = Path(image_root) if image_root is not None else path.parent
    return [_parse_record(row, i, path, root) for i, row in enumerate(rows)]


def _parse_record(row: Any, index: int, path: Path, root: Path) -> Conversation:
    where = f"record {index}"
    if not isinstance(row, dict):
        raise InputError(f"{where} is not an object", path)
    rid = str(row.get("id", index))
    where = f"record {index} (id {rid})"
    convs = row.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise InputError(f"{where} has no 'conversations' list", path)
    image_field = row.get("image")
    names = [] if image_field is None else [image_field] if isinstance(image_field, str) \
        else image_field
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{where}: 'image' must be a path or a list of paths", path)
    turns: list[Turn] = []
    for j in range(0, len(convs) - 1, 2):
        human, gpt = convs[j], convs[j + 1]
        for msg, role in ((human, "human"), (gpt, "gpt")):
            if not isinstance(msg, dict) or msg.get("from") != role \
                    or not isinstance(msg.get("value"), str):
                raise InputError(f"{where}: turn {j} must be {{from: human, value}} then "
                                 "{from: gpt, value}", path)
        turns.append((human["value"], gpt["value"]))
    if len(convs) % 2:
        raise InputError(f"{where}: the last human turn has no gpt answer", path)
    placeholders = sum(t[0].count(IMAGE_PLACEHOLDER) for t in turns)
    if names and placeholders == 0:
        turns[0] = (f"{IMAGE_PLACEHOLDER}\n{turns[0][0]}", turns[0][1])
        placeholders = len(names) if len(names) == 1 else 0
    if placeholders != len(names):
        raise InputError(f"{where}: {placeholders} <image> placeholders for {len(names)} images",
                         path)
    meta = row.get("meta", [])
    if not isinstance(meta, list) or (meta and len(meta) != len(turns)):
        raise InputError(f"{where}: 'meta' must be a list with one entry per turn", path)
    return Conversation(rid, [root / n for n in names], turns, meta, f"{path}:{where}")


def keep_turns(conv: Conversation, types: set[str]) -> Conversation | None:
    """The conversation with only the turns whose meta type is in `types` (None if none is
    left); image placeholders of dropped turns move to the first kept turn."""
    if not conv.meta:
        return None
    kept = [i for i, m in enumerate(conv.meta) if m.get("type") in types]
    if not kept:
        return None
    images = sum(conv.turns[i][0].count(IMAGE_PLACEHOLDER) for i in range(len(conv.turns))
                 if i not in kept)
    turns = [conv.turns[i] for i in kept]
    if images:
        turns[0] = ((IMAGE_PLACEHOLDER + "\n") * images + turns[0][0], turns[0][1])
    return Conversation(conv.id, conv.images, turns, [conv.meta[i] for i in kept], conv.source)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """An RGB image as a uint8 tensor (3, size, size), resized if needed."""
    path = Path(path)
    if not path.is_file():
        raise InputError("image not found", path)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            array = np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"cannot read image ({e.__class__.__name__}: {e})", path) from None
    return torch.from_numpy(array).permute(2, 0, 1)


class ImageStore:
    """Loads images once and keeps them as uint8; `pixels` normalises to [-1, 1] floats."""

    def __init__(self, size: int, cache: bool = True):
        self.size = size
        self.cache = cache
        self._images: dict[Path, torch.Tensor] = {}

    def uint8(self, path: Path) -> torch.Tensor:
        img = self._images.get(path)
        if img is None:
            img = load_image(path, self.size)
            if self.cache:
                self._images[path] = img
        return img

    def pixels(self, paths: list[Path]) -> torch.Tensor | None:
        if not paths:
            return None
        batch = torch.stack([self.uint8(p) for p in paths]).float()
        return batch.div_(127.5).sub_(1.0)


def conversation_texts(conversations: list[Conversation]) -> list[str]:
    """All text of a dataset (for training a tokenizer)."""
    return [text for c in conversations for turn in c.turns for text in turn]
