"""Benchmark scorers: one module per benchmark, each reproducing the official scoring script.

Every module has ``CONVENTIONS`` (``"official"`` first; ``"lmms-eval"`` and ``"vlmevalkit"``
where those harnesses score differently), a Python API on parsed records that returns a
plain dict, and ``score_files(...)`` that reads the benchmark's own file layout. `get` looks a
scorer up by name; modules are imported on first use.

    >>> from tinyvlm.eval.scorers import get
    >>> get("pope").pope_answer("Yes, there is a dog.")
    'yes'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tinyvlm.errors import InputError, closest
from tinyvlm.eval.scorers._common import CONVENTIONS, format_table

SCORERS: dict[str, str] = {
    name: f"tinyvlm.eval.scorers.{name}"
    for name in ("pope", "mme", "mmbench", "seed", "scienceqa", "vqa", "moat", "gqa", "vizwiz",
                 "mmhal", "chair")
}


def get(name: str) -> ModuleType:
    """The scorer module of benchmark `name` (one of SCORERS)."""
    if name not in SCORERS:
        raise InputError(f"no scorer for benchmark '{name}'{closest(name, SCORERS)} "
                         f"(known: {', '.join(SCORERS)})")
    return importlib.import_module(SCORERS[name])


def conventions(name: str) -> tuple[str, ...]:
    """The conventions benchmark `name` supports, official first."""
    return tuple(get(name).CONVENTIONS)


__all__ = ["CONVENTIONS", "SCORERS", "conventions", "format_table", "get"]
