"""Data parallelism on PyTorch's own stack: under `torchrun` every process trains a replica
wrapped in DistributedDataParallel (gloo on CPUs, nccl on GPUs), reads its share of each
global batch, and the loop's unit counts and losses are all-reduced, so N processes compute
the gradient one process computes for the same global batch. Without torchrun's environment
this is the single-process runtime."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from tinyvlm.config.recipe import ParallelConfig
from tinyvlm.errors import PeerLost
from tinyvlm.train.runtime import Runtime


@dataclass
class DistributedRuntime(Runtime):
    checkpoints: str = "sharded"  # or "gathered": whole tensors from the main process
    frozen: str = "replicate"  # or "shard": teachers and references split (FSDP2)

    @property
    def sharded_checkpoints(self) -> bool:
        return self.checkpoints == "sharded"

    def prepare_frozen(self, module: nn.Module) -> None:
        """With frozen "shard", FSDP2 for inference: each LM block's weights are gathered for
        its forward and freed after it, so a process holds 1/N of them at rest. Every process
        must then run the teacher on every micro-batch, as the objectives do."""
        if self.frozen != "shard":
            return
        from torch.distributed.fsdp import fully_shard

        kw = {"mesh": self._mesh()}
        # The LM's blocks run on every micro-batch of every process; the vision tower only
        # on those with images, so it stays in the root unit, gathered at every forward
        # (its own units would wait for processes whose micro-batch has no image).
        for block in module.language.blocks:  # type: ignore[union-attr]
            fully_shard(block, **kw)
        fully_shard(module, **kw)

    def _mesh(self):  # type: ignore[no-untyped-def]
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(self.device.type, (self.world_size,))

    def wrap(self, module: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        # Unused parameters are normal here (MoE experts no token chose, ViT blocks after the
        # feature layer): DDP must not wait for their gradients.
        return nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                   find_unused_parameters=True)

    def accumulate(self, module: nn.Module, last: bool) -> AbstractContextManager[None]:
        if last or not isinstance(module, nn.parallel.DistributedDataParallel):
            return nullcontext()
        return module.no_sync()

    def all_reduce_sum(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        dist.barrier()

    def mean_metrics(self, sums: dict[str, tuple[float, float]]) -> dict[str, float]:
        # Processes may report different metrics (RDist needs images): gather them all.
        every: list[dict[str, tuple[float, float]]] = [{} for _ in range(self.world_size)]
        dist.all_gather_object(every, sums)
        merged: dict[str, tuple[float, float]] = {}
        for part in every:
            for k, (total, n) in part.items():
                t, c = merged.get(k, (0.0, 0.0))
                merged[k] = (t + total, c + n)
        return super().mean_metrics(merged)

    @property
    def gradient_average(self) -> int:
        return self.world_size


@dataclass
class FSDPRuntime(DistributedRuntime):
    """FSDP2: every transformer block and the rest of the trained module sharded over the
    processes (parameters, gradients, optimizer state), optionally on the CPU. Checkpoints
    gather the full weights and optimizer state (single files, as one process writes them),
    so a run resumes on any number of processes; after a stage the model is rebuilt whole."""

    cpu_offload: bool = False
    param_dtype: str = "fp32"

    def wrap(self, module: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            MixedPrecisionPolicy,
            OffloadPolicy,
            fully_shard,
        )

        precision = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if self.param_dtype == "bf16" else None,
            reduce_dtype=torch.float32)
        kw = {"mesh": self._mesh(), "mp_policy": precision,
              # pinned host memory needs an accelerator (and only speeds up copies to one)
              "offload_policy": CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
              if self.cpu_offload else OffloadPolicy()}
        model = module.model  # type: ignore[attr-defined]
        for block in [*model.language.blocks, *model.vision.blocks]:
            fully_shard(block, **kw)
        fully_shard(module, **kw)
        return module

    def accumulate(self, module: nn.Module, last: bool) -> AbstractContextManager[None]:
        module.set_requires_gradient_sync(last)  # type: ignore[operator]
        return nullcontext()

    def checkpoint_view(self, model: nn.Module, step_module: nn.Module,
                        optimizer: torch.optim.Optimizer
                        ) -> tuple[nn.Module | None, dict, dict]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(step_module, options=options)  # model.* and objective.*
        optim = get_optimizer_state_dict(step_module, optimizer, options=options)
        if not self.is_main:
            return None, {}, {}
        weights = {k.removeprefix("model."): v for k, v in full.items()
                   if k.startswith("model.")}
        objective = {k.removeprefix("objective."): v for k, v in full.items()
                     if k.startswith("objective.")}
        # Stored as a single process stores them: any runtime resumes from them.
        return self._plain(model, weights), indexed_state(optim), objective

    def load_checkpoint(self, model: nn.Module, step_module: nn.Module,
                        tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                        optimizer_state: dict, objective_state: dict,
                        where: object = None) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=False)
        if "language.lm_head.weight" not in tensors and "language.embed.weight" in tensors:
            tensors = {**tensors, "language.lm_head.weight": tensors["language.embed.weight"]}
        set_model_state_dict(step_module, {**{f"model.{k}": v for k, v in tensors.items()},
                                           **{f"objective.{k}": v
                                              for k, v in objective_state.items()}},
                             options=options)
        set_optimizer_state_dict(step_module, optimizer,
                                 named_state(optimizer_state, param_names(step_module, optimizer)),
                                 options=options)

    def gathered_model(self, model: nn.Module) -> nn.Module | None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # onto rank 0
        weights = get_model_state_dict(model, options=options)
        return self._plain(model, weights) if self.is_main else None

    def unwrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        return self._plain(model, weights).to(self.device)

    @staticmethod
    def _plain(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
        """A fresh, unsharded model with `weights` (full tensors)."""
        import copy

        plain = type(model)(copy.deepcopy(model.config), model.tokenizer)  # type: ignore
        plain.load_state_dict({k: v.detach().cpu() for k, v in weights.items()},
                              strict=False)
        return plain


def param_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Each optimizer group's parameters by their names in `module`, in the group's order."""
    names = {id(p): n for n, p in module.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def indexed_state(named: dict) -> dict:
    """A name-keyed optimizer state (torch.distributed.checkpoint's) as torch.optim's own
    state_dict keys it: parameters numbered in group order."""
    index: dict[str, int] = {}
    groups = []
    for group in named["param_groups"]:
        ids = [index.setdefault(n, len(index)) for n in group["params"]]
        groups.append({**group, "params": ids})
    return {"state": {index[n]: v for n, v in named["state"].items()}, "param_groups": groups}


def named_state(indexed: dict, names: list[list[str]]) -> dict:
    """The inverse of indexed_state, given the parameter names of each group."""
    flat = [n for group in names for n in group]
    groups = [{**g, "params": list(n)} for g, n in zip(indexed["param_groups"], names,
                                                        strict=True)]
    return {"state": {flat[int(i)]: v for i, v in indexed["state"].items()},
            "param_groups": groups}


def runtime_from_env(parallel: ParallelConfig | None = None) -> Runtime:
    """The runtime torchrun's environment asks for (RANK, WORLD_SIZE, LOCAL_RANK), or the
    single-process one, configured by the recipe's `parallel` section."""
    parallel = parallel or ParallelConfig()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=parallel.timeout_s))
    common = {"device": device, "rank": rank, "world_size": world,
              "checkpoints": parallel.checkpoints, "frozen": parallel.frozen}
    if parallel.strategy == "fsdp":
        return FSDPRuntime(**common, cpu_offload=parallel.cpu_offload,
                           param_dtype=parallel.param_dtype)
    return DistributedRuntime(**common)


