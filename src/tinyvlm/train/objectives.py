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

from tinyvlm.config import DataConfig, StageConfig
from tinyvlm.data import shapes
from tinyvlm.data.collate import IGNORE, Batch, SFTCollator
from tinyvlm.data.formats import ImageStore, keep_turns, load_llava
from tinyvlm.errors import InputError, closest
from tinyvlm.io import read_jsonl
from tinyvlm.models.layers import ForwardContext
from tinyvlm.models.vlm import TinyVLM


@dataclass
class LossOutput:
    loss: Tensor  # mean over `weight` units (tokens, patches, pairs)
    weight: float  # how many units: gradient accumulation weights micro-batches by it
    metrics: dict[str, float] = field(default_factory=dict)
    # The forward pass's layer records (MoE routers): the loop adds their auxiliary losses
    # once, so no objective can forget them or count them twice.
    records: list[Any] = field(default_factory=list)


@dataclass
class DataSource:
    items: Sequence[Any]
    collate: Callable[[Sequence[Any]], Any]


class Objective(nn.Module):
    name: ClassVar[str]

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__()

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> DataSource:
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

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> DataSource:
        assert model.tokenizer is not None
        path = Path(config.path) / (stage.train or config.train)
        items = load_llava(path)
        if stage.question_types:
            wanted = set(stage.question_types)
            items = [c for c in (keep_turns(c, wanted) for c in items) if c is not None]
            if not items:
                raise InputError(f"stage '{stage.name}': no turn of types "
                                 f"{sorted(wanted)}", path)
        max_len = config.max_seq_len or model.config.language.max_seq_len
        collate = SFTCollator(model.tokenizer, ImageStore(model.config.vision.image_size),
                              model.image_tokens, max_len)
        return DataSource(items, collate)

    def forward(self, model: TinyVLM, batch: Batch) -> LossOutput:
        out = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
        assert batch.target_ids is not None
        loss, n = token_cross_entropy(out.logits, batch.target_ids)
        return LossOutput(loss, n, {"ce": float(loss.detach())}, out.records)


@dataclass
class PatchBatch:
    pixel_values: Tensor
    labels: dict[str, Tensor]  # name -> (images, patches)
    counts: Tensor | None = None  # (images,) objects in each image

    @property
    def num_tokens(self) -> int:
        return int(next(iter(self.labels.values())).numel())


LABEL_KEYS = ("shape", "colour", "size", "word", "row", "col")


class _PatchObjective(Objective):
    """Objectives that read ShapesWorld's dense per-patch labels (from {split}_scenes.jsonl)."""

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> DataSource:
        root = Path(config.path)
        scenes_file = root / f"{Path(stage.train or config.train).stem}_scenes.jsonl"
        if not scenes_file.is_file():
            raise InputError(f"objective '{self.name}' needs ShapesWorld scene annotations, "
                             "missing", scenes_file)
        vcfg = model.config.vision
        items = [(root / s["image"], shapes.patch_labels(s, vcfg.image_size, vcfg.patch_size),
                  len(s["objects"])) for s in read_jsonl(scenes_file)]
        store = ImageStore(vcfg.image_size)

        def collate(batch: Sequence[tuple[Path, dict[str, np.ndarray], int]]) -> PatchBatch:
            pixels = store.pixels([p for p, _, _ in batch])
            assert pixels is not None
            labels = {k: torch.from_numpy(np.stack([lab[k] for _, lab, _ in batch]))
                      for k in LABEL_KEYS}
            return PatchBatch(pixels, labels, torch.tensor([n for _, _, n in batch]))

        return DataSource(items, collate)


class PatchLabels(_PatchObjective):
    """Vision pretraining on the dense labels ShapesWorld gives for free: for every patch,
    the shape, colour and size of the object on it, the word it shows, and its own grid
    position (so position stays decodable for relation questions). It plays the role that
    contrastive pretraining plays for real encoders."""

    name = "patch_labels"

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__(model, stage)
        grid = model.config.vision.grid
        classes = {
            "shape": len(shapes.SHAPES) + 2, "colour": len(shapes.COLOURS) + 1,
            "size": len(shapes.SIZES) + 1, "word": len(shapes.WORDS) + 1,
            "row": grid, "col": grid,
        }
        dim = model.config.vision.dim
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in classes.items()})

    def forward(self, model: TinyVLM, batch: PatchBatch) -> LossOutput:
        ctx = ForwardContext()
        patches = model.vision(batch.pixel_values, ctx).patches
        metrics, total = {}, patches.new_zeros((), dtype=torch.float32)
        for key, head in self.heads.items():
            logits = head(patches).float()
            target = batch.labels[key]
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
            total = total + loss
            metrics[f"{key}_acc"] = float((logits.argmax(-1) == target).float().mean())
        return LossOutput(total, batch.num_tokens, metrics, ctx.records)


