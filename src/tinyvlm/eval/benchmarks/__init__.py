"""Benchmark files in their official layouts, loaded into one item shape.

Each format module has KIND, sniff(path, first_record), load(path, ctx) and (except LLaVA
files, scored from the samples) write_answers(bench, samples, out_dir), which writes the
predictions in the layout the official scorer reads. `NAME:PATH` forces a format.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from tinyvlm.errors import InputError, closest
from tinyvlm.eval.benchmarks import llava, mmbench, mme, moat, pope, scienceqa, seed, vqa
from tinyvlm.eval.benchmarks.base import Benchmark, Item, LoadContext
from tinyvlm.io import read_json, read_jsonl_numbered

# Sniffing order matters: the first format whose sniff accepts the first record wins.
FORMATS: dict[str, ModuleType] = {m.KIND: m for m in (
    mme, mmbench, llava, pope, seed, vqa, scienceqa, moat)}

__all__ = ["FORMATS", "Benchmark", "Item", "LoadContext", "detect", "load_benchmark"]


def _first_record(path: Path) -> Any:
    if path.suffix == ".jsonl":
        rows = read_jsonl_numbered(path)
        return rows[0][1] if rows else None
    doc = read_json(path)
    if isinstance(doc, list):
        return doc[0] if doc else None
    if isinstance(doc, dict):
        for key in ("questions", "data"):  # SEED-Bench, VQAv2 / TextVQA
            if isinstance(doc.get(key), list):
                return doc[key][0] if doc[key] else None
        return next(iter(doc.values()), None)  # ScienceQA: {pid: problem}
    return None


def detect(path: Path) -> str:
    """The format of a benchmark file, from its extension and first record."""
    if not path.exists():
        raise InputError("benchmark file not found", path)
    first = None if path.is_dir() or path.suffix in (".tsv", ".txt") else _first_record(path)
    for kind, module in FORMATS.items():
        if module.sniff(path, first):
            return kind
    raise InputError(f"cannot tell the benchmark format; prefix the path with one of "
                     f"{', '.join(FORMATS)} and ':' (e.g. pope:{path})", path)


def split_spec(spec: str) -> tuple[str | None, Path]:
    """'pope:questions.jsonl' -> ('pope', path); a plain path -> (None, path)."""
    head, sep, tail = spec.partition(":")
    if sep and head in FORMATS:
        return head, Path(tail)
    if sep and head.isidentifier() and not Path(spec).exists() and len(head) > 1:
        raise InputError(f"unknown benchmark format '{head}'{closest(head, FORMATS)}; known: "
                         f"{', '.join(FORMATS)}")
    return None, Path(spec)


def load_benchmark(spec: str | Path, ctx: LoadContext) -> Benchmark:
    kind, path = split_spec(str(spec))
    kind = kind or detect(path)
    if not path.exists():
        raise InputError("benchmark file not found", path)
    return FORMATS[kind].load(path, ctx)
