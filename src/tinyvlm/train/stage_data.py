"""A stage's conversations and the collator that batches them for a model."""

from __future__ import annotations

from pathlib import Path

from tinyvlm.config import DataConfig, StageConfig
from tinyvlm.data.collate import SFTCollator
from tinyvlm.data.conversation import Conversation, filter_types
from tinyvlm.data.images import ImageStore
from tinyvlm.data.labelled import image_key, labelled_images, split_labelled
from tinyvlm.data.llava import load_llava
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM


def stage_conversations(config: DataConfig, stage: StageConfig) -> tuple[Path, list[Conversation]]:
    """The stage's training file and its conversations: those of the labelled images (unless
    the stage reads `images: all`), filtered to its question types."""
    path, labelled, _ = stage_split(config, stage)
    return path, labelled


def unlabelled_conversations(config: DataConfig, stage: StageConfig) -> list[Conversation]:
    """The questions, without answers, about the images outside the labelled share."""
    return stage_split(config, stage)[2]


def labelled_image_paths(config: DataConfig, stage: StageConfig) -> set[str] | None:
    """The paths of the stage's labelled training images; None when it reads them all."""
    split = _image_split(config, stage)
    return None if split is None else split[0]


def unlabelled_image_paths(config: DataConfig, stage: StageConfig) -> set[str]:
    """The paths of the training images outside the stage's labelled share (empty when it
    reads them all): their answers must not reach the stage, from any file."""
    split = _image_split(config, stage)
    return set() if split is None else split[1]


def _image_split(config: DataConfig, stage: StageConfig) -> tuple[set[str], set[str]] | None:
    """(labelled, unlabelled) image paths of the stage's training file, read once."""
    if stage.images == "all" or config.labelled_fraction >= 1:
        return None
    convs = load_llava(Path(config.path) / (stage.train or config.train))
    keep = labelled_images(convs, config.labelled_fraction, config.labelled_seed)
    return keep, {image_key(c) for c in convs} - keep


def stage_split(config: DataConfig, stage: StageConfig
                ) -> tuple[Path, list[Conversation], list[Conversation]]:
    path = Path(config.path) / (stage.train or config.train)
    items = load_llava(path)
    unlabelled: list[Conversation] = []
    if stage.images == "labelled" and config.labelled_fraction < 1:
        items, unlabelled = split_labelled(items, config.labelled_fraction, config.labelled_seed)
    items = filter_types(items, stage.question_types)
    if stage.question_types and not items:
        raise InputError(f"stage '{stage.name}': no turn of types "
                         f"{sorted(stage.question_types)}", path)
    return path, items, filter_types(unlabelled, stage.question_types)


def sft_collator(model: TinyVLM, config: DataConfig) -> SFTCollator:
    """Whole conversations at the model's resolution, up to data.max_seq_len (default: the
    model's)."""
    assert model.tokenizer is not None
    max_len = config.max_seq_len or model.config.language.max_seq_len
    return SFTCollator(model.tokenizer, ImageStore.for_model(model.config.vision),
                       model.image_tokens, max_len)
