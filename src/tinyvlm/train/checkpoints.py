"""Checkpoints of one stage: `checkpoints/<stage>/step-NNNNNN/` holds `model/` (a model
directory), `trainer.pt` (optimizer, scheduler, objective and RNG state), `depends.json`
(the recipe settings the checkpoint depends on) and `checksums.json` (the SHA-256 of every
file, written last), written atomically; the newest `keep` survive.

A sharded checkpoint (several processes, torch.distributed.checkpoint) holds instead `dcp/`
(the trained module's and the optimizer's state, each process writing its shards),
`trainer.pt` (step, stage and scheduler) and `rng/rank-NNNNN.pt` (each process's random
state); the stage's final one also holds `model/`, gathered whole. Any number of processes
resumes from either kind.

A checkpoint is used only when every file matches its checksum: a resume falls back to the
newest good checkpoint, warning about (and removing) each bad one, and refuses one made with
other settings. A fresh start replaces an earlier run's checkpoints when it writes its own
first one, not before: a run that fails early loses nothing.
"""

from __future__ import annotations

import errno
import pickle
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from tinyvlm.errors import InputError
from tinyvlm.io import (
    atomic_dir,
    atomic_path,
    check_checksums,
    read_json,
    replace_dir,
    write_checksums,
    write_json,
)
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


@dataclass
class CheckpointContent:
    """What one checkpoint holds, as each process sees it: the whole model (on the process
    that writes it), the trainer state, and for a sharded checkpoint this process's shards
    of the trained module and optimizer (`train_state`) and its random state."""

    model: TinyVLM | None
    state: dict[str, Any]
    shards: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    rank: int = 0


