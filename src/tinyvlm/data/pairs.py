"""Preference pair records: the JSONL file format, read, checked and written.

A record has the layout TRL and RLAIF-V use, plus provenance:
``{"id", "prompt", "image", "chosen", "rejected", "source", "meta", "history"}``. `prompt` is
the last user message (with `<image>` where the image goes), `history` the earlier
[user, assistant] turns, `image` a path, a list of paths or null, `source` how the pair was
ranked: "ground_truth", "teacher" or "pope". Records written by other tools may leave out
everything but prompt, image, chosen and rejected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyvlm.data.conversation import IMAGE, image_field, place_images
from tinyvlm.errors import InputError
from tinyvlm.io import read_jsonl_numbered, write_jsonl

SOURCES = ("ground_truth", "teacher", "pope")


def record_images(record: dict[str, Any]) -> list[Path]:
    """The image paths of a record, in placeholder order."""
    image = record.get("image")
    return [] if image is None else [Path(image)] if isinstance(image, str) \
        else [Path(p) for p in image]


def write_pairs(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write pair records as JSONL, atomically; image paths relative to the file's directory,
    so the file moves together with its images."""
    path = Path(path)
    base = path.resolve().parent

    def portable(record: dict[str, Any]) -> dict[str, Any]:
        paths = record_images(record)
        if not paths:
            return record
        rel = [os.path.relpath(p.resolve(), base) for p in paths]
        return {**record, "image": rel[0] if isinstance(record["image"], str) else rel}

    write_jsonl(path, (portable(r) for r in records))
    return path


def _check_record(row: Any, path: Path, line: int, root: Path) -> dict[str, Any]:
    def bad(message: str) -> InputError:
        return InputError(f"bad preference pair: {message}", path, line)

    if not isinstance(row, dict):
        raise bad("not a JSON object")
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(key), str):
            raise bad(f"'{key}' must be a string")
    for key in ("chosen", "rejected"):
        if IMAGE in row[key]:
            raise bad(f"'{key}' holds '{IMAGE}' (images go in the prompt)")
    history = row.get("history") or []
    if not (isinstance(history, list) and all(
            isinstance(t, list | tuple) and len(t) == 2 and all(isinstance(x, str) for x in t)
            for t in history)):
        raise bad("'history' must be a list of [user, assistant] pairs")
    image = row.get("image")
    names = image_field(image)
    if names is None:
        raise bad("'image' must be a path, a list of paths or null")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise bad("'meta' must be an object")
    try:  # TRL / RLAIF-V prompts leave the placeholders out: they go before the first turn
        users = place_images([u for u, _ in history] + [row["prompt"]], len(names))
    except ValueError as e:
        raise bad(str(e)) from None
    history = [[u, a] for u, (_, a) in zip(users, history, strict=False)]
    paths = [os.path.normpath(root / n) for n in names]
    return {"id": str(row.get("id", line)), "prompt": users[-1],
            "image": None if not paths else paths[0] if isinstance(image, str) else paths,
            "chosen": row["chosen"], "rejected": row["rejected"],
            "source": str(row.get("source", "")), "meta": meta, "history": history}


def load_pairs(path: str | Path, image_root: str | Path | None = None) -> list[dict[str, Any]]:
    """Read pair records (ours, or TRL / RLAIF-V style {prompt, image, chosen, rejected});
    relative image paths are resolved against `image_root` (default: the file's directory).
    A bad record is an InputError naming file:line."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.resolve().parent
    return [_check_record(row, path, line, root) for line, row in read_jsonl_numbered(path)]
