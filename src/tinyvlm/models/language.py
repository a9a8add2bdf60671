"""Decoder-only language model: RMSNorm, RoPE, grouped-query attention, SwiGLU, KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tinyvlm.config import LanguageConfig
from tinyvlm.models.context import ForwardContext, with_delta
from tinyvlm.models.layers import (
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
    attention,
    init_weights,
    scale_residual_init,
)
from tinyvlm.models.moe import MoE


class KVCache:
    """Preallocated keys and values for every layer; `length` tokens are filled.

    Writing into a fixed buffer avoids reallocating the whole cache at each decoding step.
    Buffers are allocated at the first write, with that write's dtype (bf16 under autocast).
    """

    def __init__(self, config: LanguageConfig, batch: int, max_len: int):
        self.shape = (batch, config.kv_heads, max_len, config.head_dim)
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        # Filled tokens per layer: equal, except that layers after a FastV pruning hold fewer.
        self.lengths = [0] * config.depth
        self.max_len = max_len
        self.depth = config.depth

    @property
    def length(self) -> int:
        """Tokens seen (the first layer's, which is never pruned)."""
        return self.lengths[0]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys/values of `layer` after its filled part; return all of them."""
        if not self.keys:
            self.keys, self.values = [None] * self.depth, [None] * self.depth  # type: ignore
        if self.keys[layer] is None:
            # A layer after a FastV pruning first sees fewer tokens than layer 0 did: its
            # buffer is that much shorter, so the pruning saves memory too.
            dropped = self.lengths[0] - k.shape[2] if layer else 0
            b, h, n, d = self.shape
            self.keys[layer] = k.new_zeros(b, h, n - max(dropped, 0), d)
            self.values[layer] = v.new_zeros(b, h, n - max(dropped, 0), d)
        start = self.lengths[layer]
        end = start + k.shape[2]
        if end > self.keys[layer].shape[2]:
            raise ValueError(f"KV cache full: {end} > {self.keys[layer].shape[2]} tokens")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        self.lengths[layer] = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values
                   if t is not None)


class Attention(nn.Module):
    def __init__(self, config: LanguageConfig, layer: int):
        super().__init__()
        if (config.head_size is None and config.dim % config.heads) \
                or config.heads % config.kv_heads:
            raise ValueError("dim must divide by heads, and heads by kv_heads")
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        qkv_bias = config.qkv_bias
        self.q_proj = nn.Linear(config.dim, config.heads * config.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.dim, config.kv_heads * config.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.dim, config.kv_heads * config.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(config.heads * config.head_dim, config.dim, bias=config.o_bias)
        self.dropout = config.dropout
        self.names = {p: f"language.{layer}.{p}" for p in ("q_proj", "k_proj", "v_proj",
                                                           "o_proj")}

    def _project(self, name: str, x: Tensor, ctx: ForwardContext | None) -> Tensor:
        return with_delta(ctx, self.names[name], x, getattr(self, name)(x))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                causal: bool, cache: KVCache | None, ctx: ForwardContext | None = None
                ) -> Tensor:
        b, t, _ = x.shape
        q = self._project("q_proj", x, ctx).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self._project("k_proj", x, ctx).view(b, t, self.kv_heads, self.head_dim)
        v = self._project("v_proj", x, ctx).view(b, t, self.kv_heads, self.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if ctx is not None and ctx.fastv is not None and ctx.fastv.layer == self.layer \
                and ctx.fastv.scores is None:
            ctx.fastv.scores = last_query_attention(q, k, mask, self.head_dim)
        out = attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.heads,
        )
        return self._project("o_proj", out.transpose(1, 2).reshape(b, t, -1), ctx)


class DecoderBlock(nn.Module):
    def __init__(self, config: LanguageConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        experts = config.moe.experts_at(config.depth).get(layer) if config.moe else None
        self.ffn: nn.Module
        if config.moe is not None and experts is not None:
            self.ffn = MoE(config.dim, config.moe.hidden_dim or config.hidden_ffn_dim,
                           config.moe, experts, name=f"language.{layer}",
                           residual_depth=config.depth)
        else:
            self.ffn = SwiGLU(config.dim, config.hidden_ffn_dim)
        self.ffn_name = f"language.{layer}.ffn"

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, causal: bool,
                cache: KVCache | None, ctx: ForwardContext) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, mask, causal, cache, ctx)
        h = self.ffn_norm(x)
        # A connector's FFN delta maps the FFN's input to its output (VLoRA's "m" type).
        return x + with_delta(ctx, self.ffn_name, h, self.ffn(h, ctx))


def last_query_attention(q: Tensor, k: Tensor, mask: Tensor | None, head_dim: int) -> Tensor:
    """(B, keys): the last query's softmax attention over the keys, heads averaged (FastV's
    ranking). One query: O(T) beside the attention itself."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q[:, :, -1:].float() @ k.float().transpose(-1, -2)) * head_dim**-0.5
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, -1:], float("-inf"))
    return scores.softmax(-1)[:, :, 0].mean(1)


