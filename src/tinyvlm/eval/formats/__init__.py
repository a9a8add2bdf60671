"""Benchmark kinds: one module per benchmark, each the one home of everything about it.

A format module has KIND, PROMPT (its prompt file in prompts/), sniff(path, first_record),
load(path, ctx), write_answers(bench, samples, out_dir) (the predictions in the layout the
official scorer reads; not for LLaVA files, scored from the samples), score(bench, samples,
answers) (marks each sample with its parsed answer and score and returns the scorer's
result) and headline(name, result) (the report columns of that result). FORMATS is the one
registry; `NAME:PATH` forces a format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from tinyvlm.errors import InputError, closest
from tinyvlm.eval.formats import (
    chair,
    gqa,
    llava,
    mmbench,
    mme,
    mmhal,
    moat,
    pope,
    scienceqa,
    seed,
    vizwiz,
    vqa,
)
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.io import read_json, read_jsonl_numbered

# Sniffing order matters: the first format whose sniff accepts the first record wins.
FORMATS: dict[str, ModuleType] = {m.KIND: m for m in (
    mme, mmbench, llava, pope, seed, vqa, gqa, vizwiz, mmhal, chair, scienceqa, moat)}

__all__ = ["FORMATS", "Benchmark", "Item", "LoadContext", "detect", "headlines",
           "load_benchmark", "score_benchmark"]


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


def score_benchmark(bench: Benchmark, samples: list[dict[str, Any]], answer_dir: Path
                    ) -> tuple[dict[str, Any] | None, Path | None]:
    """(the scorer's result or None, the official-layout answer file or directory).

    Every sample is marked with its parsed answer and score for the log. A file that hides
    the ground truth gets ``result: None`` and a note saying why; its predictions are still
    written for the official tool."""
    module = FORMATS[bench.kind]
    if bench.kind == "llava":
        return module.score(bench, samples, None), None
    answers = module.write_answers(bench, samples, answer_dir)
    if getattr(module, "NEEDS_ANSWERS", True) and any(s["answer"] is None for s in samples):
        bench.notes.append("the file has no ground truth: predictions written, not scored")
        for s in samples:
            s.update(parsed=None, score=None)
        return None, answers
    return module.score(bench, samples, answers), answers


def headlines(row: Mapping[str, Any]) -> dict[str, tuple[Any, str | None]]:
    """Column title -> (value, unit) for each benchmark a results row scored, by the
    benchmark's own headline rule."""
    out: dict[str, tuple[Any, str | None]] = {}
    for name, bench in (row.get("benchmarks") or {}).items():
        result = bench.get("result") if isinstance(bench, Mapping) else None
        module = FORMATS.get(bench.get("format")) if isinstance(bench, Mapping) else None
        if isinstance(result, Mapping) and module is not None:
            out.update(module.headline(name, dict(result)))
    return out
