"""Checkpoints of one stage: `checkpoints/<stage>/step-NNNNNN/` holds `model/` (a model
directory), `trainer.pt` (optimizer, scheduler, objective and RNG state) and `checksums.json`
(the SHA-256 of both, written last), written atomically; the newest `keep` survive.

A checkpoint is used only when every file matches its checksum: a resume falls back to the
newest good checkpoint, warning about (and removing) each bad one.
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
from tinyvlm.io import atomic_dir, check_checksums, write_checksums
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir

_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint could not be used; an earlier one (or a fresh start) takes its place."""


class Checkpoints:
    def __init__(self, run: RunDir, stage: str, keep: int):
        self.run, self.stage, self.keep = run, stage, keep

    @property
    def dir(self) -> Path:
        return self.run.stage_dir(self.stage)

    def steps(self) -> list[int]:
        return self.run.steps(self.stage)

    def path(self, step: int) -> Path:
        return self.run.step_dir(self.stage, step)

    def save(self, step: int, model: TinyVLM, state: dict[str, Any]) -> Path:
        if self.run.is_main:
            try:
                with atomic_dir(self.path(step)) as tmp:
                    model.save_pretrained(tmp / "model")
                    torch.save(state, tmp / "trainer.pt")
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
        """Why checkpoint `step` cannot be used, or None when it is complete and intact."""
        path = self.path(step)
        for need in ("trainer.pt", "model/config.json", "model/model.safetensors"):
            if not (path / need).is_file():
                return f"{need} is missing"
        return check_checksums(path) or check_checksums(path / "model")

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

    def restore(self, step: int, model: TinyVLM) -> dict[str, Any]:
        """Load the model weights of `step` into `model`; return the trainer state."""
        path = self.path(step)
        if (problem := self.problem(step)) is not None:
            raise InputError(f"checkpoint is unusable: {problem}", path)
        try:
            model.load_tensors(load_file(str(path / "model" / "model.safetensors")), path)
            return torch.load(path / "trainer.pt", weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
            raise InputError(f"cannot read the checkpoint ({e.__class__.__name__}: {e})",
                             path) from None
