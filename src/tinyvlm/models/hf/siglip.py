"""SigLIP vision towers <-> tinyvlm's ViT.

SigLIP: patch conv with bias, one position row per patch, no [CLS] token, no LayerNorm before
the blocks, tanh-GELU, a post_layernorm on the last hidden state and an attention-pooling
head. LLaVA-style models read a hidden state before post_layernorm, and the head serves only
SigLIP's own image-text loss: it is dropped on import (and written as a fresh one on export,
since transformers builds it by default).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tinyvlm.config import VisionConfig
from tinyvlm.models.hf import clip
from tinyvlm.models.hf.clip import (
    base_config,
    export_layers,
    import_layers,
    pos_table,
    tower_config,
)
from tinyvlm.models.hf.common import Weights, require

DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "hidden_act": "gelu_pytorch_tanh", "image_size": 224,
            "patch_size": 16, "num_channels": 3, "layer_norm_eps": 1e-6}


def vision_config(hf: dict[str, Any], where: Any) -> VisionConfig:
    return base_config(tower_config(hf, where), DEFAULTS, where, cls_token=False,
                       pre_norm=False, feature_layer=-1)


def import_vision(w: Weights, cfg: VisionConfig) -> dict[str, Tensor]:
    pos = w.take("embeddings.position_embedding.weight")
    require(pos.shape[0] == cfg.num_patches, f"SigLIP position table has {pos.shape[0]} rows "
            f"for {cfg.num_patches} patches", w.where)
    out = {"patch_embed.weight": w.take("embeddings.patch_embedding.weight"),
           "patch_embed.bias": w.take("embeddings.patch_embedding.bias"),
           "pos_embed": pos[None].clone(),
           "norm.weight": w.take("post_layernorm.weight"),
           "norm.bias": w.take("post_layernorm.bias")}
    w.ignore("head.", "embeddings.position_ids")
    import_layers(w, cfg, out)
    return out


def exportable(cfg: VisionConfig) -> str | None:
    if cfg.cls_token:
        return "it has a [CLS] token (a CLIP-shaped tower)"
    if cfg.pre_norm:
        return "SigLIP has no LayerNorm before the first block (vision.pre_norm: true)"
    return None


def export_config(cfg: VisionConfig) -> dict[str, Any]:
    return clip.export_config(cfg, "siglip_vision_model", vision_use_head=False)


def export_vision(state: dict[str, Tensor], cfg: VisionConfig) -> dict[str, Tensor]:
    pos = state["pos_embed"][0] if "pos_embed" in state else pos_table(cfg)
    out = {"embeddings.patch_embedding.weight": state["patch_embed.weight"],
           "embeddings.patch_embedding.bias": state["patch_embed.bias"],
           "embeddings.position_embedding.weight": pos,
           "post_layernorm.weight": state["norm.weight"],
           "post_layernorm.bias": state["norm.bias"]}
    export_layers(state, cfg, out)
    return out