def train_state(step_module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The trained module's (model and objective) and the optimizer's state as
    torch.distributed.checkpoint saves and loads it: names without wrapper prefixes, this
    process's shards under FSDP2, whole tensors otherwise."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(step_module, optimizer)
    return {"train": model_state, "optim": optim_state}


def load_train_state(step_module: nn.Module, optimizer: torch.optim.Optimizer,
                     path: Path) -> None:
    """A sharded checkpoint's state into the trained module and optimizer, resharded for
    this number of processes (one process needs no process group)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    stored = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    state = train_state(step_module, optimizer)
    # Parameters that never had a gradient have no optimizer state in the checkpoint; they
    # get none here either (AdamW starts them fresh, as the uninterrupted run does).
    state["optim"]["state"] = {name: s for name, s in state["optim"]["state"].items()
                               if f"optim.state.{name}.step" in stored}
    with _one_process_ok():
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(step_module, optimizer, model_state_dict=state["train"],
                   optim_state_dict=state["optim"])


@contextmanager
def _one_process_ok() -> Iterator[None]:
    """torch.distributed.checkpoint warns when it runs without a process group: one process
    reading (or writing) a sharded checkpoint is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


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

    def save(self, step: int, content: CheckpointContent,
             barrier: Callable[[], None] = lambda: None) -> Path:
        """Write checkpoint `step`; with shards every process calls this (`barrier` waits
        for all of them)."""
        try:
            if content.shards is not None:
                self._save_sharded(step, content, barrier)
            elif self.run.is_main:
                assert content.model is not None
                self._begin()
                with atomic_dir(self.path(step)) as tmp:
                    self._write_main(tmp, content)
        except OSError as e:
            if e.errno in _FULL_DISK:
                raise InputError(f"no space left on device while writing step {step} of "
                                 f"stage '{self.stage}'; the previous checkpoint is intact",
                                 self.dir) from None
            raise
        if self.run.is_main:
            old = [s for s in self.steps() if s != step]
            for s in old[: max(0, len(old) - (self.keep - 1))] if self.keep > 0 else []:
                self.run.remove_step(self.stage, s)
        return self.path(step)

    def _begin(self) -> None:
        if self.fresh:  # an earlier run's checkpoints go once this run has its own
            self.run.clear_stage(self.stage)
            self.fresh = False

    def _write_main(self, tmp: Path, content: CheckpointContent) -> None:
        """The main process's files, checksums last."""
        if content.model is not None:
            content.model.save_pretrained(tmp / "model")
        torch.save(content.state, tmp / "trainer.pt")
        if self.depends is not None:
            write_json(tmp / "depends.json", self.depends)
        write_checksums(tmp)

    def _save_sharded(self, step: int, content: CheckpointContent,
                      barrier: Callable[[], None]) -> None:
        """Every process writes its shards and random state into one temporary directory
        (a name all of them know); the main process adds its files and the checksums and
        renames it once all are written."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        tmp = self.dir / f".{self.path(step).name}.sharded"
        if self.run.is_main:
            self._begin()
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)
        barrier()
        with _one_process_ok():
            dcp.save(content.shards, checkpoint_id=str(tmp / "dcp"),
                     no_dist=not dist.is_initialized())
        with atomic_path(tmp / "rng" / f"rank-{content.rank:05d}.pt") as part:
            torch.save(content.rng, part)
        barrier()
        if self.run.is_main:
            self._write_main(tmp, content)
            replace_dir(tmp, self.path(step))
        barrier()

    def sharded(self, step: int) -> bool:
        return (self.path(step) / "dcp").is_dir()

    def problem(self, step: int, need_model: bool = False) -> str | None:
        """Why checkpoint `step` cannot be used, or None when it is complete and intact
        (`need_model`: it must hold the whole model, as a stage's final one does).
        (Checkpoints written before checksums existed have neither checksums nor
        depends.json, and are trusted as they are.)"""
        path = self.path(step)
        needs = ["trainer.pt"]
        if self.sharded(step):
            needs += ["dcp/.metadata", "rng/rank-00000.pt", "checksums.json"]
        if need_model or not self.sharded(step):
            needs += ["model/config.json", "model/model.safetensors"]
        for need in needs:
            if not (path / need).is_file():
                return f"{need} is missing"
        if (path / "depends.json").is_file() and not (path / "checksums.json").is_file():
            return "checksums.json is missing"
        return check_checksums(path) or (check_checksums(path / "model")
                                         if (path / "model").is_dir() else None)

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

    def read(self, step: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """(the model weights, the trainer state) of checkpoint `step`; the weights are None
        for a sharded one without the whole model (its `dcp/` holds them: `read_shards`)."""
        path = self.path(step)
        if (problem := self.problem(step)) is not None:
            raise InputError(f"checkpoint is unusable: {problem}", path)
        with _readable(path):
            weights = (None if self.sharded(step)
                       else load_file(str(path / "model" / "model.safetensors")))
            return weights, torch.load(path / "trainer.pt", weights_only=True)

    def read_shards(self, step: int, step_module: nn.Module,
                    optimizer: torch.optim.Optimizer, rank: int) -> dict[str, Any]:
        """A sharded checkpoint into the trained module and optimizer (every process calls
        this); returns this process's random state (the main process's when the checkpoint
        was made by fewer processes)."""
        path = self.path(step)
        with _readable(path):
            load_train_state(step_module, optimizer, path / "dcp")
            rng = path / "rng" / f"rank-{rank:05d}.pt"
            return torch.load(rng if rng.is_file() else path / "rng" / "rank-00000.pt",
                              weights_only=True)

    def restore(self, step: int, model: TinyVLM) -> dict[str, Any]:
        """Load the model weights of `step` (its whole model) into `model`; return the
        trainer state."""
        path = self.path(step)
        if (problem := self.problem(step, need_model=True)) is not None:
            raise InputError(f"checkpoint is unusable: {problem}", path)
        with _readable(path):
            tensors = load_file(str(path / "model" / "model.safetensors"))
            state = torch.load(path / "trainer.pt", weights_only=True)
        model.load_tensors(tensors, path)
        return state


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A checkpoint that passed its checks but still cannot be read: one clear error."""
    try:
        yield
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, SafetensorError,
            CheckpointException) as e:
        raise InputError(f"cannot read the checkpoint ({e.__class__.__name__}: {e})",
                         path) from None
