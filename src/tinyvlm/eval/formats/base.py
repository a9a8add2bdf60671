"""What every benchmark loader returns: items to prompt, in one shape for all formats."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyvlm.data.conversation import Turn
from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import is_missing as is_missing
from tinyvlm.io import atomic_path

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class Item:
    """One question: what the template renders and what the scorer needs."""

    id: str
    question: str
    images: list[Path] = field(default_factory=list)
    answer: str | None = None  # ground truth as the benchmark stores it (None: hidden)
    hint: str = ""
    options: list[tuple[str, str]] = field(default_factory=list)  # (letter, text)
    history: list[Turn] = field(default_factory=list)  # earlier turns (LLaVA conversations)
    meta: dict[str, Any] = field(default_factory=dict)  # category, split, subtask, ...

    def fields(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.meta.items() if isinstance(v, str | int | float)},
                "question": self.question, "hint": self.hint, "options": self.options,
                "images": len(self.images)}


@dataclass
class Benchmark:
    kind: str  # the format: a key of formats.FORMATS (pope, mme, gqa, ...)
    path: Path  # the file (or directory) given
    items: list[Item]
    notes: list[str] = field(default_factory=list)  # e.g. items skipped and why
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific (annotations, ...)
    alias: str | None = None  # set when two files of one run would share a name

    @property
    def name(self) -> str:
        """Display name: the format, then the file stem when it says more (pope/random)."""
        if self.alias:
            return self.alias
        stem = self.path.stem if self.path.is_file() else self.path.name
        stem = stem.removeprefix(f"{self.kind}_")
        return self.kind if stem in ("", self.kind) else f"{self.kind}/{stem}"

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for item in self.items:
            if item.id in seen:
                raise InputError(f"duplicate question id {item.id!r}", self.path)
            seen.add(item.id)


@dataclass
class LoadContext:
    """Where images are: under `image_root` if given, else (or if not found there) beside the
    benchmark file; images embedded in the file (base64 in MMBench TSVs) are written once to
    `embedded_dir`."""

    image_root: Path | None
    embedded_dir: Path

    def roots_for(self, path: Path) -> list[Path]:
        beside = path if path.is_dir() else path.parent
        return [r for r in (self.image_root, beside) if r is not None]

    def find_image(self, path: Path, relative: Sequence[str | Path], line: int | None) -> Path:
        """The first existing root / candidate, roots first; an InputError naming what was
        tried otherwise."""
        candidates = [root / rel for root in self.roots_for(path) for rel in relative]
        for c in candidates:
            if c.is_file():
                return c
        tried = ", ".join(str(c) for c in candidates[:3])
        more = f" and {len(candidates) - 3} more" if len(candidates) > 3 else ""
        raise InputError(f"image not found (tried {tried}{more}; set --image-root)", path,
                         line)


def write_embedded(data: str, ctx: LoadContext, source: Path, line: int | None) -> Path:
    """Decode a base64 image into ctx.embedded_dir, named by its hash, once; return its path.

    Written to disk rather than kept in memory: an MMBench TSV holds hundreds of MB of images.
    """
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise InputError("image column is not valid base64", source, line) from None
    if not raw:
        raise InputError("empty image", source, line)
    path = ctx.embedded_dir / f"{hashlib.sha256(raw).hexdigest()[:24]}.img"
    if not path.is_file() or path.stat().st_size != len(raw):
        with atomic_path(path) as tmp:
            tmp.write_bytes(raw)
    return path
