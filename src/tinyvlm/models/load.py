"""Model directories of either kind: tinyvlm's own, or a Hugging Face checkpoint (a LLaVA
directory, imported on the fly). Everything that loads a model by path goes through here, so
a recipe, `tinyvlm eval` or `tinyvlm generate` may name either."""

from __future__ import annotations

from pathlib import Path

from tinyvlm.config import ChatFormat
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.io import read_json
from tinyvlm.models.hf import import_model, is_hf_directory
from tinyvlm.models.hf.tokenizer import load_tokenizer
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.schema import from_dict


def load_model(directory: str | Path, map_location: str = "cpu") -> TinyVLM:
    directory = Path(directory)
    if is_hf_directory(directory):
        return import_model(directory).to(map_location)
    return TinyVLM.from_pretrained(directory, map_location)


def load_tokenizer_of(directory: str | Path) -> Tokenizer:
    """The tokenizer of a model directory (tinyvlm's, with its chat format; or an HF one
    with its chat template), without loading the weights."""
    directory = Path(directory)
    if is_hf_directory(directory):
        raw = read_json(directory / "config.json")
        image_id = raw.get("image_token_id", raw.get("image_token_index"))
        probe = load_tokenizer(directory)
        token = probe.backend.id_to_token(image_id) if image_id is not None else None
        return load_tokenizer(directory, image_token=token)
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise InputError("not a model directory: config.json is missing", directory)
    raw = read_json(cfg)
    chat = from_dict(ChatFormat, raw.get("chat", {}), source=cfg, key="config.chat") \
        if isinstance(raw, dict) else None
    return Tokenizer.load(directory / "tokenizer.json", chat)
