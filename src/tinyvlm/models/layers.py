"""Building blocks shared by the vision encoder and the language model."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvlm.config import RopeScaling
from tinyvlm.models.context import ForwardContext


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32: under bf16 autocast the mean of squares loses too many bits.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
    """scaled_dot_product_attention; on the CPU in fp32 for half-precision inputs: torch's
    CPU flash kernel is several times slower in bf16 than in fp32 (backward above all),
    which costs far more than the casts."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                              **kwargs).to(q.dtype)


class SwiGLU(nn.Module):
    """The gated feed-forward of Llama-style models: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim, bias=False)
        self.up = nn.Linear(dim, hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu, "gelu_tanh": gelu_tanh}


class GELUMLP(nn.Module):
    """The ViT feed-forward: fc2(act(fc1(x))), act a GELU (exact, CLIP's quick or tanh)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, act: str = "gelu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.act = ACTIVATIONS[act]

    def forward(self, x: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))


def scaled_frequencies(inv_freq: Tensor, scaling: RopeScaling | None) -> Tensor:
    """Rotary frequencies after Llama 3's (or linear) scaling; unchanged without one."""
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    if scaling.kind != "llama3":
        raise ValueError(f"unknown rope_scaling.kind {scaling.kind!r}: llama3 or linear")
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = scaling.original_max_len / scaling.low_freq_factor
    high_wavelen = scaling.original_max_len / scaling.high_freq_factor
    smooth = ((scaling.original_max_len / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    between = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    band = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(band, between, out)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, half-split layout (as Llama checkpoints store q/k)."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0,
                 scaling: RopeScaling | None = None):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        inv_freq = scaled_frequencies(inv_freq, scaling)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin for positions (B, T), shaped (B, 1, T, head_dim / 2)."""
        if int(position_ids.max()) >= self.cos.shape[0]:
            raise ValueError(
                f"position {int(position_ids.max())} exceeds max_seq_len {self.cos.shape[0]}"
            )
        return self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) for linear and embedding weights, zeros for biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)


def scale_residual_init(projections: list[nn.Linear], depth: int, std: float = 0.02) -> None:
    """Shrink the output projections of residual branches (GPT-2): keeps the stream's variance
    independent of depth at initialisation."""
    for p in projections:
        nn.init.normal_(p.weight, std=std / math.sqrt(2 * depth))
