"""The layout of a run directory, and the one place that turns names into paths under it.

A run directory holds the resolved `recipe.yaml`, `tokenizer.json`, `metrics.jsonl`,
`checkpoints/<stage>/step-NNNNNN/` (a model directory `model/` and `trainer.pt`),
`checkpoints/<stage>/pairs.jsonl` (pairs a build_pairs stage made), the final `model/`,
the evaluation's `predictions/` and `cache/`, and the reports. Every name that becomes a
path (a stage, a model row, a benchmark) must be a plain name, and every path built here
lies inside the run directory; what is deleted is only what a run writes (step directories,
pairs files and their temporary siblings), never anything else found there.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from tinyvlm.errors import InputError
from tinyvlm.io import read_jsonl, write_jsonl

_STEP = re.compile(r"step-(\d+)")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def check_plain_name(name: str, key: str, source: str | Path | None = None) -> str:
    """`name` if it can be one path component, else an InputError naming `key`.

    Refused: the empty name, '.' and '..' and any name starting with '.', path separators,
    NUL and other control characters, and names longer than 255 bytes."""
    bad = (not name or name.startswith(".") or "/" in name or "\\" in name
           or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode()) > 255)
    if bad:
        raise InputError(f"'{key}' must be a plain name (no '/', no leading '.', not empty), "
                         f"got {name!r}", source)
    return name


def slug(name: str) -> str:
    """A derived name (a benchmark's 'pope/random') as one safe path component."""
    out = _UNSAFE.sub("-", name).lstrip(".")
    return out or "unnamed"


class StageLike(Protocol):
    name: str
    steps: int
    action: str


class RunDir:
    """Paths of one run; writes through it happen only on the main process."""

    def __init__(self, root: str | Path, is_main: bool = True):
        self.root = Path(root)
        self.is_main = is_main

    # ---------------------------------------------------------------- checked paths

    def path(self, *names: str, key: str = "name") -> Path:
        """root / names..., each a plain name."""
        for n in names:
            check_plain_name(n, key)
        return self.root.joinpath(*names)

    def inside(self, path: Path) -> Path:
        """`path` if it lies inside the run directory (lexically), else an InputError."""
        root = os.path.normpath(os.path.abspath(self.root))
        target = os.path.normpath(os.path.abspath(path))
        if os.path.commonpath([root, target]) != root or target == root:
            raise InputError(f"refusing to touch {path}: it is not inside the run directory",
                             self.root)
        return path

    # ---------------------------------------------------------------- the layout

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def model(self) -> Path:
        return self.root / "model"

    def stage_dir(self, stage: str) -> Path:
        return self.path("checkpoints", stage, key="stage name")

    def step_dir(self, stage: str, step: int) -> Path:
        return self.stage_dir(stage) / f"step-{step:06d}"

    def steps(self, stage: str) -> list[int]:
        """The steps with a checkpoint directory, ascending."""
        d = self.stage_dir(stage)
        if not d.is_dir():
            return []
        found = (_STEP.fullmatch(p.name) for p in d.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def stage_model(self, stage: StageLike) -> Path:
        """Where a finished stage left its model: its last step's model directory (actions
        leave theirs as a step-0 checkpoint, so they resume like training stages)."""
        return self.step_dir(stage.name, final_step(stage)) / "model"

    def pairs(self, stage: str) -> Path:
        """Where a build_pairs stage writes its pairs."""
        return self.stage_dir(stage) / "pairs.jsonl"

    def predictions(self, model: str) -> Path:
        return self.path("predictions", f"{check_plain_name(model, 'model name')}.jsonl")

    def answers_dir(self, model: str, bench: str) -> Path:
        return self.path("predictions", model, key="model name") / slug(bench)

    def cache_file(self, model: str, bench: str) -> Path:
        return self.path("cache", model, key="model name") / f"{slug(bench)}.jsonl"

    @property
    def embedded_images(self) -> Path:
        return self.root / "cache" / "images"

    # ---------------------------------------------------------------- what a run deletes

    def remove_step(self, stage: str, step: int) -> None:
        path = self.inside(self.step_dir(stage, step))
        if self.is_main and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)

    def clear_temporaries(self, stage: str) -> None:
        """Remove what interrupted atomic writes of a stage left behind."""
        d = self.inside(self.stage_dir(stage))
        if not self.is_main or not d.is_dir() or d.is_symlink():
            return
        for p in d.iterdir():
            if _is_temp_of(p.name) and not p.is_symlink():
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def clear_stage(self, stage: str) -> None:
        """Forget an earlier run of a stage: its step directories, its pairs file and the
        temporary leftovers of interrupted writes. Anything else there stays."""
        d = self.inside(self.stage_dir(stage))
        if not self.is_main or not d.is_dir() or d.is_symlink():
            return
        for step in self.steps(stage):
            self.remove_step(stage, step)
        self.clear_temporaries(stage)
        for made in ("pairs.jsonl", "depends.json"):
            if (d / made).is_file():
                (d / made).unlink()
        if not any(d.iterdir()):
            d.rmdir()

    # ---------------------------------------------------------------- one writer at a time

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for one process: a second run into it is refused (the lock
        goes with the process, so a killed run leaves none behind)."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError("the output directory is a file", self.root)
        if not self.is_main:  # the other processes of a distributed run: the main one holds it
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise InputError(f"another run is using this directory ({holder}); wait for it "
                                 "or choose another --out", self.root) from None
            f.truncate(0)
            f.write(f"pid {os.getpid()}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- metrics.jsonl

    def append_metrics(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.metrics.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, stage: str, step: int) -> None:
        """Forget a stage's lines past `step` (they belong to a run that is being redone)."""
        if not self.is_main or not self.metrics.is_file():
            return
        rows = read_jsonl(self.metrics)
        kept = [r for r in rows if r.get("stage") != stage or r.get("step", 0) <= step]
        if len(kept) != len(rows):
            write_jsonl(self.metrics, kept)

    def metrics_rows(self) -> Iterable[dict[str, Any]]:
        return read_jsonl(self.metrics) if self.metrics.is_file() else []


def final_step(stage: StageLike) -> int:
    """The step a finished stage's checkpoint has: its steps, or 0 for an action."""
    return stage.steps if stage.action == "train" else 0


def _is_temp_of(name: str) -> bool:
    """Temporary siblings that atomic writes leave when interrupted: .step-NNNNNN.*,
    .pairs.jsonl.*.tmp."""
    return bool(re.fullmatch(r"\.(step-\d+|pairs\.jsonl)\..+", name))
