"""Per-item prediction cache: an append-only JSONL file, so an interrupted eval resumes.

Each line is one finished item: ``{"fingerprint", "id", "prompt_hash", "output",
"seconds"}``. An entry counts only for the same model fingerprint (weights, tokenizer, config,
decoding settings) and the same prompt (ids and images), so editing a template, a benchmark
file or the model silently recomputes what changed and nothing else. Lines are appended and
fsynced per batch; a crash can only tear the last line, which is ignored and cut off before
the next append.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_fingerprint(model: Any, **settings: Any) -> str:
    """Hash of everything that decides a model's output: config, tokenizer, every weight,
    and decoding `settings` (e.g. max_new_tokens)."""
    import torch

    from tinyvlm.config import to_dict

    h = hashlib.sha256()
    h.update(json.dumps(to_dict(model.config), sort_keys=True).encode())
    if model.tokenizer is not None:
        h.update(model.tokenizer.backend.to_str().encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class PredictionCache:
    """The cache file of one model on one benchmark file."""

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self, repair: bool = True) -> dict[str, dict[str, Any]]:
        """id -> entry for this fingerprint (the last entry wins); cuts off a torn last line
        (repair: false only reads, for processes that share the file)."""
        if not self.path.is_file():
            return {}
        entries: dict[str, dict[str, Any]] = {}
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good_end = 0  # byte offset after the last complete, parseable line
        for lineno, line in enumerate(lines, 1):
            last = lineno == len(lines)
            if not line.strip():
                if not last:
                    good_end += len(line) + 1
                continue
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if last:
                    break  # a torn final write: ignore it
                raise InputError("corrupt prediction cache line (delete the file to start "
                                 "over)", self.path, lineno) from None
            if last:
                break  # parseable but without its newline: the write did not finish
            good_end += len(line) + 1
            if isinstance(entry, dict) and entry.get("fingerprint") == self.fingerprint:
                entries[str(entry["id"])] = entry
        if good_end < len(raw) and repair:
            with open(self.path, "r+b") as f:  # drop the torn tail before anything is appended
                f.truncate(good_end)
        return entries

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Append finished items and force them to disk (one flush + fsync per call)."""
        lines = [json.dumps({"fingerprint": self.fingerprint, **e}, ensure_ascii=False) + "\n"
                 for e in entries]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
