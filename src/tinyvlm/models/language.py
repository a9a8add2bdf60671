"""Decoder-only language model: RMSNorm, RoPE, grouped-query attention, SwiGLU, KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvlm.config import LanguageConfig
from tinyvlm.models.context import ForwardContext, with_delta
from tinyvlm.models.layers import (
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
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
        self.length = 0
        self.max_len = max_len
        self.depth = config.depth

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys/values of `layer` after the filled part; return all of them."""
        if not self.keys:
            self.keys = [k.new_zeros(self.shape) for _ in range(self.depth)]
            self.values = [v.new_zeros(self.shape) for _ in range(self.depth)]
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > {self.max_len} tokens")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


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
        out = F.scaled_dot_product_attention(
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


def attention_mask_for(
    attention_mask: Tensor | None, query_len: int, past_len: int
) -> tuple[Tensor | None, bool]:
    """The SDPA mask and is_causal flag for `query_len` new tokens after `past_len` cached ones.

    attention_mask (B, past_len + query_len) marks real tokens. Right padding needs no mask
    (real tokens never look ahead at pads), so only left-padded batches pay for an explicit
    one. Every query may always see itself, so rows of padding never become all -inf (NaN).
    """
    left_padded = attention_mask is not None and not bool(attention_mask[:, 0].all())
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
        mask, causal = attention_mask_for(attention_mask, inputs_embeds.shape[1], past_len)
        rope = self.rope(position_ids)
        x = inputs_embeds
        for block in self.blocks:
            x = block(x, rope, mask, causal, cache, ctx)
        if cache is not None:
            cache.advance(inputs_embeds.shape[1])
        return self.norm(x)
