"""Objectives turn a batch into a loss. Each stage of a recipe names one.

An objective is a module: it may own parameters (a probe head) that train beside the model
and are saved in its checkpoints. It also says which data it reads, so the one training loop
serves every stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvlm.config import DataConfig
from tinyvlm.data import shapes
from tinyvlm.data.collate import IGNORE, Batch, SFTCollator
from tinyvlm.data.formats import ImageStore, load_llava
from tinyvlm.errors import InputError, closest
from tinyvlm.io import read_jsonl
from tinyvlm.models.vlm import TinyVLM


@dataclass
class LossOutput:
    loss: Tensor  # mean over `weight` units (tokens, patches, pairs)
    weight: float  # how many units: gradient accumulation weights micro-batches by it
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class DataSource:
    items: Sequence[Any]
    collate: Callable[[Sequence[Any]], Any]


class Objective(nn.Module):
    name: ClassVar[str]

    def __init__(self, model: TinyVLM):
        super().__init__()

    def data(self, model: TinyVLM, config: DataConfig) -> DataSource:
        raise NotImplementedError

    def forward(self, model: TinyVLM, batch: Any) -> LossOutput:
        raise NotImplementedError


def token_cross_entropy(logits: Tensor, target_ids: Tensor) -> tuple[Tensor, int]:
    """Mean cross-entropy over positions with a target (targets are already shifted)."""
    mask = target_ids != IGNORE
    n = int(mask.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits[mask].float(), target_ids[mask]), n


class SFT(Objective):
    """Next-token cross-entropy on the assistant's answers."""

    name = "sft"

    def data(self, model: TinyVLM, config: DataConfig) -> DataSource:
        assert model.tokenizer is not None
        items = load_llava(Path(config.path) / config.train)
        max_len = config.max_seq_len or model.config.language.max_seq_len
        collate = SFTCollator(model.tokenizer, ImageStore(model.config.vision.image_size),
                              model.image_tokens, max_len)
        return DataSource(items, collate)

    def forward(self, model: TinyVLM, batch: Batch) -> LossOutput:
        out = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
        assert batch.target_ids is not None
        loss, n = token_cross_entropy(out.logits, batch.target_ids)
        return LossOutput(loss, n, {"ce": float(loss.detach())})


@dataclass
class PatchBatch:
    pixel_values: Tensor
    labels: dict[str, Tensor]  # name -> (images, patches)

    @property
    def num_tokens(self) -> int:
        return int(next(iter(self.labels.values())).numel())


class PatchLabels(Objective):
    """Vision pretraining on the dense labels ShapesWorld gives for free: for every patch,
    the shape, colour and size of the object on it, the word it shows, and its own grid
    position (so position stays decodable for relation questions). It plays the role that
    contrastive pretraining plays for real encoders."""

    name = "patch_labels"

    def __init__(self, model: TinyVLM):
        super().__init__(model)
        grid = model.config.vision.grid
        self.classes = {
            "shape": len(shapes.SHAPES) + 2, "colour": len(shapes.COLOURS) + 1,
            "size": len(shapes.SIZES) + 1, "word": len(shapes.WORDS) + 1,
            "row": grid, "col": grid,
        }
        dim = model.config.vision.dim
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in self.classes.items()})

    def data(self, model: TinyVLM, config: DataConfig) -> DataSource:
        root = Path(config.path)
        split = Path(config.train).stem
        scenes_file = root / f"{split}_scenes.jsonl"
        if not scenes_file.is_file():
            raise InputError("patch_labels needs ShapesWorld scene annotations, missing",
                             scenes_file)
        vcfg = model.config.vision
        items = [(root / s["image"], shapes.patch_labels(s, vcfg.image_size, vcfg.patch_size))
                 for s in read_jsonl(scenes_file)]
        store = ImageStore(vcfg.image_size)

        def collate(batch: Sequence[tuple[Path, dict[str, np.ndarray]]]) -> PatchBatch:
            pixels = store.pixels([p for p, _ in batch])
            assert pixels is not None
            labels = {k: torch.from_numpy(np.stack([lab[k] for _, lab in batch]))
                      for k in self.classes}
            return PatchBatch(pixels, labels)

        return DataSource(items, collate)

    def forward(self, model: TinyVLM, batch: PatchBatch) -> LossOutput:
        patches = model.vision(batch.pixel_values).patches
        metrics, total = {}, patches.new_zeros((), dtype=torch.float32)
        for key, head in self.heads.items():
            logits = head(patches).float()
            target = batch.labels[key]
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
            total = total + loss
            metrics[f"{key}_acc"] = float((logits.argmax(-1) == target).float().mean())
        return LossOutput(total, batch.num_tokens, metrics)


OBJECTIVES: dict[str, type[Objective]] = {"sft": SFT, "patch_labels": PatchLabels}


def build_objective(name: str, model: TinyVLM) -> Objective:
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective '{name}'{closest(name, OBJECTIVES)}; "
                         f"known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](model)
