"""Mixtral decoders: Llama's attention, every FFN a sparse MoE of SwiGLU experts
(`block_sparse_moe.gate` the router, `experts.N.{w1, w3, w2}` gate, up, down), softmax over
all experts, top-k, renormalised: tinyvlm's MoE with `layers: all` and normalised gates."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tinyvlm.config import LanguageConfig, MoEConfig
from tinyvlm.models.hf import llama
from tinyvlm.models.hf.common import Weights, export_experts, import_experts


def lm_config(hf: dict[str, Any], where: Any) -> LanguageConfig:
    hf = llama.with_defaults(hf)
    cfg = llama.lm_config(hf, where)
    cfg.moe = MoEConfig(experts=hf["num_local_experts"], top_k=hf.get("num_experts_per_tok", 2),
                        layers="all", hidden_dim=hf["intermediate_size"], normalize_gates=True,
                        balance_coef=float(hf.get("router_aux_loss_coef", 0.01)),
                        jitter=float(hf.get("router_jitter_noise", 0.0)))
    return cfg


NAMES = ("w1", "w3", "w2")  # gate, up, down


def import_ffn(w: Weights, src: str, dst: str, out: dict[str, Tensor]) -> None:
    moe = f"{src}block_sparse_moe."
    import_experts(w, moe + "gate.weight", moe + "experts.{e}.{name}.weight", NAMES, dst, out)


def export_ffn(state: dict[str, Tensor], src: str, dst: str, out: dict[str, Tensor]) -> None:
    moe = f"{dst}block_sparse_moe."
    export_experts(state, src, moe + "gate.weight", moe + "experts.{e}.{name}.weight", NAMES,
                   out)


def import_lm(w: Weights, head: Tensor | None, cfg: LanguageConfig) -> dict[str, Tensor]:
    return llama.import_lm(w, head, cfg, import_ffn)


def export_lm(state: dict[str, Tensor], cfg: LanguageConfig
              ) -> tuple[dict[str, Tensor], Tensor | None]:
    return llama.export_lm(state, cfg, export_ffn)


def exportable(cfg: LanguageConfig) -> str | None:
    moe = cfg.moe
    if moe is None or moe.moe_layers(cfg.depth) != list(range(cfg.depth)):
        return "Mixtral needs every layer sparse"
    if moe.shared_expert_dim or not moe.normalize_gates:
        return "Mixtral has no shared expert and renormalises its top-k gates"
    if cfg.qkv_bias or cfg.o_bias:
        return "Mixtral's attention has no biases"
    return common_moe_check(cfg)


def common_moe_check(cfg: LanguageConfig) -> str | None:
    """What no transformers MoE expresses: capacity routing, task routing, per-layer expert
    counts, experts wider or narrower per layer."""
    moe = cfg.moe
    assert moe is not None
    if moe.routing != "dropless":
        return "capacity routing drops tokens, which transformers' MoE layers never do"
    if moe.task_routing != "none":
        return "task-conditioned routing has no transformers counterpart"
    if moe.layer_experts and len(set(moe.layer_experts)) > 1:
        return "its MoE layers have different numbers of experts"
    return None


def export_config(cfg: LanguageConfig) -> dict[str, Any]:
    assert cfg.moe is not None
    out = llama.export_config(cfg)
    for key in ("attention_bias", "mlp_bias"):
        out.pop(key)
    experts = cfg.moe.layer_experts[0] if cfg.moe.layer_experts else cfg.moe.experts
    return {**out, "model_type": "mixtral", "num_local_experts": experts,
            "num_experts_per_tok": min(cfg.moe.top_k, experts),
            "intermediate_size": cfg.moe.hidden_dim or cfg.hidden_ffn_dim,
            "router_aux_loss_coef": cfg.moe.balance_coef, "sliding_window": None}


