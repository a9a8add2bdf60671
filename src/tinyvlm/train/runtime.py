"""Where and how training runs: the device, autocast precision, the process's rank among
`world_size` processes, and the wrapper a parallel runtime puts around the model.

One process on the CPU is the runtime exercised here; the loop reads everything device- or
rank-dependent from this object, so a distributed runtime changes this file, not the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")
PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls in hardware: a CUDA GPU that supports it, or a
    CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated (on an AVX2-only CPU a bf16
    linear layer's forward and backward ran 12x slower than fp32's)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 where the device runs it natively, else fp32; the others are kept."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@dataclass
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process logs and writes files."""
        return self.rank == 0

    def autocast(self, precision: str) -> AbstractContextManager[None]:
        """bf16 autocast on this runtime's device type, or nothing for fp32 (`auto`: bf16
        where the device has it natively)."""
        bf16 = resolve_precision(precision, self.device) == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module the loop steps (a data-parallel wrapper on several processes)."""
        return module

    def accumulate(self, module: nn.Module, last: bool) -> AbstractContextManager[None]:
        """Around a micro-batch's forward and backward: gradients are synchronised across
        processes only on the last micro-batch of a step."""
        return nullcontext()

    def all_reduce_sum(self, value: float) -> float:
        """The sum of `value` over every process."""
        return value

    def barrier(self) -> None:
        """Every process waits here for the others (one process: nothing to wait for)."""

    def mean_metrics(self, sums: dict[str, tuple[float, float]]) -> dict[str, float]:
        """Means of the (weighted sum, weight) of each metric, over every process."""
        return {k: total / n for k, (total, n) in sums.items() if n}

    def checkpoint_view(self, model: nn.Module, step_module: nn.Module,
                        optimizer: torch.optim.Optimizer
                        ) -> tuple[nn.Module | None, dict, dict]:
        """(the model as a checkpoint stores it, the optimizer's state, the objective's):
        the live ones here; a sharding runtime gathers them (a collective: every process
        calls it) and returns None for the model on the other processes."""
        objective = getattr(step_module, "module", step_module).objective  # DDP: .module
        return model, optimizer.state_dict(), objective.state_dict()

    def load_checkpoint(self, model: nn.Module, step_module: nn.Module,
                        tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                        optimizer_state: dict, objective_state: dict,
                        where: object = None) -> None:
        """Weights, objective and optimizer state of a checkpoint into the trained module."""
        model.load_tensors(tensors, where)  # type: ignore[operator]
        getattr(step_module, "module", step_module).objective.load_state_dict(objective_state)
        optimizer.load_state_dict(optimizer_state)

    @property
    def sharded_checkpoints(self) -> bool:
        """Whether every process writes its shards of a checkpoint (torch.distributed.
        checkpoint) instead of the main process writing whole tensors."""
        return False

    def gathered_model(self, model: nn.Module) -> nn.Module | None:
        """The whole model on the main process (a collective under sharding; None on the
        other processes there)."""
        return model

    def prepare_frozen(self, module: nn.Module) -> None:
        """Place a frozen model (a teacher, a reference) for inference: as it is here; a
        distributed runtime may shard it."""

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The model as a plain module again after a stage (a sharding runtime rebuilds it
        from the gathered weights)."""
        return model

    @property
    def gradient_average(self) -> int:
        """What the data-parallel wrapper divides summed gradients by (the world size for
        DDP's averaging); the loop multiplies it back to keep unit-weighted sums exact."""
        return 1

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This process's share of a global batch."""
        return items[self.rank :: self.world_size]

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The random state a checkpoint keeps: the CPU generator's, and the device's."""
        state = {"rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["rng"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
