"""The assembled vision-language model: encoder -> connector -> language model."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tinyvlm.config import MODEL_MODULES, ModelConfig, check_model
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.io import (
    atomic_dir,
    check_checksums,
    read_json,
    usual_mode,
    write_checksums,
    write_json,
    write_text,
)
from tinyvlm.models.connectors import build_connector
from tinyvlm.models.context import ForwardContext, VisualConditioning
from tinyvlm.models.language import FastVState, KVCache, LanguageModel
from tinyvlm.models.perception import PruneProjector
from tinyvlm.models.vision import VisionEncoder, VisionOutput
from tinyvlm.schema import from_dict, to_dict

FORMAT_VERSION = 1


@dataclass
class VLMOutput:
    logits: Tensor | None  # (B, T, vocab), or only the last positions when asked
    hidden: Tensor  # (B, T, dim): the language model's final hidden states
    vision: VisionOutput | None = None
    records: list[Any] = field(default_factory=list)  # per-layer statistics (routers, ...)


StepCallback = Callable[[Tensor], "Tensor | None"]


class TinyVLM(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.vision = VisionEncoder(config.vision)
        self.connector = build_connector(config.connector, config.vision, config.language)
        if isinstance(self.connector, PruneProjector):  # it ranks patches by [CLS] attention
            self.vision.cls_layers |= set(self.connector.layers)
        self.language = LanguageModel(config.language)

    @classmethod
    def from_tokenizer(cls, config: ModelConfig, tokenizer: Tokenizer) -> TinyVLM:
        """Build a fresh model whose vocabulary and special-token ids come from `tokenizer`."""
        config.language.vocab_size = tokenizer.vocab_size
        config.chat = tokenizer.chat
        config.pad_token_id, config.bos_token_id = tokenizer.pad_id, tokenizer.bos_id
        config.image_token_id, config.eos_token_id = tokenizer.image_id, tokenizer.end_id
        config.stop_token_ids = list(tokenizer.stop_ids)
        return cls(config, tokenizer)

    @property
    def image_tokens(self) -> int:
        """Tokens that one `<image>` placeholder expands to."""
        return self.connector.num_tokens

    # ---------------------------------------------------------------- forward

    def encode_images(self, pixel_values: Tensor, ctx: ForwardContext | None = None
                      ) -> tuple[VisualConditioning, VisionOutput]:
        vision = self.vision(pixel_values, ctx)
        return self.connector(vision), vision

    def embed(self, input_ids: Tensor, image_features: Tensor | None) -> Tensor:
        """Token embeddings with image features written where the image tokens stand,
        images in the order their placeholders appear."""
        embeds = self.language.embed(input_ids)
        is_image = input_ids == self.config.image_token_id
        n_slots = int(is_image.sum())
        n_feats = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if n_slots != n_feats:
            raise ValueError(f"{n_slots} image-token positions but {n_feats} image features "
                             f"({self.image_tokens} per image)")
        if image_features is not None and n_feats:
            feats = image_features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats)
        return embeds

    def condition(self, input_ids: Tensor, pixel_values: Tensor | None,
                  image_rows: Tensor | None, ctx: ForwardContext,
                  conditioning: VisualConditioning | None = None
                  ) -> tuple[Tensor, VisionOutput | None]:
        """The input embeddings, with the images' conditioning taken into `ctx` (its weight
        deltas stay there for every later call with the same context)."""
        vision = None
        if conditioning is None and pixel_values is not None:
            conditioning, vision = self.encode_images(pixel_values, ctx)
        ctx.condition(conditioning, image_rows)
        tokens = conditioning.tokens if conditioning is not None else None
        return self.embed(input_ids, tokens), vision

    def slot_mask(self, input_ids: Tensor, attention_mask: Tensor | None,
                  conditioning: VisualConditioning | None, ctx: ForwardContext
                  ) -> Tensor | None:
        """The attention mask without the image slots an image leaves unused (a connector
        whose images use different numbers of tokens); unchanged otherwise."""
        if conditioning is None or conditioning.token_mask is None:
            return attention_mask
        is_image = input_ids == self.config.image_token_id
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None \
            else attention_mask.bool().clone()
        mask[is_image] = conditioning.token_mask.reshape(-1).to(mask.device)
        ctx.holes = True
        return mask.long()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        position_ids: Tensor | None = None,
        conditioning: VisualConditioning | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        task_ids: Tensor | None = None,
        image_rows: Tensor | None = None,
    ) -> VLMOutput:
        """Logits for `input_ids` (B, T). attention_mask marks real tokens (left or right
        padding); image_rows (images,) is the row of each image (needed by connectors with
        weight deltas); logits_to_keep > 0 computes only the last positions' logits."""
        # Each tower derives its own token mask; the context carries records and task ids.
        ctx = ForwardContext(task_ids=task_ids)
        if conditioning is None and pixel_values is not None:
            conditioning, vision = self.encode_images(pixel_values, ctx)
        else:
            vision = None
        embeds, _ = self.condition(input_ids, None, image_rows, ctx, conditioning)
        attention_mask = self.slot_mask(input_ids, attention_mask, conditioning, ctx)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, input_ids.shape, input_ids.device)
        hidden = self.language(embeds, position_ids, attention_mask, cache, ctx)
        head_in = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        return VLMOutput(self.language.lm_head(head_in), hidden, vision, ctx.records)

    # ---------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        max_new_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        image_rows: Tensor | None = None,
        on_step: StepCallback | None = None,
    ) -> Tensor:
        """New tokens (B, <= max_new_tokens) for a left-padded batch; pad after each row's EOS.

        temperature 0 is greedy decoding. Without the cache every step recomputes the whole
        sequence: slower, and the reference the cached path must match. The forward context
        (and so a connector's weight deltas) is built once and kept for every step.
        on_step(tokens) sees each step's new tokens (B,) and may return a (B,) bool tensor of
        rows to stop (a stop string was produced); their token of this step is kept.
        """
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask[:, -1].eq(0).any():
            raise ValueError("generate() needs left padding: a row ends with padding")
        if t + max_new_tokens > self.config.language.max_seq_len:
            raise ValueError(f"{t} prompt tokens + {max_new_tokens} new tokens exceed "
                             f"max_seq_len {self.config.language.max_seq_len}")
        ctx = ForwardContext()
        fastv = self.config.language.fastv
        if fastv is not None:  # prunes image tokens after layer fastv.layer (inference only)
            ctx.fastv = FastVState(fastv.layer, fastv.keep,
                                   input_ids == self.config.image_token_id)
        conditioning = None
        if pixel_values is not None:
            conditioning, _ = self.encode_images(pixel_values, ctx)
        embeds, _ = self.condition(input_ids, None, image_rows, ctx, conditioning)
        attention_mask = self.slot_mask(input_ids, attention_mask, conditioning, ctx)
        positions = positions_from_mask(attention_mask, input_ids.shape, input_ids.device)
        cache = KVCache(self.config.language, b, t + max_new_tokens) if use_cache else None
        hidden = self.language(embeds, positions, attention_mask, cache, ctx)
        pad = self.config.pad_token_id
        stops = torch.tensor([self.config.eos_token_id, *self.config.stop_token_ids],
                             device=input_ids.device)
        finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        for step in range(max_new_tokens):
            ctx.records.clear()  # router statistics are not kept while generating
            token = sample(self.language.lm_head(hidden[:, -1]).float(), temperature, top_p,
                           generator).masked_fill(finished, pad)
            new_tokens.append(token)
            finished |= torch.isin(token, stops)
            if on_step is not None and (stop := on_step(token)) is not None:
                finished |= stop.to(finished.device)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], dim=1)
            next_pos = positions[:, -1:] + 1
            next_embed = self.language.embed(token[:, None])
            if cache is not None:
                positions = next_pos
            else:
                embeds = torch.cat([embeds, next_embed], dim=1)
                positions = torch.cat([positions, next_pos], dim=1)
            hidden = self.language(next_embed if cache is not None else embeds, positions,
                                   attention_mask, cache, ctx)
        return torch.stack(new_tokens, dim=1)

    # ---------------------------------------------------------------- files

    def save_pretrained(self, directory: str | Path, card: str | None = None) -> Path:
        """Write config.json, model.safetensors, tokenizer.json and README.md.

        Everything goes to a temporary sibling directory that replaces `directory` in one
        rename, so a crash never leaves a half-written model behind.
        """
        directory = Path(directory)
        if self.tokenizer is None:
            raise ValueError("save_pretrained needs the model's tokenizer")
        check_replaceable(directory)
        with atomic_dir(directory) as tmp:
            write_json(tmp / "config.json", {"format": "tinyvlm",
                                             "format_version": FORMAT_VERSION,
                                             **to_dict(self.config)})
            save_file(self._tensors(), str(tmp / "model.safetensors"), metadata={"format": "pt"})
            usual_mode(tmp / "model.safetensors")
            self.tokenizer.save(tmp / "tokenizer.json")
            write_text(tmp / "README.md", card or self.model_card())
            write_checksums(tmp)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> TinyVLM:
        directory = Path(directory)
        if not directory.is_dir():
            raise InputError("model directory not found", directory)
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise InputError("not a model directory: config.json is missing", directory)
        raw = read_json(cfg_path)
        if not isinstance(raw, dict) or raw.pop("format", None) != "tinyvlm":
            raise InputError("config.json is not a tinyvlm model config", cfg_path)
        version = raw.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise InputError(f"unsupported format_version {version!r}", cfg_path)
        config = from_dict(ModelConfig, raw, source=cfg_path, key="config")
        check_model(config, cfg_path, "config")
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise InputError("model.safetensors is missing", directory)
        if (problem := check_checksums(directory)) is not None:
            raise InputError(problem, directory)
        tokenizer = Tokenizer.load(directory / "tokenizer.json", config.chat)
        _check_tokenizer(tokenizer, config, directory)
        try:
            model = cls(config, tokenizer)
        except ValueError as e:
            raise InputError(f"cannot build the model of config.json: {e}", cfg_path) from None
        try:
            state = load_file(str(weights), device=map_location)
        except Exception as e:  # safetensors raises its own error types
            raise InputError(f"cannot read weights ({e})", weights) from None
        model.load_tensors(state, source=weights)
        return model

    def _tensors(self) -> dict[str, Tensor]:
        state = self.state_dict()
        if self.config.language.tie_embeddings:
            state.pop("language.lm_head.weight")  # the same storage as the embedding
        return {k: v.detach().contiguous() for k, v in state.items()}

    def load_tensors(self, state: dict[str, Tensor], source: Path | str | None = None) -> None:
        expected = self._tensors()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise InputError(f"weights do not match the config: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}", source)
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise InputError(f"'{name}' has shape {tuple(tensor.shape)}, the config "
                                 f"expects {tuple(expected[name].shape)}", source)
        bad = [n for n, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            warnings.warn(f"{source}: {len(bad)} weight tensors hold NaN or inf values "
                          f"({', '.join(bad[:3])}); the model's outputs will be too",
                          NonFiniteWeightsWarning, stacklevel=2)
        self.load_state_dict(state, strict=False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def parameters_by_module(self) -> dict[str, int]:
        """Parameters of the vision encoder, the connector and the language model."""
        return {name: sum(p.numel() for p in getattr(self, name).parameters())
                for name in MODEL_MODULES}

    def model_card(self) -> str:
        c = self.config
        return (
            "# tinyvlm model\n\n"
            f"- parameters: {self.num_parameters():,}\n"
            f"- vision: ViT {c.vision.depth} layers, width {c.vision.dim}, "
            f"{c.vision.image_size}px images, patch {c.vision.patch_size} "
            f"({c.vision.num_patches} patches)\n"
            f"- connector: {c.connector.kind} ({self.image_tokens} tokens per image)\n"
            f"- language: {c.language.depth} layers, width {c.language.dim}, "
            f"{c.language.heads} heads ({c.language.kv_heads} key/value), "
            f"vocabulary {c.language.vocab_size}\n\n"
            "Load with `tinyvlm.TinyVLM.from_pretrained(path)`; try it with "
            "`tinyvlm generate PATH --image IMG --prompt \"...\"`.\n"
        )


def check_replaceable(directory: Path) -> None:
    """A model directory may replace only nothing, an empty directory or an earlier model
    directory: never a file or a directory of other things, which would be lost."""
    if directory.is_file() or directory.is_symlink():
        raise InputError("a file is there; a model directory would replace it", directory)
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    try:
        ours = json.loads((directory / "config.json").read_text()).get("format") == "tinyvlm"
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise InputError("this directory holds other files, not a tinyvlm model; writing a "
                         "model here would delete them (choose another directory)", directory)


class NonFiniteWeightsWarning(UserWarning):
    """A model was loaded whose weights hold NaN or inf."""


def _check_tokenizer(tokenizer: Tokenizer, config: ModelConfig, directory: Path) -> None:
    """The tokenizer fits the embedding and its special tokens have the config's ids."""
    if tokenizer.vocab_size > config.language.vocab_size:
        raise InputError(f"tokenizer.json has {tokenizer.vocab_size} tokens but the embedding "
                         f"only {config.language.vocab_size}", directory)
    ids = {"pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.bos_id,
           "image_token_id": tokenizer.image_id, "eos_token_id": tokenizer.end_id}
    for key, tid in ids.items():
        if getattr(config, key) != tid:
            raise InputError(f"config.json's {key} is {getattr(config, key)} but the "
                             f"tokenizer's is {tid}", directory)


def positions_from_mask(attention_mask: Tensor | None, shape: torch.Size,
                        device: torch.device | None = None) -> Tensor:
    """Position ids that skip left padding, so a padded row matches the same row unpadded."""
    if attention_mask is None:
        return torch.arange(shape[1], device=device).expand(shape[0], -1)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sample(logits: Tensor, temperature: float, top_p: float,
           generator: torch.Generator | None) -> Tensor:
    """Greedy for temperature 0; otherwise temperature and nucleus (top-p) sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
