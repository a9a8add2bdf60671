"""What a forward pass carries besides hidden states: masks, task ids, layer records, and the
visual conditioning a connector produced (visual tokens and low-rank weight deltas)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class LowRankDelta:
    """A per-image low-rank update of one projection: y_b += scale * (x_b @ a_i) @ b_i for
    each image i of row b, computed as a parallel path (no per-sample weight matrix)."""

    a: Tensor  # (images, d_in, rank)
    b: Tensor  # (images, rank, d_out), or (rank, d_out) shared by every image
    scale: float = 1.0

    def apply(self, x: Tensor, image_rows: Tensor) -> Tensor:
        """The update for x (B, T, d_in): (B, T, d_out); rows without an image get zeros."""
        h = torch.bmm(x.index_select(0, image_rows), self.a.to(x.dtype))
        b = self.b.to(x.dtype)
        h = h @ b if b.dim() == 2 else torch.bmm(h, b)
        out = h.new_zeros(x.shape[0], x.shape[1], h.shape[-1])
        return out.index_add(0, image_rows, h * self.scale)


@dataclass
class VisualConditioning:
    """How a connector conditions the language model on images: visual tokens written where
    the image tokens stand, and/or low-rank deltas of named LM projections
    ("language.<layer>.<q_proj|k_proj|v_proj|o_proj|ffn>"). Either may be absent."""

    tokens: Tensor | None = None  # (images, tokens per image, lm dim)
    deltas: dict[str, LowRankDelta] = field(default_factory=dict)
    # (images, tokens per image) bool: the slots an image uses, when images use different
    # numbers of them; the others are left out of attention (None: every slot is used).
    token_mask: Tensor | None = None


@dataclass
class ForwardContext:
    """What a block may need beyond its hidden states, passed down explicitly.

    token_mask marks real tokens (False for padding), so routed layers can skip padding;
    records collects per-layer statistics (router loads, auxiliary losses) that a layer
    produces, so the caller receives them as typed data instead of extra return values;
    task_ids (B,) selects the routing of task-conditioned MoE layers; deltas and image_rows
    (the batch row of each image) carry a connector's weight deltas to the projections.
    """

    token_mask: Tensor | None = None
    records: list[Any] = field(default_factory=list)
    task_ids: Tensor | None = None
    deltas: dict[str, LowRankDelta] = field(default_factory=dict)
    image_rows: Tensor | None = None
    fastv: Any = None  # models.language.FastVState while a generation prunes image tokens
    holes: bool = False  # the attention mask has unused image slots inside the sequence

    def derive(self, token_mask: Tensor | None) -> ForwardContext:
        """The same context for another token layout (the vision encoder's patches, the new
        tokens of a cached decoding step): shares records, task ids and conditioning."""
        return ForwardContext(token_mask=token_mask, records=self.records,
                              task_ids=self.task_ids, deltas=self.deltas,
                              image_rows=self.image_rows, fastv=self.fastv, holes=self.holes)

    def condition(self, conditioning: VisualConditioning | None,
                  image_rows: Tensor | None) -> None:
        """Take on a connector's deltas for the images at `image_rows`."""
        if conditioning is None or not conditioning.deltas:
            return
        if image_rows is None:
            raise ValueError("a connector with weight deltas needs the batch row of each image "
                             "(Batch.image_rows)")
        self.deltas, self.image_rows = conditioning.deltas, image_rows

    def delta(self, name: str, x: Tensor) -> Tensor | None:
        """The low-rank update of projection `name` for input x, or None without one."""
        d = self.deltas.get(name)
        if d is None:
            return None
        assert self.image_rows is not None
        return d.apply(x, self.image_rows)


def with_delta(ctx: ForwardContext | None, name: str, x: Tensor, y: Tensor) -> Tensor:
    """y plus the context's delta of projection `name` (y itself when there is none)."""
    if ctx is None or not ctx.deltas:
        return y
    d = ctx.delta(name, x)
    return y if d is None else y + d