class PatchWords(_PatchObjective):
    """Projector alignment (LLaVA's first stage, with ShapesWorld's dense labels in place of
    captions): every visual token, read through the language model's output head, must name
    its patch: the colour, shape and size words of the object on it, or the word written there.
    Visual tokens then sit where those words sit in the embedding space, so a question can
    find the patch it asks about by matching words."""

    name = "patch_words"

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__(model, stage)
        assert model.tokenizer is not None
        tok = model.tokenizer

        def ids(words: Sequence[str], tail: int = 0) -> Tensor:
            # Label 0 (nothing there) and any trailing label (the word, for "shape") get no
            # target; a multi-token word is named by its first token.
            return torch.tensor([IGNORE, *(tok.encode(w)[0] for w in words), *[IGNORE] * tail])

        self.vocab = {"shape": ids(shapes.SHAPES, tail=1), "colour": ids(shapes.COLOURS),
                      "size": ids(shapes.SIZES), "word": ids(shapes.WORDS)}

    def forward(self, model: TinyVLM, batch: PatchBatch) -> LossOutput:
        ctx = ForwardContext()
        features, _ = model.encode_images(batch.pixel_values, ctx)
        logits = model.language.lm_head(features).float().flatten(0, 1)
        total, count, metrics = logits.new_zeros(()), 0, {}
        for key, vocab in self.vocab.items():
            target = vocab[batch.labels[key].flatten()]
            loss, n = token_cross_entropy(logits, target)
            total, count = total + loss * n, count + n
            mask = target != IGNORE
            metrics[f"{key}_acc"] = float((logits[mask].argmax(-1) == target[mask]).float()
                                          .mean()) if n else 0.0
        return LossOutput(total / max(count, 1), count, metrics, ctx.records)


class TaskHeads(_PatchObjective):
    """Multi-task vision training (M3ViT): each image of a batch gets one task, the encoder
    routes its task-conditioned MoE layers by that task, and the task's head reads the result.

    Tasks, in task-id order: count (objects in the image, from [CLS]), then per patch the
    shape, colour and word of what lies on it. Accuracy of patch tasks counts only the patches
    that show something, so empty background cannot inflate it.
    """

    name = "task_heads"
    TASKS = ("count", "shape", "colour", "word")
    MAX_COUNT = 16

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__(model, stage)
        moe = model.config.vision.moe
        if moe is not None and moe.task_routing != "none" and moe.num_tasks not in (
                1, len(self.TASKS)):
            raise InputError(f"objective task_heads has {len(self.TASKS)} tasks but "
                             f"vision.moe.num_tasks is {moe.num_tasks}")
        classes = {"count": self.MAX_COUNT + 1, "shape": len(shapes.SHAPES) + 2,
                   "colour": len(shapes.COLOURS) + 1, "word": len(shapes.WORDS) + 1}
        dim = model.config.vision.dim
        self.heads = nn.ModuleDict({t: nn.Linear(dim, classes[t]) for t in self.TASKS})

    def task_logits(self, model: TinyVLM, pixel_values: Tensor, tasks: Tensor,
                    ctx: ForwardContext, routed: bool = True) -> dict[int, Tensor]:
        """Task id -> logits of that task's head for the images given that task (tasks: (B,)).

        routed=False runs the encoder without task ids (a pruned single-task model)."""
        ctx.task_ids = tasks if routed else None
        out = model.vision(pixel_values, ctx)

        def head(t: int) -> Tensor:
            name, sel = self.TASKS[t], tasks == t
            feats = out.cls[sel] if name == "count" else out.patches[sel]
            return self.heads[name](feats).float()

        return {t: head(t) for t in tasks.unique().tolist()}

    def targets(self, batch: PatchBatch, task: int, sel: slice | Tensor = slice(None)) -> Tensor:
        name = self.TASKS[task]
        if name == "count":
            assert batch.counts is not None
            return batch.counts[sel].clamp(max=self.MAX_COUNT)
        return batch.labels[name][sel]

    @staticmethod
    def correct(logits: Tensor, target: Tensor, image_level: bool) -> tuple[int, int]:
        """(right, counted): patch tasks count only patches that show something."""
        hit = logits.argmax(-1) == target
        if image_level:
            return int(hit.sum()), hit.numel()
        shown = target != 0
        return int((hit & shown).sum()), int(shown.sum())

    def forward(self, model: TinyVLM, batch: PatchBatch) -> LossOutput:
        b, n_tasks = batch.pixel_values.shape[0], len(self.TASKS)
        # Batches are fresh permutations, so each image meets every task over the epochs.
        ids = torch.arange(b) % n_tasks
        ctx = ForwardContext()
        logits = self.task_logits(model, batch.pixel_values, ids, ctx)
        total, metrics = batch.pixel_values.new_zeros((), dtype=torch.float32), {}
        for t, lg in logits.items():
            target = self.targets(batch, t, ids == t)
            total = total + F.cross_entropy(lg.flatten(0, -2), target.flatten()) / len(logits)
            right, counted = self.correct(lg, target, self.TASKS[t] == "count")
            metrics[f"{self.TASKS[t]}_acc"] = right / max(counted, 1)
        return LossOutput(total, b, metrics, ctx.records)


OBJECTIVES: dict[str, type[Objective]] = {
    "sft": SFT, "patch_labels": PatchLabels, "patch_words": PatchWords,
    "task_heads": TaskHeads,
}


def build_objective(name: str, model: TinyVLM, stage: StageConfig | None = None) -> Objective:
    # Imported for their side effect: they register the distillation objectives.
    import tinyvlm.train.distill
    import tinyvlm.train.preference  # noqa: F401

    if name not in OBJECTIVES:
        raise InputError(f"unknown objective '{name}'{closest(name, OBJECTIVES)}; "
                         f"known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](model, stage)
