"""A stage's conversations and the collator that batches them for a model."""

from __future__ import annotations

from pathlib import Path

from tinyvlm.config import DataConfig, StageConfig
from tinyvlm.data.collate import SFTCollator
from tinyvlm.data.conversation import Conversation, filter_types
from tinyvlm.data.images import ImageStore
from tinyvlm.data.llava import load_llava
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM


def stage_conversations(config: DataConfig, stage: StageConfig) -> tuple[Path, list[Conversation]]:
    """The stage's training file and its conversations, filtered to its question types."""
    path = Path(config.path) / (stage.train or config.train)
    items = filter_types(load_llava(path), stage.question_types)
    if stage.question_types and not items:
        raise InputError(f"stage '{stage.name}': no turn of types "
                         f"{sorted(stage.question_types)}", path)
    return path, items


def sft_collator(model: TinyVLM, config: DataConfig) -> SFTCollator:
    """Whole conversations at the model's resolution, up to data.max_seq_len (default: the
    model's)."""
    assert model.tokenizer is not None
    max_len = config.max_seq_len or model.config.language.max_seq_len
    return SFTCollator(model.tokenizer, ImageStore.for_model(model.config.vision),
                       model.image_tokens, max_len)