def shutdown(runtime: Runtime, failed: bool = False) -> None:
    """Barrier, then destroy the process group: a bare destroy can abort a peer that is
    still in its last collective. After a failure nothing waits for the others (they may
    be gone): the process exits and torchrun ends the rest."""
    if isinstance(runtime, DistributedRuntime) and dist.is_initialized() and not failed:
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def launched(parallel: ParallelConfig | None = None) -> Iterator[Runtime]:
    """The runtime for one command, torn down cleanly after it; a collective that timed out
    or lost a peer becomes PeerLost (one line) instead of a traceback or a hang."""
    runtime = runtime_from_env(parallel)
    try:
        yield runtime
    except BaseException as e:
        line = collective_failure(e)
        shutdown(runtime, failed=True)
        if line is not None:
            raise PeerLost(line) from e  # the collective's own error stays as the cause
        raise
    shutdown(runtime)


# What gloo and nccl say when a peer is gone or hangs (lower case): a timed-out recv or send,
# "Application timeout caused pair closure" inside DDP's backward, a closed connection.
_LOST = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe",
         "pair closure")


def collective_failure(e: BaseException) -> str | None:
    """One line for a collective that timed out or lost a peer (a worker died or hangs), or
    None for any other error."""
    text = str(e)
    if not isinstance(e, RuntimeError | CheckpointException) or \
            not any(s in text.lower() for s in _LOST):
        return None
    rank = dist.get_rank() if dist.is_initialized() else "?"
    cause = next((ln.strip() for ln in text.splitlines()
                  if any(s in ln.lower() for s in _LOST)), "")
    return (f"rank {rank}: another process died or stopped answering ({cause[:200]}); "
            "this process stops")
