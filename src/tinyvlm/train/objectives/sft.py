"""Supervised fine-tuning: next-token cross-entropy on the assistant's answers."""

from __future__ import annotations

from tinyvlm.config import DataConfig, StageConfig
from tinyvlm.data.collate import Batch
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.objectives.base import LossOutput, Objective, TrainData, token_cross_entropy
from tinyvlm.train.stage_data import sft_collator, stage_conversations


class SFT(Objective):
    """Next-token cross-entropy on the assistant's answers."""

    name = "sft"

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> TrainData:
        _, items = stage_conversations(config, stage)
        collate = sft_collator(model, config)
        return TrainData(items, collate, lambda conv: conv.images, collate.images)

    def forward(self, model: TinyVLM, batch: Batch) -> LossOutput:
        out = model(batch.input_ids, batch.attention_mask, batch.pixel_values,
                    image_rows=batch.image_rows)
        assert batch.target_ids is not None
        loss, n = token_cross_entropy(out.logits, batch.target_ids)
        return LossOutput(loss, n, {"ce": float(loss.detach())}, out.records)