@dataclass
class FastVState:
    """FastV for one generation: the ranking captured at layer `layer` of the prefill, the
    positions kept, and (with a cache) the attention mask of the pruned layers' cache."""

    layer: int
    keep_share: float
    image_mask: Tensor  # (B, prompt length): image-token positions
    scores: Tensor | None = None
    keep: Tensor | None = None  # (B, prompt length) bool
    pruned_mask: Tensor | None = None  # (B, kept length)
    index: Tensor | None = None  # (B, kept length): prompt positions in the pruned layout

    def select(self, attention_mask: Tensor | None) -> None:
        """Keep, per row, the image tokens with the highest scores (`keep_share` of them) and
        every other token."""
        assert self.scores is not None
        image = self.image_mask
        scores = self.scores[:, : image.shape[1]].masked_fill(~image, float("-inf"))
        keep = ~image.clone()
        for row in range(image.shape[0]):
            n = int(image[row].sum())
            if n:
                k = max(1, round(self.keep_share * n))
                keep[row, scores[row].topk(k).indices] = True
        if attention_mask is not None:
            keep &= attention_mask[:, : image.shape[1]].bool()
        self.keep = keep


def attention_mask_for(
    attention_mask: Tensor | None, query_len: int, past_len: int, holes: bool = False
) -> tuple[Tensor | None, bool]:
    """The SDPA mask and is_causal flag for `query_len` new tokens after `past_len` cached ones.

    attention_mask (B, past_len + query_len) marks real tokens. Right padding needs no mask
    (real tokens never look ahead at pads), so only left-padded batches pay for an explicit
    one. Every query may always see itself, so rows of padding never become all -inf (NaN).
    """
    left_padded = attention_mask is not None and (holes or not bool(attention_mask[:, 0].all()))
    if not left_padded:
        if past_len == 0:
            return None, query_len > 1
        if query_len == 1:
            return None, False
    total = past_len + query_len
    device = attention_mask.device if attention_mask is not None else None
    q_pos = torch.arange(past_len, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    mask = (k_pos <= q_pos)[None]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, :].bool()
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None], False


class LanguageModel(nn.Module):
    def __init__(self, config: LanguageConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("language.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(DecoderBlock(config, i) for i in range(config.depth))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta,
                                    config.rope_scaling)
        init_weights(self)
        scale_residual_init(
            [m for b in self.blocks for m in (b.attn.o_proj, getattr(b.ffn, "down", None)) if m],
            config.depth,
        )
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(
        self,
        inputs_embeds: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
        ctx: ForwardContext | None = None,
    ) -> Tensor:
        """Final hidden states (B, T, dim) for embedded inputs; appends to `cache` if given."""
        ctx = ctx if ctx is not None else ForwardContext()
        past_len = cache.length if cache is not None else 0
        # Routed layers see the mask of the tokens computed now, not of the cached ones.
        ctx = ctx.derive(None if attention_mask is None
                         else attention_mask[:, past_len:].bool())
        t = inputs_embeds.shape[1]
        mask, causal = attention_mask_for(attention_mask, t, past_len, ctx.holes)
        rope = self.rope(position_ids)
        x = inputs_embeds
        fastv = ctx.fastv
        for i, block in enumerate(self.blocks):
            if fastv is not None and i == fastv.layer + 1:
                x, rope, mask, causal, ctx = self._fastv(fastv, x, position_ids, attention_mask,
                                                         past_len, cache, ctx)
            x = block(x, rope, mask, causal, cache, ctx)
        return self.norm(x)

    def _fastv(self, state: FastVState, x: Tensor, position_ids: Tensor,
               attention_mask: Tensor | None, past_len: int, cache: KVCache | None,
               ctx: ForwardContext) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None, bool,
                                             ForwardContext]:
        """The inputs of the layers after FastV's: without a cache, the dropped image tokens
        are masked out as keys (their own rows are computed but never read); with a cache, the
        prefill drops them and the later layers' cache holds only the kept tokens."""
        b, t = x.shape[:2]
        prompt = state.image_mask.shape[1]
        if state.keep is None:
            state.select(attention_mask)
        assert state.keep is not None
        full = attention_mask.bool() if attention_mask is not None else \
            torch.ones(b, past_len + t, dtype=torch.bool, device=x.device)
        if cache is None:
            keys = full.clone()
            keys[:, :prompt] &= state.keep
            mask, causal = attention_mask_for(keys, t, past_len, holes=True)
            return x, self.rope(position_ids), mask, causal, ctx
        if past_len == 0:  # the prefill: gather the kept tokens, right-aligned (left padding)
            kept = state.keep
            width = int(kept.sum(1).max())
            index = torch.zeros(b, width, dtype=torch.long, device=x.device)
            real = torch.zeros(b, width, dtype=torch.bool, device=x.device)
            for row in range(b):
                pos = kept[row].nonzero().squeeze(1)
                index[row, width - len(pos):] = pos
                real[row, width - len(pos):] = True
            state.index, state.pruned_mask = index, real
            x = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
            positions = position_ids.gather(1, index)
            mask, causal = attention_mask_for(real, width, 0)
            return x, self.rope(positions), mask, causal, ctx.derive(real)
        assert state.pruned_mask is not None
        keys = torch.cat([state.pruned_mask, full[:, prompt:]], dim=1)
        mask, causal = attention_mask_for(keys, t, keys.shape[1] - t, holes=True)
        return x, self.rope(position_ids), mask, causal, ctx
