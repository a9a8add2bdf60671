"""LLaVA conversation files (JSON list or JSONL), the format users already have."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.data.conversation import IMAGE, Conversation, Turn, image_field, place_images
from tinyvlm.errors import InputError
from tinyvlm.io import read_json, read_jsonl


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
    names = image_field(row.get("image"))
    if names is None:
        raise InputError(f"{where}: 'image' must be a path or a list of paths", path)
    turns: list[Turn] = []
    for j in range(0, len(convs) - 1, 2):
        human, gpt = convs[j], convs[j + 1]
        for msg, role in ((human, "human"), (gpt, "gpt")):
            if not isinstance(msg, dict) or msg.get("from") != role \
                    or not isinstance(msg.get("value"), str):
                raise InputError(f"{where}: turn {j} must be {{from: human, value}} then "
                                 "{from: gpt, value}", path)
        if IMAGE in gpt["value"]:
            raise InputError(f"{where}: turn {j + 1}: an answer holds '{IMAGE}' (images go in "
                             "the human turns)", path)
        turns.append((human["value"], gpt["value"]))
    if len(convs) % 2:
        raise InputError(f"{where}: the last human turn has no gpt answer", path)
    try:
        users = place_images([u for u, _ in turns], len(names), missing="single")
    except ValueError as e:
        raise InputError(f"{where}: {e}", path) from None
    turns = [(u, a) for u, (_, a) in zip(users, turns, strict=True)]
    meta = row.get("meta", [])
    if not isinstance(meta, list) or (meta and len(meta) != len(turns)):
        raise InputError(f"{where}: 'meta' must be a list with one entry per turn", path)
    return Conversation(rid, [root / n for n in names], turns, meta, f"{path}:{where}")


def conversation_texts(conversations: list[Conversation]) -> list[str]:
    """All text of a dataset (for training a tokenizer)."""
    return [text for c in conversations for turn in c.turns for text in turn]
