"""Qwen2 decoders: Llama's layout with biases on q, k and v (never on o)."""

from __future__ import annotations

from typing import Any

from tinyvlm.config import LanguageConfig
from tinyvlm.models.hf import llama


def lm_config(hf: dict[str, Any], where: Any) -> LanguageConfig:
    return llama.lm_config({"model_type": "qwen2", **hf}, where, qkv_bias=True)


def exportable(cfg: LanguageConfig) -> str | None:
    if cfg.moe is not None:
        return "it has MoE layers"
    if cfg.o_bias:
        return "Qwen2 has no bias on o"
    if cfg.head_size is not None:
        return "Qwen2's heads are dim / heads wide"
    return None


def export_config(cfg: LanguageConfig) -> dict[str, Any]:
    out = llama.export_config(cfg)
    for key in ("attention_bias", "mlp_bias", "head_dim"):
        out.pop(key)
    return {**out, "model_type": "qwen2", "use_sliding_window": False}
