"""Checkpoints of one stage: `checkpoints/<stage>/step-NNNNNN/` holds `model/` (a model
directory) and `trainer.pt` (optimizer, scheduler, objective and RNG state), written
atomically; the newest `keep` survive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tinyvlm.io import atomic_dir
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir


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
            with atomic_dir(self.path(step)) as tmp:
                model.save_pretrained(tmp / "model")
                torch.save(state, tmp / "trainer.pt")
            old = [s for s in self.steps() if s != step]
            for s in old[: max(0, len(old) - (self.keep - 1))] if self.keep > 0 else []:
                self.run.remove_step(self.stage, s)
        return self.path(step)

    def restore(self, step: int, model: TinyVLM) -> dict[str, Any]:
        """Load the model weights of `step` into `model`; return the trainer state."""
        path = self.path(step)
        model.load_tensors(load_file(str(path / "model" / "model.safetensors")), path)
        return torch.load(path / "trainer.pt", weights_only=True)
