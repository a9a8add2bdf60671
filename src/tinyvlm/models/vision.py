"""ViT vision encoder: patch embedding, a [CLS] token, learned or 2-D sin-cos positions,
pre-norm blocks. Returns patch features and the [CLS] attention of chosen layers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tinyvlm.config import VisionConfig
from tinyvlm.models.context import ForwardContext
from tinyvlm.models.layers import GELUMLP, attention, init_weights, scale_residual_init
from tinyvlm.models.moe import MoE


@dataclass
class VisionOutput:
    patches: Tensor  # (B, num_patches, dim): the feature layer's patches (normed if asked)
    cls: Tensor | None  # (B, dim), None for a tower without a [CLS] token
    # layer index -> (B, heads, num_patches): softmax attention of the [CLS] query over patches
    cls_attention: dict[int, Tensor] = field(default_factory=dict)
    with_cls: bool = False  # the connector's features start with the [CLS] token

    @property
    def features(self) -> Tensor:
        """What the connector reads: (B, feature_tokens, dim)."""
        if self.with_cls and self.cls is not None:
            return torch.cat([self.cls[:, None], self.patches], dim=1)
        return self.patches


def sincos_2d(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine positions (grid*grid, dim): half the channels encode the row,
    half the column."""
    if dim % 4:
        raise ValueError("sincos positions need dim divisible by 4")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, want_cls_attention: bool) -> tuple[Tensor, Tensor | None]:
        b, t, d = x.shape
        # With a [CLS] token it is token 0 (the caller asks only then).
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        cls_attn = None
        if want_cls_attention:
            # Only the [CLS] row is needed: one query, so this costs O(T) next to SDPA's O(T^2).
            scores = (q[:, :, :1] @ k.transpose(-1, -2)) * self.head_dim**-0.5
            cls_attn = scores.float().softmax(-1)[:, :, 0, 1:]
        return self.proj(out.transpose(1, 2).reshape(b, t, d)), cls_attn


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig, layer: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = VisionAttention(config.dim, config.heads)
        self.ffn_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        hidden = config.hidden_mlp_dim
        experts = config.moe.experts_at(config.depth).get(layer) if config.moe else None
        self.ffn: nn.Module
        if config.moe is not None and experts is not None:
            # Experts are SwiGLU (the one MoE module); dense ViT blocks keep the GELU MLP.
            self.ffn = MoE(config.dim, config.moe.hidden_dim or hidden, config.moe, experts,
                           name=f"vision.{layer}", residual_depth=config.depth)
        else:
            self.ffn = GELUMLP(config.dim, hidden, config.dropout, config.act)

    def forward(self, x: Tensor, ctx: ForwardContext, want_cls_attention: bool
                ) -> tuple[Tensor, Tensor | None]:
        h, cls_attn = self.attn(self.attn_norm(x), want_cls_attention)
        x = x + h
        return x + self.ffn(self.ffn_norm(x), ctx), cls_attn


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError("vision.image_size must be a multiple of vision.patch_size")
        self.config = config
        self.patch_embed = nn.Conv2d(config.channels, config.dim, config.patch_size,
                                     stride=config.patch_size)
        # CLIP's class embedding plus its position row, as one vector.
        self.cls_token = (nn.Parameter(torch.zeros(1, 1, config.dim)) if config.cls_token
                          else None)
        self.pre_norm = (nn.LayerNorm(config.dim, eps=config.norm_eps) if config.pre_norm
                         else None)
        if config.position == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, config.dim))
        elif config.position == "sincos":
            self.register_buffer("pos_embed", sincos_2d(config.grid, config.dim)[None],
                                 persistent=False)
        else:
            raise ValueError(f"vision.position must be 'learned' or 'sincos', got "
                             f"{config.position!r}")
        self.blocks = nn.ModuleList(VisionBlock(config, i) for i in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        init_weights(self)
        scale_residual_init([m for b in self.blocks
                             for m in (b.attn.proj, getattr(b.ffn, "fc2", None)) if m],
                            config.depth)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if config.position == "learned":
            nn.init.normal_(self.pos_embed, std=0.02)
        self.feature_layer = config.feature_layer % config.depth
        self.cls_layers = ({i % config.depth for i in config.cls_attention_layers}
                           if config.cls_token else set())

    def forward(self, pixel_values: Tensor, ctx: ForwardContext | None = None) -> VisionOutput:
        # Every patch is a real token: no mask, but the caller's records and task ids.
        ctx = ctx.derive(None) if ctx is not None else ForwardContext()
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2) + self.pos_embed
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        cls_attention = {}
        # Blocks after the feature layer change nothing the connector reads: not run.
        for i, block in enumerate(self.blocks[: self.feature_layer + 1]):
            x, attn = block(x, ctx, i in self.cls_layers)
            if attn is not None:
                cls_attention[i] = attn
        if self.config.feature_norm:
            x = self.norm(x)
        first = int(self.cls_token is not None)
        return VisionOutput(patches=x[:, first:], cls=x[:, 0] if first else None,
                            cls_attention=cls_attention, with_cls=self.config.feature_cls)
