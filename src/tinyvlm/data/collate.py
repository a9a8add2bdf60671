"""Batches: token ids, padding, the label shift (done once, here) and pixel values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from tinyvlm.data.formats import Conversation, ImageStore
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError

IGNORE = -100


@dataclass
class Batch:
    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T): 1 for real tokens
    # target_ids[b, t] is the token position t must predict (the next one), IGNORE where no
    # loss applies. Losses read it aligned with the logits: no loss shifts again.
    target_ids: Tensor | None = None
    pixel_values: Tensor | None = None  # (images, 3, H, W), in placeholder order

    @property
    def loss_mask(self) -> Tensor:
        assert self.target_ids is not None
        return self.target_ids != IGNORE

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: None if (v := getattr(self, f.name)) is None else v.to(device)
                        for f in fields(self)})


def shift_targets(ids: Sequence[int], trainable: Sequence[bool]) -> list[int]:
    """Position t predicts token t+1: its target is ids[t+1] when that token is trainable."""
    return [ids[t + 1] if trainable[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def pad(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if side == "right":
                out[i, : len(r)] = torch.tensor(r)
            else:
                out[i, width - len(r) :] = torch.tensor(r)
    return out


class SFTCollator:
    """Whole conversations, right-padded, with targets on the assistant's answers."""

    def __init__(self, tokenizer: Tokenizer, images: ImageStore, image_tokens: int,
                 max_len: int):
        self.tokenizer, self.images = tokenizer, images
        self.image_tokens, self.max_len = image_tokens, max_len

    def encode(self, conv: Conversation) -> tuple[list[int], list[bool], list]:
        """Ids, trainable flags and image paths, keeping only the turns that fit in max_len."""
        turns = list(conv.turns)
        while True:
            ids, trainable = self.tokenizer.encode_conversation(turns, self.image_tokens)
            if len(ids) <= self.max_len:
                break
            if len(turns) == 1:
                raise InputError(f"{len(ids)} tokens exceed max_seq_len {self.max_len} even "
                                 "with one turn", conv.source)
            turns.pop()
        n_images = sum(u.count(self.tokenizer.chat.image) for u, _ in turns)
        return ids, trainable, conv.images[:n_images]

    def __call__(self, convs: Sequence[Conversation]) -> Batch:
        encoded = [self.encode(c) for c in convs]
        ids = [e[0] for e in encoded]
        targets = [shift_targets(e[0], e[1]) for e in encoded]
        return Batch(
            input_ids=pad(ids, self.tokenizer.pad_id),
            attention_mask=pad([[1] * len(r) for r in ids], 0),
            target_ids=pad(targets, IGNORE),
            pixel_values=self.images.pixels([p for e in encoded for p in e[2]]),
        )


class PromptCollator:
    """Prompts for generation, left-padded so every row's answer starts at the same column.

    Each conversation's last turn is the question; earlier turns are kept as history.
    """

    def __init__(self, tokenizer: Tokenizer, images: ImageStore, image_tokens: int):
        self.tokenizer, self.images, self.image_tokens = tokenizer, images, image_tokens

    def prompt_ids(self, conv: Conversation) -> list[int]:
        return self.tokenizer.encode_prompt(conv.turns[:-1], conv.question, self.image_tokens)

    def __call__(self, convs: Sequence[Conversation],
                 ids: Sequence[Sequence[int]] | None = None) -> Batch:
        """A batch of `convs`; pass their prompt ids when already computed."""
        ids = ids if ids is not None else [self.prompt_ids(c) for c in convs]
        return Batch(
            input_ids=pad(ids, self.tokenizer.pad_id, side="left"),
            attention_mask=pad([[1] * len(r) for r in ids], 0, side="left"),
            pixel_values=self.images.pixels([p for c in convs for p in c.images]),
        )
