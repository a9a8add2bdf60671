"""LlavaForConditionalGeneration directories <-> TinyVLM: a CLIP or SigLIP tower, the
two-layer GELU projector, a Llama / Qwen2 / Mixtral / Qwen2-MoE language model, the image
token and how many positions an image takes (`image_seq_length`).

Both key layouts are read: transformers 5's (`model.vision_tower.`, `model.language_model.`,
`model.multi_modal_projector.`, `lm_head.`) and the earlier one the hub's LLaVA checkpoints
use (`vision_tower.vision_model.`, `language_model.model.`, `language_model.lm_head.`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinyvlm.config import ConnectorConfig, LanguageConfig, ModelConfig, VisionConfig
from tinyvlm.models.hf import clip, llama, mixtral, qwen2, qwen2_moe, siglip
from tinyvlm.models.hf.common import Unsupported, Weights, require, strip_prefix

VISION = {"clip_vision_model": clip, "clip": clip, "siglip_vision_model": siglip,
          "siglip": siglip}
LANGUAGE: dict[str, Any] = {"llama": llama, "mistral": llama, "qwen2": qwen2,
                            "mixtral": mixtral, "qwen2_moe": qwen2_moe}
VISION_PREFIXES = ("model.vision_tower.vision_model.", "model.vision_tower.",
                   "vision_tower.vision_model.", "vision_tower.", "vision_model.", "")
BODY_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
HEAD_KEYS = ("lm_head.weight", "language_model.lm_head.weight")
PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")


def vision_family(hf: dict[str, Any], where: Any) -> Any:
    kind = hf.get("model_type")
    require(kind in VISION, f"vision model_type {kind!r} is not supported (known: "
            f"{sorted(VISION)})", where)
    return VISION[kind]


def language_family(hf: dict[str, Any], where: Any) -> Any:
    kind = hf.get("model_type")
    require(kind in LANGUAGE, f"language model_type {kind!r} is not supported (known: "
            f"{sorted(LANGUAGE)})", where)
    return LANGUAGE[kind]


def language_config(hf: dict[str, Any], where: Any) -> LanguageConfig:
    return language_family(hf, where).lm_config(hf, where)


def import_language(state: dict[str, Tensor], cfg: LanguageConfig, family: Any, where: Any
                    ) -> dict[str, Tensor]:
    body = Weights(strip_prefix(state, BODY_PREFIXES), where)
    head = next((state[k] for k in HEAD_KEYS if k in state), None)
    lm_import = getattr(family, "import_lm", llama.import_lm)
    out = lm_import(body, head, cfg)
    body.check_used("language model")
    return out


def import_vision(state: dict[str, Tensor], cfg: VisionConfig, family: Any, where: Any
                  ) -> dict[str, Tensor]:
    tower = Weights(strip_prefix(state, VISION_PREFIXES), where)
    if family is clip or family is siglip:
        # A whole CLIP/SigLIP model also holds a text tower and projections: not ours.
        tower.ignore("text_model.", "visual_projection.", "text_projection.", "logit_",
                     "multi_modal_projector.", "language_model.", "lm_head.", "model.")
    out = family.import_vision(tower, cfg)
    tower.check_used("vision tower")
    return out


def feature_layer(layer: Any, depth: int, where: Any) -> int:
    """LLaVA's vision_feature_layer (an index into hidden_states, whose entry 0 is the
    embeddings) as the block whose output it is."""
    require(isinstance(layer, int), f"vision_feature_layer {layer!r}: one layer is supported "
            "(several concatenated are not)", where)
    block = layer - 1 if layer > 0 else layer
    require(layer != 0 and -depth <= block < depth, f"vision_feature_layer {layer} does not "
            f"name the output of one of the tower's {depth} blocks", where)
    return block


# LlavaConfig's tower when config.json names none (LLaVA-1.5's CLIP ViT-L/14 at 336 px).
LLAVA_VISION = {"model_type": "clip_vision_model", "hidden_size": 1024,
                "intermediate_size": 4096, "patch_size": 14, "image_size": 336,
                "num_hidden_layers": 24, "num_attention_heads": 16}


def model_config(hf: dict[str, Any], where: Any) -> tuple[ModelConfig, Any, Any]:
    # Older config.json files leave defaults out, the nested model types included.
    vcfg_raw = hf.get("vision_config") or dict(LLAVA_VISION)
    vcfg_raw = {"model_type": "clip_vision_model", **vcfg_raw}
    tcfg_raw = {"model_type": "llama", **(hf.get("text_config") or {})}
    vfam, lfam = vision_family(vcfg_raw, where), language_family(tcfg_raw, where)
    vision = vfam.vision_config(vcfg_raw, where)
    vision.feature_layer = feature_layer(hf.get("vision_feature_layer", -2), vision.depth, where)
    strategy = hf.get("vision_feature_select_strategy", "default")
    require(strategy in ("default", "full"), f"vision_feature_select_strategy {strategy!r} "
            "is not supported", where)
    require(strategy == "full" or vision.cls_token, "the 'default' feature strategy drops "
            "the first token, which for a tower without [CLS] is a patch: not supported",
            where)
    vision.feature_cls = strategy == "full" and vision.cls_token
    language = lfam.lm_config(tcfg_raw, where)
    if "tie_word_embeddings" in hf and "tie_word_embeddings" not in tcfg_raw:
        language.tie_embeddings = bool(hf["tie_word_embeddings"])
    act = hf.get("projector_hidden_act", "gelu")
    require(act == "gelu", f"projector_hidden_act {act!r}: only gelu is supported", where)
    config = ModelConfig(vision=vision, connector=ConnectorConfig(kind="mlp"), language=language)
    tokens = hf.get("image_seq_length", vision.feature_tokens)
    require(tokens == vision.feature_tokens, f"image_seq_length is {tokens} but the tower "
            f"gives {vision.feature_tokens} features per image", where)
    return config, vfam, lfam


def import_projector(state: dict[str, Tensor], where: Any) -> dict[str, Tensor]:
    w = Weights(strip_prefix(state, PROJECTOR_PREFIXES), where)
    out = {}
    for a, b in (("linear_1", "fc1"), ("linear_2", "fc2")):
        weight = w.take(f"{a}.weight")
        out[f"{b}.weight"] = weight
        bias = w.get(f"{a}.bias")
        out[f"{b}.bias"] = bias if bias is not None else torch.zeros(weight.shape[0])
    w.check_used("projector")
    return out


def import_state(state: dict[str, Tensor], config: ModelConfig, vfam: Any, lfam: Any,
                 where: Path) -> dict[str, Tensor]:
    vision_keys = {k: v for k, v in state.items() if "vision_tower." in k}
    proj_keys = {k: v for k, v in state.items() if "multi_modal_projector." in k}
    lang_keys = {k: v for k, v in state.items() if k not in vision_keys and k not in proj_keys}
    out = {}
    for k, v in import_vision(vision_keys, config.vision, vfam, where).items():
        out["vision." + k] = v
    for k, v in import_projector(proj_keys, where).items():
        out["connector." + k] = v
    for k, v in import_language(lang_keys, config.language, lfam, where).items():
        out["language." + k] = v
    return out


def export_families(config: ModelConfig) -> tuple[Any, Any]:
    """The (vision, language) families a model exports as, or Unsupported saying why."""
    v = config.vision
    problems = []
    if v.moe is not None:
        problems.append("its vision tower has MoE layers")
    if v.feature_norm:
        problems.append("its connector reads features after the vision tower's final "
                        "LayerNorm, which LLaVA never applies (set vision.feature_norm: "
                        "false before training)")
    if config.connector.kind != "mlp" or (config.connector.hidden_dim or config.language.dim) \
            != config.language.dim:
        problems.append("LLaVA's projector is a two-layer GELU MLP as wide as the language "
                        "model")
    why_clip, why_siglip = clip.exportable(v), siglip.exportable(v)
    vfam = clip if why_clip is None else siglip if why_siglip is None else None
    if vfam is None:
        problems.append(f"its vision tower is neither a CLIP one ({why_clip}) nor a SigLIP one "
                        f"({why_siglip})")
    lang = config.language
    if lang.moe is None:  # Qwen2 biases q/k/v only; Llama all four or none
        lfam = qwen2 if lang.qkv_bias and not lang.o_bias else llama
    else:
        lfam = mixtral if mixtral.exportable(lang) is None else qwen2_moe
    why = lfam.exportable(lang)
    if why is not None:
        problems.append(f"its language model is not a {lfam.__name__.rsplit('.', 1)[-1]} "
                        f"one: {why}")
    if problems:
        raise Unsupported("cannot be exported exactly: " + "; ".join(problems))
    return vfam, lfam


def export_state(state: dict[str, Tensor], config: ModelConfig, vfam: Any, lfam: Any
                 ) -> dict[str, Tensor]:
    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    out = {}
    for k, v in vfam.export_vision(part("vision."), config.vision).items():
        out["model.vision_tower." + k] = v
    conn = part("connector.")
    for a, b in (("linear_1", "fc1"), ("linear_2", "fc2")):
        out[f"model.multi_modal_projector.{a}.weight"] = conn[f"{b}.weight"]
        out[f"model.multi_modal_projector.{a}.bias"] = conn[f"{b}.bias"]
    lang = part("language.")
    lm_export = getattr(lfam, "export_lm", llama.export_lm)
    body, head = lm_export(lang, config.language)
    if lfam in (qwen2, qwen2_moe) and not config.language.qkv_bias:
        # Qwen2 always has q/k/v biases: zero ones add exactly nothing.
        for i in range(config.language.depth):
            for p in ("q_proj", "k_proj", "v_proj"):
                weight = body[f"layers.{i}.self_attn.{p}.weight"]
                body[f"layers.{i}.self_attn.{p}.bias"] = torch.zeros(weight.shape[0])
    for k, v in body.items():
        out["model.language_model." + k] = v
    out["lm_head.weight"] = head if head is not None else lang["embed.weight"]
    return out


def export_config(config: ModelConfig, vfam: Any, lfam: Any) -> dict[str, Any]:
    text = lfam.export_config(config.language)
    text.update(bos_token_id=config.bos_token_id if config.bos_token_id >= 0 else None,
                eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    strategy = "full" if (config.vision.feature_cls or not config.vision.cls_token) \
        else "default"
    return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "vision_config": vfam.export_config(config.vision), "text_config": text,
            "image_token_id": config.image_token_id,
            "image_seq_length": config.vision.feature_tokens,
            "vision_feature_layer": config.vision.feature_layer % config.vision.depth + 1,
            "vision_feature_select_strategy": strategy, "projector_hidden_act": "gelu",
            "multimodal_projector_bias": True,
            "tie_word_embeddings": config.language.tie_embeddings,
            "dtype": "float32"}
