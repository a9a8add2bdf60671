"""CLIP vision towers <-> tinyvlm's ViT.

CLIP: patch conv without bias, a class embedding with its own position row, a LayerNorm
before the blocks (`pre_layrnorm`), pre-norm blocks with separate q/k/v, quick-GELU, and a
`post_layernorm` that only the pooled [CLS] output sees (LLaVA never reads it). The class
embedding and its position row fold into our [CLS] vector; on export the patch bias folds
into the patch position rows. Hub CLIP checkpoints are often whole CLIPModels: their
`vision_config` and `vision_model.` weights are read.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tinyvlm.config import VisionConfig
from tinyvlm.models.hf.common import Weights, require

ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
        "gelu_new": "gelu_tanh"}
ACT_NAMES = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


# transformers' defaults: config.json files saved by earlier versions leave them out.
DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "hidden_act": "quick_gelu", "image_size": 224,
            "patch_size": 32, "num_channels": 3, "layer_norm_eps": 1e-5}


def tower_config(hf: dict[str, Any], where: Any) -> dict[str, Any]:
    """The vision settings of a CLIP(Vision) or SigLIP(Vision) config.json."""
    return hf.get("vision_config", hf) if hf.get("model_type") in ("clip", "siglip") else hf


def base_config(v: dict[str, Any], defaults: dict[str, Any], where: Any, **extra: Any
                ) -> VisionConfig:
    v = {**defaults, **{k: x for k, x in v.items() if x is not None}}
    act = v["hidden_act"]
    require(act in ACTS, f"vision hidden_act {act!r} is not supported (known: {sorted(ACTS)})",
            where)
    dim = v["hidden_size"]
    return VisionConfig(
        image_size=v["image_size"], patch_size=v["patch_size"], channels=v["num_channels"],
        dim=dim, depth=v["num_hidden_layers"], heads=v["num_attention_heads"],
        mlp_dim=v["intermediate_size"], mlp_ratio=v["intermediate_size"] / dim,
        norm_eps=v["layer_norm_eps"], act=ACTS[act], position="learned",
        cls_attention_layers=[-1], feature_norm=False, **extra)


def vision_config(hf: dict[str, Any], where: Any) -> VisionConfig:
    return base_config(tower_config(hf, where), DEFAULTS, where, cls_token=True, pre_norm=True,
                       feature_layer=-2)


def import_layers(w: Weights, cfg: VisionConfig, out: dict[str, Tensor]) -> None:
    """The encoder blocks (CLIP's and SigLIP's are the same)."""
    for i in range(cfg.depth):
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        for a, b in (("layer_norm1", "attn_norm"), ("layer_norm2", "ffn_norm"),
                     ("self_attn.out_proj", "attn.proj"), ("mlp.fc1", "ffn.fc1"),
                     ("mlp.fc2", "ffn.fc2")):
            out[dst + b + ".weight"] = w.take(src + a + ".weight")
            out[dst + b + ".bias"] = w.take(src + a + ".bias")
        for p in ("weight", "bias"):
            out[dst + f"attn.qkv.{p}"] = torch.cat(
                [w.take(src + f"self_attn.{n}_proj.{p}") for n in "qkv"])


def export_layers(state: dict[str, Tensor], cfg: VisionConfig, out: dict[str, Tensor]) -> None:
    for i in range(cfg.depth):
        src, dst = f"blocks.{i}.", f"encoder.layers.{i}."
        for a, b in (("layer_norm1", "attn_norm"), ("layer_norm2", "ffn_norm"),
                     ("self_attn.out_proj", "attn.proj"), ("mlp.fc1", "ffn.fc1"),
                     ("mlp.fc2", "ffn.fc2")):
            out[dst + a + ".weight"] = state[src + b + ".weight"]
            out[dst + a + ".bias"] = state[src + b + ".bias"]
        for p in ("weight", "bias"):
            for n, part in zip("qkv", state[src + f"attn.qkv.{p}"].chunk(3), strict=True):
                out[dst + f"self_attn.{n}_proj.{p}"] = part


def import_vision(w: Weights, cfg: VisionConfig) -> dict[str, Tensor]:
    """Our `vision.` tensors (without the prefix) from CLIP vision weights (no prefix)."""
    pos = w.take("embeddings.position_embedding.weight")
    require(pos.shape[0] == cfg.num_patches + 1, f"CLIP position table has {pos.shape[0]} "
            f"rows for {cfg.num_patches} patches + [CLS]", w.where)
    patch = w.take("embeddings.patch_embedding.weight")
    out = {"patch_embed.weight": patch, "patch_embed.bias": torch.zeros(patch.shape[0]),
           "cls_token": (w.take("embeddings.class_embedding") + pos[0]).view(1, 1, -1),
           "pos_embed": pos[1:][None].clone(),
           "pre_norm.weight": w.take("pre_layrnorm.weight"),
           "pre_norm.bias": w.take("pre_layrnorm.bias"),
           "norm.weight": w.take("post_layernorm.weight"),
           "norm.bias": w.take("post_layernorm.bias")}
    w.ignore("embeddings.position_ids")
    import_layers(w, cfg, out)
    return out


def exportable(cfg: VisionConfig) -> str | None:
    """Why a ViT cannot be a CLIP tower exactly, or None."""
    if not cfg.cls_token:
        return "it has no [CLS] token (a SigLIP-shaped tower)"
    if not cfg.pre_norm:
        return ("CLIP normalises the embeddings before the first block and this ViT does not "
                "(vision.pre_norm: false)")
    return None


def export_config(cfg: VisionConfig, model_type: str = "clip_vision_model", **extra: Any
                  ) -> dict[str, Any]:
    """A CLIP (or, with SigLIP's model_type, SigLIP) vision config.json section."""
    return {"model_type": model_type, "hidden_size": cfg.dim,
            "intermediate_size": cfg.hidden_mlp_dim, "num_hidden_layers": cfg.depth,
            "num_attention_heads": cfg.heads, "image_size": cfg.image_size,
            "patch_size": cfg.patch_size, "num_channels": cfg.channels,
            "hidden_act": ACT_NAMES[cfg.act], "layer_norm_eps": cfg.norm_eps,
            **(extra or {"projection_dim": cfg.dim})}


def export_vision(state: dict[str, Tensor], cfg: VisionConfig) -> dict[str, Tensor]:
    """CLIP vision weights (no prefix) from our `vision.` tensors (without the prefix)."""
    bias = state["patch_embed.bias"]
    pos = state["pos_embed"][0] if "pos_embed" in state else pos_table(cfg)
    out = {"embeddings.patch_embedding.weight": state["patch_embed.weight"],
           "embeddings.class_embedding": state["cls_token"].reshape(-1),
           "embeddings.position_embedding.weight": torch.cat(
               [torch.zeros(1, cfg.dim), pos + bias]),
           "pre_layrnorm.weight": state["pre_norm.weight"],
           "pre_layrnorm.bias": state["pre_norm.bias"],
           "post_layernorm.weight": state["norm.weight"],
           "post_layernorm.bias": state["norm.bias"]}
    export_layers(state, cfg, out)
    return out


def pos_table(cfg: VisionConfig) -> Tensor:
    """Fixed sin-cos positions as the learned table a checkpoint stores."""
    from tinyvlm.models.vision import sincos_2d

    return sincos_2d(cfg.grid, cfg.dim)
