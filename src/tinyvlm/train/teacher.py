"""Teachers for distillation: anything that returns next-token logits over the student's
vocabulary for a student batch. The teacher is frozen: eval mode, no gradients, never part of
an optimizer (it is a plain object, not a submodule of the objective), optionally bf16."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from tinyvlm.data.collate import Batch
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM, VLMOutput

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Teacher(Protocol):
    """What distillation needs of a teacher: outputs (logits over the student's vocabulary,
    hidden states for RDist) for a student batch, and a check that it fits the student."""

    vocab_size: int

    def __call__(self, batch: Batch) -> VLMOutput: ...

    def check_compatible(self, student: TinyVLM) -> None: ...


class FrozenTeacher:
    """A tinyvlm model used as a teacher: its outputs for the student's own batches."""

    def __init__(self, model: TinyVLM, dtype: str = "fp32", source: str | Path | None = None):
        if dtype not in DTYPES:
            raise InputError(f"teacher dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model = model.eval().requires_grad_(False).to(DTYPES[dtype])
        self.vocab_size = model.config.language.vocab_size
        self.source = source

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: str = "fp32") -> FrozenTeacher:
        return cls(TinyVLM.from_pretrained(directory), dtype, directory)

    def check_compatible(self, student: TinyVLM) -> None:
        """Same vocabulary, special tokens and image-token layout, or one clear error: a
        mismatch would silently compare distributions over different tokens or positions."""
        t, s = self.model, student
        problems = []
        if t.config.language.vocab_size != s.config.language.vocab_size:
            problems.append(f"vocabulary {t.config.language.vocab_size} vs "
                            f"{s.config.language.vocab_size}")
        elif (t.tokenizer is not None and s.tokenizer is not None
              and t.tokenizer.backend.get_vocab() != s.tokenizer.backend.get_vocab()):
            problems.append("same vocabulary size but different tokens")
        for key in ("pad_token_id", "bos_token_id", "image_token_id", "eos_token_id"):
            if getattr(t.config, key) != getattr(s.config, key):
                problems.append(f"{key} {getattr(t.config, key)} vs {getattr(s.config, key)}")
        if t.image_tokens != s.image_tokens:
            problems.append(f"{t.image_tokens} vs {s.image_tokens} tokens per image")
        if t.config.language.max_seq_len < s.config.language.max_seq_len:
            problems.append(f"teacher max_seq_len {t.config.language.max_seq_len} < the "
                            f"student's {s.config.language.max_seq_len}")
        if t.config.vision.image_size != s.config.vision.image_size:
            problems.append(f"image size {t.config.vision.image_size} vs "
                            f"{s.config.vision.image_size}")
        if problems:
            raise InputError("teacher and student do not match: " + "; ".join(problems),
                             self.source)

    @torch.no_grad()
    def __call__(self, batch: Batch) -> VLMOutput:
        pixels = batch.pixel_values
        dtype = next(self.model.parameters()).dtype
        if pixels is not None:
            pixels = pixels.to(dtype)
        # The teacher's own dtype decides its precision, not the student's autocast.
        with torch.autocast(batch.input_ids.device.type, enabled=False):
            out = self.model(batch.input_ids, batch.attention_mask, pixels)
        assert out.logits is not None
        out.logits = out.logits.float()
        return out
