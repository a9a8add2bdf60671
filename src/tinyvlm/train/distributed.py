"""Data parallelism on PyTorch's own stack: under `torchrun` every process trains a replica
wrapped in DistributedDataParallel (gloo on CPUs, nccl on GPUs), reads its share of each
global batch, and the loop's unit counts and losses are all-reduced, so N processes compute
the gradient one process computes for the same global batch. Without torchrun's environment
this is the single-process runtime."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from tinyvlm.train.runtime import Runtime

TIMEOUT = timedelta(minutes=10)  # a dead worker fails its peers' collectives, not hangs them


@dataclass
class DistributedRuntime(Runtime):
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

    @property
    def gradient_average(self) -> int:
        return self.world_size


def runtime_from_env() -> Runtime:
    """The runtime torchrun's environment asks for (RANK, WORLD_SIZE, LOCAL_RANK), or the
    single-process one."""
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
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    return DistributedRuntime(device=device, rank=rank, world_size=world)


def shutdown(runtime: Runtime) -> None:
    """Barrier, then destroy the process group: a bare destroy can abort a peer that is
    still in its last collective."""
    if isinstance(runtime, DistributedRuntime) and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
