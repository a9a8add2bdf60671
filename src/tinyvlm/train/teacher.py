"""Frozen models: a distillation teacher, a preference reference, a pair ranker.

A frozen model is in eval mode, has no gradients and is never part of an optimizer (it is a
plain object, not a submodule of the objective), optionally bf16. It builds its own batches
from the conversations (or pair records) the student trains on, with its own tokenizer
layout, image resolution and tokens per image, so a teacher need not see the student's
inputs; distillation then aligns the two on the response tokens. When the teacher would
build exactly the student's batch it reuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from tinyvlm.data.collate import (
    Batch,
    PreferenceBatch,
    PreferenceCollator,
    SFTCollator,
    answer_batch,
)
from tinyvlm.data.conversation import Conversation, Turn, standalone
from tinyvlm.data.images import ImageStore
from tinyvlm.errors import InputError
from tinyvlm.infer import Engine, Sampling
from tinyvlm.io import read_json
from tinyvlm.models.hf import is_hf_directory
from tinyvlm.models.load import load_model
from tinyvlm.models.vlm import TinyVLM, VLMOutput

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Teacher(Protocol):
    """What distillation needs of a teacher: its own batches of the student's conversations,
    its outputs for them (logits over the student's vocabulary, hidden states for RDist),
    and a check that it fits the student."""

    vocab_size: int
    image_token_id: int
    image_tokens: int  # tokens per image in its own batches

    def same_batches(self, student: TinyVLM) -> bool: ...

    def collate(self, conversations: Sequence[Conversation]) -> Batch: ...

    def __call__(self, batch: Batch) -> VLMOutput: ...

    def check_compatible(self, student: TinyVLM) -> None: ...


class FrozenModel:
    """A tinyvlm model used as a teacher, a reference or a ranker."""

    def __init__(self, model: TinyVLM, dtype: str = "fp32", where: str | Path | None = None):
        if dtype not in DTYPES:
            raise InputError(f"teacher dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if model.tokenizer is None:
            raise InputError("a frozen model needs its tokenizer", where)
        self.model = model.eval().requires_grad_(False).to(DTYPES[dtype])
        self.tokenizer = model.tokenizer
        self.vocab_size = model.config.language.vocab_size
        self.image_token_id = model.config.image_token_id
        self.image_tokens = model.image_tokens
        self.where = where
        self.images = ImageStore.for_model(model.config.vision)

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: str = "fp32",
                        device: torch.device | str = "cpu") -> FrozenModel:
        return cls(load_model(directory).to(device), dtype, directory)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- compatibility

    def check_compatible(self, student: TinyVLM) -> None:
        """The same vocabulary (token for token), or one clear error: distributions over
        different vocabularies cannot be compared position by position."""
        t, s = self.model, student
        if t.config.language.vocab_size != s.config.language.vocab_size:
            problem = (f"vocabulary {t.config.language.vocab_size} vs "
                       f"{s.config.language.vocab_size}")
        elif s.tokenizer is not None and self.tokenizer.backend.get_vocab() != \
                s.tokenizer.backend.get_vocab():
            problem = "same vocabulary size but different tokens"
        else:
            return
        raise InputError(f"teacher and student do not match: {problem}", self.where)

    def same_batches(self, student: TinyVLM) -> bool:
        """Whether this model would build exactly the student's batches (same tokens, special
        ids, image size and tokens per image), so the student's can be reused."""
        t, s = self.model, student
        return (s.tokenizer is not None
                and t.image_tokens == s.image_tokens
                and t.config.vision.image_size == s.config.vision.image_size
                and all(getattr(t.config, k) == getattr(s.config, k)
                        for k in ("pad_token_id", "bos_token_id", "image_token_id",
                                  "eos_token_id"))
                and self.tokenizer.backend.get_vocab() == s.tokenizer.backend.get_vocab())

    # ---------------------------------------------------------------- its own batches

    def collate(self, conversations: Sequence[Conversation]) -> Batch:
        """Whole conversations as this model reads them; every turn the student kept must fit
        (dropping one here would put the answers out of step with the student's)."""
        limit = self.model.config.language.max_seq_len
        collate = SFTCollator(self.tokenizer, self.images, self.model.image_tokens, limit)
        for conv in conversations:
            if len(collate.encode(conv)[2].turns) != len(conv.turns):
                raise InputError(f"the teacher's max_seq_len {limit} cannot hold a "
                                 "conversation the student holds", conv.source or self.where)
        return collate(conversations)

    def preference_batch(self, records: Sequence[dict[str, Any]], max_len: int
                         ) -> PreferenceBatch:
        collate = PreferenceCollator(self.tokenizer, self.images, self.model.image_tokens,
                                     max_len)
        return collate(records)

    def answer_batch(self, items: Sequence[tuple[Sequence[Turn], Sequence[Any]]]) -> Batch:
        """Conversations (turns, images) with targets on their last answers only."""
        return answer_batch(self.tokenizer, self.images, self.model.image_tokens, items)

    # ---------------------------------------------------------------- outputs

    @torch.no_grad()
    def __call__(self, batch: Batch) -> VLMOutput:
        batch = batch.to(self.device)
        pixels = batch.pixel_values
        dtype = next(self.model.parameters()).dtype
        if pixels is not None:
            pixels = pixels.to(dtype)
        # The teacher's own dtype decides its precision, not the student's autocast.
        with torch.autocast(batch.input_ids.device.type, enabled=False):
            out = self.model(batch.input_ids, batch.attention_mask, pixels,
                             image_rows=batch.image_rows)
        assert out.logits is not None
        out.logits = out.logits.float()
        return out


FrozenTeacher = FrozenModel  # the earlier name

BACKENDS = ("auto", "tinyvlm", "transformers")


def load_teacher(directory: str | Path, dtype: str = "fp32",
                 device: torch.device | str = "cpu", backend: str = "auto") -> Teacher:
    """A distillation teacher: a tinyvlm model (its own directories and LLaVA ones, imported
    exactly) or, with backend "transformers" or for any other HF model, the checkpoint run by
    transformers with its own processor and chat template."""
    if backend not in BACKENDS:
        raise InputError(f"teacher_backend must be one of {', '.join(BACKENDS)}, got "
                         f"{backend!r}")
    if backend == "auto" and is_hf_directory(directory):
        backend = ("tinyvlm" if read_json(Path(directory) / "config.json").get("model_type")
                   == "llava" else "transformers")
    if backend == "transformers":
        from tinyvlm.hf_adapter import TransformersVLM

        return TransformersVLM(directory, dtype, device)
    return FrozenModel.from_pretrained(directory, dtype, device)


def answer_questions(model: TinyVLM, convs: Sequence[Conversation], max_new_tokens: int = 8,
                     batch_size: int = 256, progress: bool = False) -> list[Conversation]:
    """The conversations with every answer replaced by `model`'s greedy answer to its
    question asked on its own (with the image), the way the benchmarks ask; meta kept."""
    engine = Engine(model, batch_size)
    index = [(i, k) for i, c in enumerate(convs) for k in range(len(c.turns))]
    prompts = [engine.encode([], standalone(convs[i].turns[:k], convs[i].turns[k][0]),
                             convs[i].images) for i, k in index]
    answers = engine.generate(prompts, Sampling(max_new_tokens=max_new_tokens),
                              progress=progress)
    turns: list[list[Turn]] = [list(c.turns) for c in convs]
    for (i, k), answer in zip(index, answers, strict=True):
        turns[i][k] = (turns[i][k][0], answer.strip())
    return [Conversation(c.id, c.images, t, c.meta, c.source, c.system)
            for c, t in zip(convs, turns, strict=True)]
