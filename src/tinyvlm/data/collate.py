"""Batches: token ids, padding, the label shift (done once, here) and pixel values.

Every batch is built by `Batch.from_rows` from token rows; the collators decide the rows:
whole conversations for training (right-padded, targets on the answers), prompts for
generation (left-padded), and chosen/rejected answer pairs for preference objectives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from tinyvlm.data.conversation import Conversation, Turn, count_images, drop_oldest
from tinyvlm.data.images import ImageStore
from tinyvlm.data.pairs import record_images
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError

IGNORE = -100


class TrainBatch(Protocol):
    """What the training loop needs of any batch an objective reads."""

    @property
    def num_tokens(self) -> int: ...

    def to(self, device: torch.device | str) -> Any: ...


@dataclass
class Batch:
    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T): 1 for real tokens
    # target_ids[b, t] is the token position t must predict (the next one), IGNORE where no
    # loss applies. Losses read it aligned with the logits: no loss shifts again.
    target_ids: Tensor | None = None
    pixel_values: Tensor | None = None  # (images, 3, H, W), in placeholder order
    image_rows: Tensor | None = None  # (images,): the batch row each image belongs to

    @classmethod
    def from_rows(cls, ids: Sequence[Sequence[int]], pad_id: int,
                  targets: Sequence[Sequence[int]] | None = None,
                  pixel_values: Tensor | None = None,
                  images_per_row: Sequence[int] | None = None, side: str = "right") -> Batch:
        """Pad token rows (and their targets) to one width, on the right for training or on
        the left for generation; `images_per_row` says which row each image belongs to."""
        rows = None
        if pixel_values is not None and images_per_row is not None:
            rows = torch.repeat_interleave(torch.arange(len(ids)),
                                           torch.tensor(list(images_per_row), dtype=torch.long))
        return cls(
            input_ids=pad(ids, pad_id, side),
            attention_mask=pad([[1] * len(r) for r in ids], 0, side),
            target_ids=None if targets is None else pad(targets, IGNORE, side),
            pixel_values=pixel_values,
            image_rows=rows,
        )

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

    def encode(self, conv: Conversation) -> tuple[list[int], list[bool], Conversation]:
        """Ids, trainable flags and the conversation as encoded: only the turns that fit in
        max_len, and the images of those turns."""
        turns = list(conv.turns)
        while True:
            ids, trainable = self.tokenizer.encode_conversation(turns, self.image_tokens)
            if len(ids) <= self.max_len:
                break
            if len(turns) == 1:
                raise InputError(f"{len(ids)} tokens exceed max_seq_len {self.max_len} even "
                                 "with one turn", conv.source)
            turns.pop()
        n_images = count_images([u for u, _ in turns])
        kept = conv if len(turns) == len(conv.turns) else replace(conv, turns=turns)
        return ids, trainable, replace(kept, images=conv.images[:n_images])

    def fitted(self, convs: Sequence[Conversation]) -> list[Conversation]:
        """The conversations as a batch of them holds them (turns past max_len dropped)."""
        return [self.encode(c)[2] for c in convs]

    def __call__(self, convs: Sequence[Conversation]) -> Batch:
        encoded = [self.encode(c) for c in convs]
        return Batch.from_rows(
            [e[0] for e in encoded], self.tokenizer.pad_id,
            targets=[shift_targets(e[0], e[1]) for e in encoded],
            pixel_values=self.images.pixels([p for e in encoded for p in e[2].images]),
            images_per_row=[len(e[2].images) for e in encoded])


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
        return Batch.from_rows(ids, self.tokenizer.pad_id, side="left",
                               pixel_values=self.images.pixels([p for c in convs
                                                                for p in c.images]),
                               images_per_row=[len(c.images) for c in convs])


# ----------------------------------------------------------------------------- preference


def encode_answer(tokenizer: Tokenizer, turns: Sequence[Turn], image_tokens: int
                  ) -> tuple[list[int], list[int]]:
    """Ids of a conversation and its shifted targets, set on the last answer only: earlier
    answers are context, not what is compared or scored."""
    ids, trainable = tokenizer.encode_conversation(turns, image_tokens)
    prefix = len(tokenizer.encode_prompt(turns[:-1], turns[-1][0], image_tokens))
    return ids, shift_targets(ids, [False] * prefix + trainable[prefix:])


def answer_batch(tokenizer: Tokenizer, images: ImageStore, image_tokens: int,
                 items: Sequence[tuple[Sequence[Turn], Sequence[Any]]]) -> Batch:
    """Conversations (turns, images) with targets on their last answers only, right-padded."""
    encoded = [encode_answer(tokenizer, turns, image_tokens) for turns, _ in items]
    return Batch.from_rows([e[0] for e in encoded], tokenizer.pad_id,
                           targets=[e[1] for e in encoded],
                           pixel_values=images.pixels([p for _, paths in items for p in paths]),
                           images_per_row=[len(paths) for _, paths in items])


@dataclass
class PreferenceBatch:
    """Chosen rows 0..B-1 and rejected rows B..2B-1 of one batch, so the policy (and the
    reference) read both answers in a single forward pass."""

    batch: Batch
    chosen_lengths: Tensor  # (B,) response tokens (answer + end token) of each chosen answer
    rejected_lengths: Tensor  # (B,)

    @property
    def pairs(self) -> int:
        return int(self.chosen_lengths.shape[0])

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return PreferenceBatch(self.batch.to(device), self.chosen_lengths.to(device),
                               self.rejected_lengths.to(device))


class PreferenceCollator:
    """Pair records (data.pairs) -> a PreferenceBatch; targets only on the answers,
    right-padded. History too long for max_len is trimmed from the front, the same way for
    both answers."""

    def __init__(self, tokenizer: Tokenizer, images: ImageStore, image_tokens: int,
                 max_len: int):
        self.tokenizer, self.images = tokenizer, images
        self.image_tokens, self.max_len = image_tokens, max_len

    def _length(self, turns: list[Turn]) -> int:
        return len(self.tokenizer.encode_conversation(turns, self.image_tokens)[0])

    def turns(self, record: dict[str, Any]) -> tuple[list[Turn], list[Turn]]:
        """The chosen and the rejected conversation of a pair, trimmed to fit."""
        answers = (record["chosen"], record["rejected"])
        try:
            history, prompt = drop_oldest(
                [tuple(t) for t in record.get("history", [])], record["prompt"],
                lambda h, p: all(self._length([*h, (p, a)]) <= self.max_len for a in answers))
        except ValueError as e:
            raise InputError(f"pair {record['id']}: {e}") from None
        return [*history, (prompt, answers[0])], [*history, (prompt, answers[1])]

    def __call__(self, records: Sequence[dict[str, Any]]) -> PreferenceBatch:
        convs = [self.turns(r) for r in records]
        paths = [record_images(r) for r in records]
        items = [(c, p) for (c, _), p in zip(convs, paths, strict=True)] + \
                [(r, p) for (_, r), p in zip(convs, paths, strict=True)]
        batch = answer_batch(self.tokenizer, self.images, self.image_tokens, items)
        assert batch.target_ids is not None
        lengths = (batch.target_ids != IGNORE).sum(1)
        b = len(records)
        return PreferenceBatch(batch, lengths[:b], lengths[b:])
