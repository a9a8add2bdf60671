"""Preference distillation (LLaVA-MoD stage 2): a DPO-family loss on chosen/rejected pairs
against a frozen reference (the teacher, or the student as the stage starts), which reads its
own batch of the same pairs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyvlm.config import DataConfig, PreferenceConfig, StageConfig
from tinyvlm.data.collate import Batch, PreferenceBatch, PreferenceCollator
from tinyvlm.data.images import ImageStore
from tinyvlm.data.pairs import load_pairs, record_images
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.losses import PREFERENCE_LOSSES, preference_loss, sequence_logps
from tinyvlm.train.objectives.base import (
    LossOutput,
    Objective,
    TrainData,
    stage_label,
    token_cross_entropy,
)
from tinyvlm.train.teacher import DTYPES, FrozenModel

REFERENCES = ("teacher", "initial")


@dataclass
class PairBatch:
    """The policy's batch of pairs and, when the reference reads them differently, its own."""

    pairs: PreferenceBatch
    reference: Batch | None = None  # None: the reference reads the policy's batch

    @property
    def num_tokens(self) -> int:
        return self.pairs.num_tokens

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.pairs.to(device),
                         None if self.reference is None else self.reference.to(device))


def initial_reference(model: TinyVLM, dtype: str = "fp32") -> FrozenModel:
    """A frozen copy of `model` as it is now: the reference of plain DPO."""
    frozen = TinyVLM(copy.deepcopy(model.config), model.tokenizer)
    frozen.load_state_dict(model.state_dict())
    return FrozenModel(frozen.to(next(model.parameters()).device), dtype)


class Preference(Objective):
    """DPO-family loss on chosen/rejected pairs, the reference frozen (teacher or initial
    student); optionally plus cross-entropy on the chosen answers."""

    name = "preference"

    @classmethod
    def check(cls, stage: StageConfig) -> None:
        cfg = stage.preference or PreferenceConfig()
        checks = [
            (cfg.loss in PREFERENCE_LOSSES,
             f"preference.loss must be one of {list(PREFERENCE_LOSSES)}, got '{cfg.loss}'"),
            (cfg.beta > 0, "preference.beta must be > 0"),
            (0.0 <= cfg.label_smoothing < 0.5, "preference.label_smoothing must lie in [0, 0.5)"),
            (not cfg.label_smoothing or cfg.loss in ("sigmoid", "robust"),
             "preference.label_smoothing applies to the sigmoid and robust losses only"),
            (cfg.reference in REFERENCES,
             f"preference.reference must be one of {list(REFERENCES)}, got '{cfg.reference}'"),
            (cfg.teacher_dtype in DTYPES,
             f"preference.teacher_dtype must be one of {list(DTYPES)}"),
            (cfg.sft_weight >= 0, "preference.sft_weight must be >= 0"),
            (cfg.reference != "teacher" or bool(cfg.teacher),
             "preference.teacher (a model directory) is required with reference 'teacher' "
             "(or set reference: initial)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"{stage_label(stage, 'preference')}: {message}")

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__(model, stage)
        stage = stage or StageConfig(name="preference", objective="preference")
        self.check(stage)
        self.cfg = stage.preference or PreferenceConfig()
        # In a list, so nn.Module does not register the reference: it stays out of
        # parameters(), the optimizer and checkpoints.
        self._reference: list[FrozenModel] = []
        if self.cfg.reference == "teacher":
            teacher = FrozenModel.from_pretrained(self.cfg.teacher, self.cfg.teacher_dtype,
                                                  next(model.parameters()).device)
            teacher.check_compatible(model)
            self._reference.append(teacher)
        else:
            self._reference.append(initial_reference(model, self.cfg.teacher_dtype))
        self._shared = self.reference.same_batches(model)

    @property
    def reference(self) -> FrozenModel:
        return self._reference[0]

    def frozen_models(self) -> list[nn.Module]:
        return [self.reference.model]

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> TrainData:
        assert model.tokenizer is not None
        name = self.cfg.pairs or stage.train
        if not name:
            raise InputError(f"stage '{stage.name}': objective 'preference' needs a pairs file "
                             "(preference.pairs or the stage's train)")
        path = Path(config.path) / name
        items = load_pairs(path)
        if stage.question_types:
            wanted = set(stage.question_types)
            items = [r for r in items if r["meta"].get("type") in wanted]
        if not items:
            raise InputError(f"stage '{stage.name}': no preference pairs", path)
        max_len = config.max_seq_len or model.config.language.max_seq_len
        collate = PreferenceCollator(model.tokenizer, ImageStore.for_model(model.config.vision),
                                     model.image_tokens, max_len)
        reference, shared = self.reference, self._shared

        def collate_pairs(records: Sequence[dict[str, Any]]) -> PairBatch:
            return PairBatch(collate(records),
                             None if shared else reference.preference_batch(records, max_len).batch)

        return TrainData(items, collate_pairs, record_images, collate.images)

    def forward(self, model: TinyVLM, batch: PairBatch) -> LossOutput:
        b, n = batch.pairs.batch, batch.pairs.pairs
        assert b.target_ids is not None
        out = model(b.input_ids, b.attention_mask, b.pixel_values, image_rows=b.image_rows)
        assert out.logits is not None
        policy = sequence_logps(out.logits, b.target_ids)
        ref_batch = batch.reference if batch.reference is not None else b
        ref_logits = self.reference(ref_batch).logits  # no_grad inside the frozen wrapper
        assert ref_logits is not None and ref_batch.target_ids is not None
        reference = sequence_logps(ref_logits, ref_batch.target_ids.to(ref_logits.device))
        reference = reference.detach().to(policy.device)
        cfg = self.cfg
        lengths = ({"chosen_lengths": batch.pairs.chosen_lengths,
                    "rejected_lengths": batch.pairs.rejected_lengths} if cfg.loss == "ipo" else {})
        pref = preference_loss(policy[:n], policy[n:], reference[:n], reference[n:],
                               cfg.loss, cfg.beta, cfg.label_smoothing, **lengths)
        loss = pref.loss
        metrics = {"preference": float(pref.loss.detach()), **pref.metrics(),
                   "logps_chosen": float(policy[:n].detach().mean()),
                   "logps_rejected": float(policy[n:].detach().mean())}
        if cfg.sft_weight:
            ce, _ = token_cross_entropy(out.logits[:n], b.target_ids[:n])
            loss = loss + cfg.sft_weight * ce
            metrics["ce"] = float(ce.detach())
        # Only the student's records: the loop adds its MoE auxiliary losses once.
        return LossOutput(loss, n, metrics, out.records)
