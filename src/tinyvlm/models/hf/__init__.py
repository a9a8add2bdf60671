"""Hugging Face checkpoints in and out: one module per family (config map + key map, both
directions), and the three entry points: import a LLaVA directory, assemble a VLM from a
vision tower and a language model, export a TinyVLM as a LLaVA directory. transformers is
never imported: the files are read and written directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tinyvlm.config import ConnectorConfig, ModelConfig, check_model
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.io import atomic_dir, usual_mode, write_json, write_text
from tinyvlm.models.hf import llava, processor
from tinyvlm.models.hf.common import Unsupported, read_config, read_weights
from tinyvlm.models.hf.tokenizer import load_tokenizer, tokenizer_files
from tinyvlm.models.vlm import TinyVLM, check_replaceable

__all__ = ["Unsupported", "assemble", "export_model", "import_model", "is_hf_directory"]


def is_hf_directory(directory: str | Path) -> bool:
    """A transformers checkpoint (config.json with a model_type, not a tinyvlm config)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("format") != "tinyvlm" and "model_type" in raw


def _ids(config: ModelConfig, tokenizer: Tokenizer) -> None:
    config.chat = tokenizer.chat
    config.pad_token_id, config.bos_token_id = tokenizer.pad_id, tokenizer.bos_id
    config.image_token_id, config.eos_token_id = tokenizer.image_id, tokenizer.end_id
    config.stop_token_ids = list(tokenizer.stop_ids)


def _build(config: ModelConfig, tokenizer: Tokenizer, state: dict[str, torch.Tensor],
           where: Path) -> TinyVLM:
    check_model(config, where / "config.json", "config")
    model = TinyVLM(config, tokenizer)
    model.load_tensors(state, source=where)
    return model.eval()


def import_model(directory: str | Path) -> TinyVLM:
    """A LlavaForConditionalGeneration directory as a TinyVLM (exact in fp32)."""
    directory = Path(directory)
    hf = read_config(directory)
    if hf.get("model_type") != "llava":
        raise InputError(f"model_type {hf.get('model_type')!r} is not a LLaVA model; assemble "
                         "one with --vision DIR --language DIR", directory / "config.json")
    config, vfam, lfam = llava.model_config(hf, directory / "config.json")
    config.vision.preprocess = processor.read_preprocess(directory, config.vision)
    image_id = hf.get("image_token_id", hf.get("image_token_index", 32000))
    tokenizer = load_tokenizer(directory)
    image_token = tokenizer.backend.id_to_token(image_id) if image_id is not None else None
    if image_token is None:
        raise InputError(f"image_token_id {image_id} is not in tokenizer.json", directory)
    tokenizer = load_tokenizer(directory, image_token=image_token)
    _ids(config, tokenizer)
    state = llava.import_state(read_weights(directory), config, vfam, lfam, directory)
    return _build(config, tokenizer, state, directory)


def assemble(vision_dir: str | Path, language_dir: str | Path, template: str | None = None,
             feature_layer: int | None = None, seed: int = 0) -> TinyVLM:
    """A new VLM from a CLIP/SigLIP tower and a language model, with a fresh projector; the
    tokenizer gains an `<image>` token (and the embedding a row) if it has none."""
    vision_dir, language_dir = Path(vision_dir), Path(language_dir)
    vraw, lraw = read_config(vision_dir), read_config(language_dir)
    vfam = llava.vision_family(vraw, vision_dir / "config.json")
    vision = vfam.vision_config(vraw, vision_dir / "config.json")
    if feature_layer is not None:
        vision.feature_layer = llava.feature_layer(feature_layer, vision.depth, "--feature-layer")
    vision.preprocess = processor.read_preprocess(vision_dir, vision)
    lfam = llava.language_family(lraw, language_dir / "config.json")
    language = lfam.lm_config(lraw, language_dir / "config.json")
    tokenizer = load_tokenizer(language_dir, template=template)
    config = ModelConfig(vision=vision, connector=ConnectorConfig(kind="mlp"), language=language)
    vstate = llava.import_vision(read_weights(vision_dir), vision, vfam, vision_dir)
    lstate = llava.import_language(read_weights(language_dir), language, lfam, language_dir)
    vocab = max(language.vocab_size, tokenizer.vocab_size)
    if vocab > language.vocab_size:  # the added image token: a row at the embeddings' mean
        for key in ("embed.weight", "lm_head.weight"):
            if key in lstate:
                table = lstate[key]
                extra = table.mean(0, keepdim=True).expand(vocab - table.shape[0], -1)
                lstate[key] = torch.cat([table, extra])
        language.vocab_size = vocab
    _ids(config, tokenizer)
    torch.manual_seed(seed)
    model = TinyVLM(config, tokenizer)
    state = {f"vision.{k}": v for k, v in vstate.items()}
    state |= {f"language.{k}": v for k, v in lstate.items()}
    state |= {k: v for k, v in model.state_dict().items() if k.startswith("connector.")}
    return _build(config, tokenizer, state, language_dir)


def export_model(model: TinyVLM, out: str | Path) -> Path:
    """Write `model` as a LlavaForConditionalGeneration directory (config.json,
    model.safetensors, tokenizer files, preprocessor_config.json, processor_config.json);
    Unsupported, naming every reason, when it cannot be expressed exactly."""
    out = Path(out)
    config = model.config
    vfam, lfam = llava.export_families(config)
    if model.tokenizer is None:
        raise InputError("the model has no tokenizer to export")
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    tensors = llava.export_state(state, config, vfam, lfam)
    tower = "clip" if vfam is llava.clip else "siglip"
    check_replaceable_hf(out)
    with atomic_dir(out) as tmp:
        write_json(tmp / "config.json", llava.export_config(config, vfam, lfam))
        save_file({k: v.contiguous().clone() for k, v in tensors.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        usual_mode(tmp / "model.safetensors")
        model.tokenizer.save(tmp / "tokenizer.json")
        files = tokenizer_files(model.tokenizer)
        write_json(tmp / "tokenizer_config.json", files)
        write_json(tmp / "chat_template.json", {"chat_template": files["chat_template"]})
        write_json(tmp / "preprocessor_config.json", processor.write_preprocess(
            config.vision, tower))
        write_json(tmp / "processor_config.json", _processor_config(model, tower))
        gen: dict[str, Any] = {"eos_token_id": config.eos_token_id,
                               "pad_token_id": config.pad_token_id}
        if config.bos_token_id >= 0:
            gen["bos_token_id"] = config.bos_token_id
        write_json(tmp / "generation_config.json", gen)
        write_text(tmp / "README.md", "# Exported from tinyvlm\n\nLoad with "
                   "`transformers.LlavaForConditionalGeneration.from_pretrained(path)` and "
                   "`AutoProcessor.from_pretrained(path)`.\n")
    return out


def _processor_config(model: TinyVLM, tower: str) -> dict[str, Any]:
    v = model.config.vision
    return {"processor_class": "LlavaProcessor", "image_token": model.config.chat.image,
            "patch_size": v.patch_size,
            "vision_feature_select_strategy": "default" if v.cls_token and not v.feature_cls
            else "full",
            "num_additional_image_tokens": int(v.cls_token)}


def check_replaceable_hf(directory: Path) -> None:
    """Export replaces only nothing, an empty directory or an earlier export."""
    if is_hf_directory(directory) and (directory / "model.safetensors").is_file():
        return
    check_replaceable(directory)
