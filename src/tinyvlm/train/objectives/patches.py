"""Objectives on ShapesWorld's dense per-patch labels (from {split}_scenes.jsonl): vision
pretraining (patch_labels), projector alignment (patch_words) and M3ViT's multi-task heads
(task_heads). Their heads are sized by ShapesWorld's vocabularies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvlm.config import DataConfig, StageConfig
from tinyvlm.data import shapes
from tinyvlm.data.collate import IGNORE
from tinyvlm.data.images import ImageStore
from tinyvlm.errors import InputError
from tinyvlm.io import read_jsonl
from tinyvlm.models.context import ForwardContext
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.objectives.base import LossOutput, Objective, TrainData, token_cross_entropy
from tinyvlm.train.stage_data import labelled_image_paths


@dataclass
class PatchBatch:
    pixel_values: Tensor
    labels: dict[str, Tensor]  # name -> (images, patches)
    counts: Tensor | None = None  # (images,) objects in each image

    @property
    def num_tokens(self) -> int:
        return int(next(iter(self.labels.values())).numel())

    def to(self, device: torch.device | str) -> PatchBatch:
        return PatchBatch(self.pixel_values.to(device),
                          {k: v.to(device) for k, v in self.labels.items()},
                          None if self.counts is None else self.counts.to(device))


LABEL_KEYS = ("shape", "colour", "size", "word", "row", "col")


class _PatchObjective(Objective):
    """Objectives that read ShapesWorld's dense per-patch labels (from {split}_scenes.jsonl)."""

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> TrainData:
        root = Path(config.path)
        scenes_file = root / f"{Path(stage.train or config.train).stem}_scenes.jsonl"
        if not scenes_file.is_file():
            raise InputError(f"objective '{self.name}' needs ShapesWorld scene annotations, "
                             "missing", scenes_file)
        vcfg = model.config.vision
        keep = labelled_image_paths(config, stage)  # dense labels are labels too
        items = [(root / s["image"], shapes.patch_labels(s, vcfg.image_size, vcfg.patch_size),
                  len(s["objects"])) for s in read_jsonl(scenes_file)
                 if keep is None or str(root / s["image"]) in keep]
        store = ImageStore.for_model(vcfg)

        def collate(batch: Sequence[tuple[Path, dict[str, np.ndarray], int]]) -> PatchBatch:
            pixels = store.pixels([p for p, _, _ in batch])
            assert pixels is not None
            labels = {k: torch.from_numpy(np.stack([lab[k] for _, lab, _ in batch]))
                      for k in LABEL_KEYS}
            return PatchBatch(pixels, labels, torch.tensor([n for _, _, n in batch]))

        return TrainData(items, collate, lambda item: [item[0]], store)


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

        vocab = {"shape": ids(shapes.SHAPES, tail=1), "colour": ids(shapes.COLOURS),
                 "size": ids(shapes.SIZES), "word": ids(shapes.WORDS)}
        self.keys = list(vocab)
        for key, table in vocab.items():  # buffers: they move with the objective's device
            self.register_buffer(f"vocab_{key}", table, persistent=False)

    def forward(self, model: TinyVLM, batch: PatchBatch) -> LossOutput:
        ctx = ForwardContext()
        conditioning, _ = model.encode_images(batch.pixel_values, ctx)
        assert conditioning.tokens is not None, "patch_words needs a connector with visual tokens"
        logits = model.language.lm_head(conditioning.tokens).float().flatten(0, 1)
        total, count, metrics = logits.new_zeros(()), 0, {}
        for key in self.keys:
            target = getattr(self, f"vocab_{key}")[batch.labels[key].flatten()]
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
        ids = torch.arange(b, device=batch.pixel_values.device) % n_tasks
        ctx = ForwardContext()
        logits = self.task_logits(model, batch.pixel_values, ids, ctx)
        total, metrics = batch.pixel_values.new_zeros((), dtype=torch.float32), {}
        for t, lg in logits.items():
            target = self.targets(batch, t, ids == t)
            total = total + F.cross_entropy(lg.flatten(0, -2), target.flatten()) / len(logits)
            right, counted = self.correct(lg, target, self.TASKS[t] == "count")
            metrics[f"{self.TASKS[t]}_acc"] = right / max(counted, 1)
        return LossOutput(total, b, metrics, ctx.records)
