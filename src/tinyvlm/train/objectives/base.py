"""What every objective is: a module that turns a batch into a loss and says which data it
reads, so the one training loop serves every stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from tinyvlm.config import DataConfig, StageConfig
from tinyvlm.data.collate import IGNORE
from tinyvlm.data.images import ImageStore
from tinyvlm.models.vlm import TinyVLM


@dataclass
class LossOutput:
    loss: Tensor  # mean over `units` (tokens, patches, pairs)
    units: float  # how many units: gradient accumulation weights micro-batches by it
    metrics: dict[str, float] = field(default_factory=dict)
    # The forward pass's layer records (MoE routers): the loop adds their auxiliary losses
    # once, so no objective can forget them or count them twice.
    records: list[Any] = field(default_factory=list)


@dataclass
class TrainData:
    """A stage's items and how a list of them becomes a batch; which images an item reads
    and the store that decodes them, so every image can be checked before the first step."""

    items: Sequence[Any]
    collate: Callable[[Sequence[Any]], Any]
    images_of: Callable[[Any], Sequence[Any]] | None = None
    store: ImageStore | None = None


DataSource = TrainData  # the earlier name


class Objective(nn.Module):
    """A batch in, a loss out. It may own parameters (a probe head) that train beside the
    model and are saved in its checkpoints. Its settings, if any, are the stage section named
    after it (`mimic:` for the mimic objective); `check` judges them before anything runs."""

    name: ClassVar[str]

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__()

    @classmethod
    def check(cls, stage: StageConfig) -> None:
        """One InputError for settings out of range; run before the first stage trains."""

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> TrainData:
        raise NotImplementedError

    def forward(self, model: TinyVLM, batch: Any) -> LossOutput:
        raise NotImplementedError

    def frozen_models(self) -> list[nn.Module]:
        """The frozen models it runs on every batch (a teacher, a reference): a distributed
        runtime may shard them (`parallel.frozen`)."""
        return []


def token_cross_entropy(logits: Tensor, target_ids: Tensor) -> tuple[Tensor, int]:
    """Mean cross-entropy over positions with a target (targets are already shifted)."""
    mask = target_ids != IGNORE
    n = int(mask.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits[mask].float(), target_ids[mask]), n


def stage_label(stage: StageConfig | None, default: str) -> str:
    """How errors name a stage."""
    return f"stage '{stage.name}'" if stage is not None else default
