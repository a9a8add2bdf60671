"""Checkpoints of one stage: `checkpoints/<stage>/step-NNNNNN/` holds `model/` (a model
directory), `trainer.pt` (optimizer, scheduler, objective and RNG state), `depends.json`
(the recipe settings the checkpoint depends on) and `checksums.json` (the SHA-256 of every
file, written last), written atomically; the newest `keep` survive.

A checkpoint is used only when every file matches its checksum: a resume falls back to the
newest good checkpoint, warning about (and removing) each bad one, and refuses one made with
other settings. A fresh start replaces an earlier run's checkpoints when it writes its own
first one, not before: a run that fails early loses nothing.
"""

from __future__ import annotations

import errno
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tinyvlm.errors import InputError
from tinyvlm.io import atomic_dir, check_checksums, read_json, write_checksums, write_json
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir

_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def first_difference(a: object, b: object, key: str) -> str | None:
    """'key.sub (old -> new)' for the first place two plain trees differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in dict.fromkeys([*a, *b]):
            found = first_difference(a.get(k), b.get(k), f"{key}.{k}")
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{key}[{i}]")
            if found is not None:
                return found
        return None
    return None if a == b else f"{key} ({a!r} -> {b!r})"


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint could not be used; an earlier one (or a fresh start) takes its place."""


class Checkpoints:
    def __init__(self, run: RunDir, stage: str, keep: int,
                 depends: dict[str, Any] | None = None, fresh: bool = False):
        """`depends`: what the checkpoints depend on (stored with each, compared on resume);
        `fresh`: this run starts the stage over, so its first save replaces earlier ones."""
        self.run, self.stage, self.keep = run, stage, keep
        self.depends, self.fresh = depends, fresh

    @property
    def dir(self) -> Path:
        return self.run.stage_dir(self.stage)

    def steps(self) -> list[int]:
        return self.run.steps(self.stage)

    def path(self, step: int) -> Path:
        return self.run.step_dir(self.stage, step)

    def save(self, step: int, model: TinyVLM | None, state: dict[str, Any]) -> Path:
        if self.run.is_main:
            assert model is not None
            if self.fresh:  # an earlier run's checkpoints go once this run has its own
                self.run.clear_stage(self.stage)
                self.fresh = False
            try:
                with atomic_dir(self.path(step)) as tmp:
                    model.save_pretrained(tmp / "model")
                    torch.save(state, tmp / "trainer.pt")
                    if self.depends is not None:
                        write_json(tmp / "depends.json", self.depends)
                    write_checksums(tmp)
            except OSError as e:
                if e.errno in _FULL_DISK:
                    raise InputError(f"no space left on device while writing step {step} of "
                                     f"stage '{self.stage}'; the previous checkpoint is intact",
                                     self.dir) from None
                raise
            old = [s for s in self.steps() if s != step]
            for s in old[: max(0, len(old) - (self.keep - 1))] if self.keep > 0 else []:
                self.run.remove_step(self.stage, s)
        return self.path(step)

    def problem(self, step: int) -> str | None:
        """Why checkpoint `step` cannot be used, or None when it is complete and intact.
        (Checkpoints written before checksums existed have neither checksums nor
        depends.json, and are trusted as they are.)"""
        path = self.path(step)
        for need in ("trainer.pt", "model/config.json", "model/model.safetensors"):
            if not (path / need).is_file():
                return f"{need} is missing"
        if (path / "depends.json").is_file() and not (path / "checksums.json").is_file():
            return "checksums.json is missing"
        return check_checksums(path) or check_checksums(path / "model")

    def check_settings(self, step: int) -> None:
        """An InputError when checkpoint `step` was made with other settings than now."""
        path = self.path(step) / "depends.json"
        if self.depends is None or not path.is_file():
            return
        where = first_difference(read_json(path), self.depends, "")
        if where is not None:
            raise InputError(f"--resume: this checkpoint was made with other settings: "
                             f"recipe{where}; its stage depends on them. Resume with the recipe "
                             "it was made with, or start over without --resume",
                             self.path(step))

    def latest_good(self) -> int | None:
        """The newest usable checkpoint; each newer unusable one is warned about and removed
        (the run wrote it; a later resume must not try it again)."""
        for step in reversed(self.steps()):
            problem = self.problem(step)
            if problem is None:
                return step
            warnings.warn(f"checkpoint {self.path(step)} is unusable ({problem}); removed, "
                          "resuming from the one before", CorruptCheckpointWarning, stacklevel=2)
            self.run.remove_step(self.stage, step)
        return None

    def read(self, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the model weights, the trainer state) of checkpoint `step`."""
        path = self.path(step)
        if (problem := self.problem(step)) is not None:
            raise InputError(f"checkpoint is unusable: {problem}", path)
        try:
            return (load_file(str(path / "model" / "model.safetensors")),
                    torch.load(path / "trainer.pt", weights_only=True))
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
            raise InputError(f"cannot read the checkpoint ({e.__class__.__name__}: {e})",
                             path) from None

    def restore(self, step: int, model: TinyVLM) -> dict[str, Any]:
        """Load the model weights of `step` into `model`; return the trainer state."""
        tensors, state = self.read(step)
        model.load_tensors(tensors, self.path(step))
        return state
