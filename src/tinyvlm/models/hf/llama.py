"""Llama-style decoders <-> tinyvlm's language model (Llama itself here; Qwen2, Mixtral and
Qwen2-MoE reuse the attention, norms and dense FFN and map their own parts).

Keys: `embed_tokens`, `layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}`, `norm`, and `lm_head` unless the
embeddings are tied. Configs: transformers' `rope_parameters` (or the older `rope_theta` and
`rope_scaling`), with Llama 3's frequency scaling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from tinyvlm.config import LanguageConfig, RopeScaling
from tinyvlm.models.hf.common import Weights, require

FFNImport = Callable[[Weights, str, str, dict[str, Tensor]], None]
FFNExport = Callable[[dict[str, Tensor], str, str, dict[str, Tensor]], None]


def rope(hf: dict[str, Any], where: Any) -> tuple[float, RopeScaling | None]:
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", legacy.get("rope_type", legacy.get("type", "default")))
    source = params if "rope_type" in params else legacy
    if kind == "default":
        return float(theta), None
    require(kind in ("llama3", "linear"), f"rope type {kind!r} is not supported (default, "
            "llama3, linear)", where)
    scaling = RopeScaling(kind=kind, factor=float(source.get("factor", 1.0)))
    if kind == "llama3":
        scaling.low_freq_factor = float(source["low_freq_factor"])
        scaling.high_freq_factor = float(source["high_freq_factor"])
        scaling.original_max_len = int(source["original_max_position_embeddings"])
    return float(theta), scaling


def export_rope(cfg: LanguageConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    s = cfg.rope_scaling
    if s is not None:
        params.update(rope_type=s.kind, factor=s.factor)
        if s.kind == "llama3":
            params.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                          original_max_position_embeddings=s.original_max_len)
    return {"rope_parameters": params}


# transformers' defaults per family: config.json files saved by earlier versions (the hub's
# LLaVA checkpoints among them) leave them out.
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32,
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "sliding_window": 4096},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
    "mixtral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "rope_theta": 1e6, "num_local_experts": 8, "num_experts_per_tok": 2,
                "router_aux_loss_coef": 0.001},
    "qwen2_moe": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
                  "num_hidden_layers": 24, "num_attention_heads": 16,
                  "num_key_value_heads": 16, "max_position_embeddings": 32768,
                  "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "num_experts": 60,
                  "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
                  "shared_expert_intermediate_size": 5632, "norm_topk_prob": False,
                  "decoder_sparse_step": 1, "router_aux_loss_coef": 0.001},
}


def with_defaults(hf: dict[str, Any]) -> dict[str, Any]:
    """The config with its family's defaults for every key it leaves out."""
    return {**DEFAULTS.get(hf.get("model_type", "llama"), DEFAULTS["llama"]),
            **{k: v for k, v in hf.items() if v is not None}}


def lm_config(hf: dict[str, Any], where: Any, qkv_bias: bool | None = None) -> LanguageConfig:
    hf = with_defaults(hf)
    act = hf.get("hidden_act", "silu")
    require(act == "silu", f"hidden_act {act!r}: only SwiGLU (silu) FFNs are supported", where)
    require(not hf.get("mlp_bias", False), "mlp_bias: true is not supported", where)
    # A sliding window (Mistral) changes nothing for sequences that fit in it: the model's
    # max_seq_len is capped there. Qwen2 uses one only with use_sliding_window.
    window = hf.get("sliding_window") if hf.get("model_type") not in ("qwen2", "qwen2_moe") \
        or hf.get("use_sliding_window") else None
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    head = hf.get("head_dim") or dim // heads
    theta, scaling = rope(hf, where)
    bias = bool(hf.get("attention_bias", False))
    return LanguageConfig(
        vocab_size=hf["vocab_size"], dim=dim, depth=hf["num_hidden_layers"], heads=heads,
        kv_heads=hf.get("num_key_value_heads") or heads, ffn_dim=hf.get("intermediate_size"),
        max_seq_len=min(hf["max_position_embeddings"], window or 1 << 62), rope_theta=theta,
        rope_scaling=scaling, norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=bias if qkv_bias is None else qkv_bias, o_bias=bias,
        head_size=None if head * heads == dim else head)


def export_config(cfg: LanguageConfig) -> dict[str, Any]:
    return {"model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim,
            "intermediate_size": cfg.hidden_ffn_dim, "num_hidden_layers": cfg.depth,
            "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
            "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.qkv_bias,
            "mlp_bias": False, **export_rope(cfg)}


def exportable(cfg: LanguageConfig) -> str | None:
    if cfg.moe is not None:
        return "it has MoE layers"
    if cfg.qkv_bias != cfg.o_bias:
        return "Llama biases q, k, v and o together (attention_bias)"
    return None


def import_dense_ffn(w: Weights, src: str, dst: str, out: dict[str, Tensor]) -> None:
    for a, b in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
        out[f"{dst}ffn.{b}.weight"] = w.take(f"{src}mlp.{a}.weight")


def export_dense_ffn(state: dict[str, Tensor], src: str, dst: str, out: dict[str, Tensor]
                     ) -> None:
    for a, b in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
        out[f"{dst}mlp.{a}.weight"] = state[f"{src}ffn.{b}.weight"]


def import_lm(w: Weights, head: Tensor | None, cfg: LanguageConfig,
              ffn: FFNImport = import_dense_ffn) -> dict[str, Tensor]:
    """Our `language.` tensors (without the prefix) from the decoder's weights (keys under
    `model.` with that prefix removed) and the lm_head weight (None when tied)."""
    out = {"embed.weight": w.take("embed_tokens.weight"), "norm.weight": w.take("norm.weight")}
    for i in range(cfg.depth):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        out[dst + "attn_norm.weight"] = w.take(src + "input_layernorm.weight")
        out[dst + "ffn_norm.weight"] = w.take(src + "post_attention_layernorm.weight")
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{dst}attn.{p}.weight"] = w.take(f"{src}self_attn.{p}.weight")
            bias = cfg.o_bias if p == "o_proj" else cfg.qkv_bias
            if bias:
                out[f"{dst}attn.{p}.bias"] = w.take(f"{src}self_attn.{p}.bias")
        ffn(w, src, dst, out)
    w.ignore("rotary_emb.")
    if not cfg.tie_embeddings:
        require(head is not None, "lm_head.weight is missing and the embeddings are not tied",
                w.where)
        out["lm_head.weight"] = head  # type: ignore[assignment]
    return out


def export_lm(state: dict[str, Tensor], cfg: LanguageConfig,
              ffn: FFNExport = export_dense_ffn) -> tuple[dict[str, Tensor], Tensor | None]:
    """(decoder weights without the `model.` prefix, the lm_head weight or None if tied)."""
    out = {"embed_tokens.weight": state["embed.weight"], "norm.weight": state["norm.weight"]}
    for i in range(cfg.depth):
        src, dst = f"blocks.{i}.", f"layers.{i}."
        out[dst + "input_layernorm.weight"] = state[src + "attn_norm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "ffn_norm.weight"]
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{dst}self_attn.{p}.weight"] = state[f"{src}attn.{p}.weight"]
            if f"{src}attn.{p}.bias" in state:
                out[f"{dst}self_attn.{p}.bias"] = state[f"{src}attn.{p}.bias"]
        ffn(state, src, dst, out)
    return out, None if cfg.tie_embeddings else state["lm_head.weight"]
