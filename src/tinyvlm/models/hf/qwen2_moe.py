"""Qwen2-MoE decoders: Qwen2's attention; layer i sparse when (i + 1) % decoder_sparse_step
== 0 and i is not in mlp_only_layers, else a dense FFN of intermediate_size. A sparse layer
has `mlp.gate` (router), `mlp.experts.N.{gate,up,down}_proj` (moe_intermediate_size), top-k
gates renormalised only with norm_topk_prob, and a shared expert
(shared_expert_intermediate_size) scaled per token by sigmoid(`mlp.shared_expert_gate`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tinyvlm.config import LanguageConfig, MoEConfig
from tinyvlm.models.hf import llama
from tinyvlm.models.hf.common import Weights, export_experts, import_experts
from tinyvlm.models.hf.mixtral import common_moe_check

NAMES = ("gate_proj", "up_proj", "down_proj")


def sparse_layers(hf: dict[str, Any]) -> list[int]:
    hf = llama.with_defaults(hf)
    step = hf.get("decoder_sparse_step", 1)
    dense = set(hf.get("mlp_only_layers") or [])
    if not hf.get("num_experts") or step < 1:
        return []
    return [i for i in range(hf["num_hidden_layers"]) if i not in dense and (i + 1) % step == 0]


def lm_config(hf: dict[str, Any], where: Any) -> LanguageConfig:
    hf = llama.with_defaults(hf)
    cfg = llama.lm_config(hf, where, qkv_bias=bool(hf.get("qkv_bias", True)))
    layers = sparse_layers(hf)
    if layers:
        cfg.moe = MoEConfig(
            experts=hf["num_experts"], top_k=hf.get("num_experts_per_tok", 4), layers=layers,
            hidden_dim=hf["moe_intermediate_size"],
            shared_expert_dim=hf.get("shared_expert_intermediate_size", 0),
            shared_expert_gate=bool(hf.get("shared_expert_intermediate_size", 0)),
            normalize_gates=bool(hf.get("norm_topk_prob", False)),
            balance_coef=float(hf.get("router_aux_loss_coef", 0.001)))
    return cfg


def import_ffn_for(cfg: LanguageConfig) -> llama.FFNImport:
    sparse = set(cfg.moe.moe_layers(cfg.depth)) if cfg.moe else set()

    def import_ffn(w: Weights, src: str, dst: str, out: dict[str, Tensor]) -> None:
        if int(src.split(".")[1]) not in sparse:
            llama.import_dense_ffn(w, src, dst, out)
            return
        mlp = f"{src}mlp."
        import_experts(w, mlp + "gate.weight", mlp + "experts.{e}.{name}.weight", NAMES, dst,
                       out)
        if cfg.moe is not None and cfg.moe.shared_expert_dim:
            for a, b in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
                out[f"{dst}ffn.shared.{b}.weight"] = w.take(f"{mlp}shared_expert.{a}.weight")
            out[dst + "ffn.shared_gate.weight"] = w.take(mlp + "shared_expert_gate.weight")

    return import_ffn


def export_ffn_for(cfg: LanguageConfig) -> llama.FFNExport:
    sparse = set(cfg.moe.moe_layers(cfg.depth)) if cfg.moe else set()
    dim = cfg.dim

    def export_ffn(state: dict[str, Tensor], src: str, dst: str, out: dict[str, Tensor]
                   ) -> None:
        if int(src.split(".")[1]) not in sparse:
            llama.export_dense_ffn(state, src, dst, out)
            return
        mlp = f"{dst}mlp."
        export_experts(state, src, mlp + "gate.weight", mlp + "experts.{e}.{name}.weight",
                       NAMES, out)
        if f"{src}ffn.shared.gate.weight" in state:
            for a, b in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
                out[f"{mlp}shared_expert.{a}.weight"] = state[f"{src}ffn.shared.{b}.weight"]
            gate = state.get(f"{src}ffn.shared_gate.weight")
            # An ungated shared expert is a gate of sigmoid(+inf) = 1: not exact in float, so
            # export refuses it (exportable) rather than approximating it here.
            assert gate is not None
            out[mlp + "shared_expert_gate.weight"] = gate
        else:
            # No shared expert: a 1-wide one whose down projection is zero adds exactly 0.
            hidden = 1
            out[mlp + "shared_expert.gate_proj.weight"] = torch.zeros(hidden, dim)
            out[mlp + "shared_expert.up_proj.weight"] = torch.zeros(hidden, dim)
            out[mlp + "shared_expert.down_proj.weight"] = torch.zeros(dim, hidden)
            out[mlp + "shared_expert_gate.weight"] = torch.zeros(1, dim)

    return export_ffn


def import_lm(w: Weights, head: Tensor | None, cfg: LanguageConfig) -> dict[str, Tensor]:
    return llama.import_lm(w, head, cfg, import_ffn_for(cfg))


def export_lm(state: dict[str, Tensor], cfg: LanguageConfig
              ) -> tuple[dict[str, Tensor], Tensor | None]:
    return llama.export_lm(state, cfg, export_ffn_for(cfg))


def exportable(cfg: LanguageConfig) -> str | None:
    moe = cfg.moe
    if moe is None:
        return "it has no MoE layers"
    if cfg.o_bias:
        return "Qwen2-MoE has no bias on o"
    if cfg.head_size is not None:
        return "Qwen2-MoE's heads are dim / heads wide"
    if moe.shared_expert_dim and not moe.shared_expert_gate:
        return ("Qwen2-MoE gates its shared expert with a sigmoid; an always-on shared expert "
                "(moe.shared_expert_gate: false) has no exact counterpart")
    if sparse_layers_of(cfg) is None:
        return "its sparse layers are not expressible with decoder_sparse_step/mlp_only_layers"
    return common_moe_check(cfg)


def sparse_layers_of(cfg: LanguageConfig) -> tuple[int, list[int]] | None:
    """(decoder_sparse_step, mlp_only_layers) giving the model's sparse layers."""
    assert cfg.moe is not None
    layers = cfg.moe.moe_layers(cfg.depth)
    for step in (1, 2):
        candidates = [i for i in range(cfg.depth) if (i + 1) % step == 0]
        if set(layers) <= set(candidates):
            return step, [i for i in candidates if i not in layers]
    return None


def export_config(cfg: LanguageConfig) -> dict[str, Any]:
    moe = cfg.moe
    assert moe is not None
    out = llama.export_config(cfg)
    for key in ("attention_bias", "mlp_bias", "head_dim"):
        out.pop(key)
    step_only = sparse_layers_of(cfg)
    assert step_only is not None
    experts = moe.layer_experts[0] if moe.layer_experts else moe.experts
    return {**out, "model_type": "qwen2_moe", "num_experts": experts,
            "num_experts_per_tok": min(moe.top_k, experts),
            "moe_intermediate_size": moe.hidden_dim or cfg.hidden_ffn_dim,
            "shared_expert_intermediate_size": moe.shared_expert_dim or 1,
            "norm_topk_prob": moe.normalize_gates, "decoder_sparse_step": step_only[0],
            "mlp_only_layers": step_only[1], "qkv_bias": True,
            "router_aux_loss_coef": moe.balance_coef, "use_sliding_window": False}
