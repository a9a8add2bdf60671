"""Range checks of configuration values, each failure one InputError naming the key, the rule
and the value: run when a recipe or a config.json loads, before any work."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tinyvlm.config.data import DataConfig, TokenizerConfig
from tinyvlm.config.model import LanguageConfig, ModelConfig, VisionConfig
from tinyvlm.config.stages import BuildPairsConfig, EvalConfig, StageConfig
from tinyvlm.errors import InputError

Rule = tuple[bool, str, str, Any]  # (holds, key, what it must be, the value)
SEED_MAX = 2**63 - 1  # torch generators take a 64-bit seed


def seed_rule(seed: int, key: str = "seed") -> Rule:
    return (0 <= seed <= SEED_MAX, key, "in 0..2^63-1", seed)


def require(rules: Iterable[Rule], prefix: str, source: str | Path | None) -> None:
    for ok, key, must, value in rules:
        if not ok:
            raise InputError(f"'{prefix}.{key}' must be {must}, got {value!r}", source)


def finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _positive(obj: Any, *names: str) -> list[Rule]:
    return [(getattr(obj, n) >= 1, n, ">= 1", getattr(obj, n)) for n in names]


def _dropout(x: float) -> bool:
    return finite(x) and 0 <= x < 1


def vision_rules(v: VisionConfig) -> list[Rule]:
    rules = _positive(v, "image_size", "patch_size", "channels", "dim", "depth", "heads")
    if rules and not all(r[0] for r in rules):
        return rules
    return [
        *rules,
        (v.image_size % v.patch_size == 0, "patch_size",
         f"a divisor of image_size ({v.image_size})", v.patch_size),
        (v.dim % v.heads == 0, "heads", f"a divisor of dim ({v.dim})", v.heads),
        (finite(v.mlp_ratio) and v.mlp_ratio > 0, "mlp_ratio", "> 0", v.mlp_ratio),
        (v.position in ("learned", "sincos"), "position", "learned or sincos", v.position),
        (v.position != "sincos" or v.dim % 4 == 0, "dim",
         "a multiple of 4 with sincos positions", v.dim),
        (finite(v.norm_eps) and v.norm_eps > 0, "norm_eps", "> 0", v.norm_eps),
        (_dropout(v.dropout), "dropout", "in [0, 1)", v.dropout),
        (all(-v.depth <= i < v.depth for i in v.cls_attention_layers), "cls_attention_layers",
         f"layer indices of the {v.depth} blocks", v.cls_attention_layers),
        (v.act in ("gelu", "quick_gelu", "gelu_tanh"), "act", "gelu, quick_gelu or gelu_tanh",
         v.act),
        (-v.depth <= v.feature_layer < v.depth, "feature_layer",
         f"a block index of the {v.depth} blocks", v.feature_layer),
        (v.cls_token or not v.feature_cls, "feature_cls", "false without a [CLS] token",
         v.feature_cls),
        (v.preprocess.resize in ("square", "shortest_edge"), "preprocess.resize",
         "square or shortest_edge", v.preprocess.resize),
        (v.preprocess.resample in ("bicubic", "bilinear", "nearest"), "preprocess.resample",
         "bicubic, bilinear or nearest", v.preprocess.resample),
        (len(v.preprocess.mean) == v.channels and len(v.preprocess.std) == v.channels
         and all(finite(x) and x > 0 for x in v.preprocess.std), "preprocess",
         f"mean and std with {v.channels} values each (std > 0)",
         [v.preprocess.mean, v.preprocess.std]),
    ]


def language_rules(lang: LanguageConfig) -> list[Rule]:
    rules = _positive(lang, "dim", "depth", "heads", "kv_heads", "max_seq_len")
    rules.append((lang.vocab_size >= 0, "vocab_size", ">= 0", lang.vocab_size))
    if not all(r[0] for r in rules):
        return rules
    scaling = lang.rope_scaling
    return [
        *rules,
        (lang.head_size is not None or lang.dim % lang.heads == 0, "heads",
         f"a divisor of dim ({lang.dim})", lang.heads),
        (lang.heads % lang.kv_heads == 0, "kv_heads", f"a divisor of heads ({lang.heads})",
         lang.kv_heads),
        (lang.head_size is None or (lang.head_size >= 2 and lang.head_size % 2 == 0),
         "head_size", "an even number >= 2 or null", lang.head_size),
        (lang.head_size is not None or lang.dim % lang.heads != 0
         or (lang.dim // lang.heads) % 2 == 0, "heads",
         "such that dim / heads is even (rotary positions rotate pairs)", lang.heads),
        (scaling is None or scaling.kind in ("llama3", "linear"), "rope_scaling.kind",
         "llama3 or linear", scaling and scaling.kind),
        (scaling is None or (finite(scaling.factor) and scaling.factor > 0),
         "rope_scaling.factor", "> 0", scaling and scaling.factor),
        (scaling is None or scaling.kind != "llama3"
         or (finite(scaling.high_freq_factor) and finite(scaling.low_freq_factor)
             and scaling.high_freq_factor > scaling.low_freq_factor > 0
             and scaling.original_max_len >= 1), "rope_scaling",
         "high_freq_factor > low_freq_factor > 0 and original_max_len >= 1",
         scaling and [scaling.low_freq_factor, scaling.high_freq_factor]),
        (lang.ffn_dim is None or lang.ffn_dim >= 1, "ffn_dim", ">= 1 or null", lang.ffn_dim),
        (finite(lang.rope_theta) and lang.rope_theta > 0, "rope_theta", "> 0", lang.rope_theta),
        (finite(lang.norm_eps) and lang.norm_eps > 0, "norm_eps", "> 0", lang.norm_eps),
        (_dropout(lang.dropout), "dropout", "in [0, 1)", lang.dropout),
    ]


def check_model(config: ModelConfig, source: str | Path | None = None, key: str = "model"
                ) -> None:
    """Every model value in range (dimensions, divisibility, MoE settings), or one InputError
    naming the key."""
    require(vision_rules(config.vision), f"{key}.vision", source)
    require(language_rules(config.language), f"{key}.language", source)
    hidden = config.connector.hidden_dim
    position = config.connector.position
    require([(hidden is None or hidden >= 1, "hidden_dim", ">= 1 or null", hidden),
             (position in ("none", "learned"), "position", "'none' or 'learned'", position),
             (position == "none" or config.connector.kind in ("mlp", "prune"), "position",
              f"'none' for connector kind {config.connector.kind!r}", position)],
            f"{key}.connector", source)
    vision, lang = config.vision, config.language
    if config.connector.vlora is not None:
        c = config.connector.vlora
        require([(c.rank >= 1, "rank", ">= 1", c.rank),
                 (c.alpha is None or (finite(c.alpha) and c.alpha > 0), "alpha", "> 0 or null",
                  c.alpha),
                 (bool(c.types) and set(c.types) <= set("qkvom")
                  and len(set(c.types)) == len(c.types), "types",
                  "distinct letters of q, k, v, o, m", c.types),
                 (1 <= c.every <= lang.depth, "every", f"in 1..{lang.depth}", c.every),
                 (c.dim >= 1 and c.heads >= 1 and c.dim % c.heads == 0, "heads",
                  f"a divisor of dim ({c.dim})", c.heads),
                 (c.depth >= 1, "depth", ">= 1", c.depth),
                 (finite(c.mlp_ratio) and c.mlp_ratio > 0, "mlp_ratio", "> 0", c.mlp_ratio)],
                f"{key}.connector.vlora", source)
    if config.connector.prune is not None:
        c = config.connector.prune
        feature = vision.feature_layer % vision.depth if vision.depth else 0
        require([(finite(c.keep) and c.keep > 0 and (c.keep <= 1 or float(c.keep).is_integer()),
                  "keep", "a share in (0, 1] or a whole count", c.keep),
                 (finite(c.mass) and 0 <= c.mass < 1, "mass", "in [0, 1) (0: off)", c.mass),
                 (all(-vision.depth <= i < vision.depth for i in c.layers)
                  and all(i % vision.depth <= feature for i in c.layers), "layers",
                  f"ViT layers up to the feature layer ({feature})", c.layers)],
                f"{key}.connector.prune", source)
    if config.connector.kind == "prune":
        require([(vision.cls_token, "cls_token", "true: pruning ranks patches by [CLS] "
                  "attention", vision.cls_token)], f"{key}.vision", source)
    if lang.fastv is not None:
        f = lang.fastv
        require([(0 <= f.layer < lang.depth - 1, "layer", f"in 0..{lang.depth - 2}", f.layer),
                 (finite(f.keep) and 0 < f.keep <= 1, "keep", "in (0, 1]", f.keep)],
                f"{key}.language.fastv", source)
    if config.vision.moe is not None:
        config.vision.moe.check(config.vision.depth, source, f"{key}.vision.moe")
    if config.language.moe is not None:
        config.language.moe.check(config.language.depth, source, f"{key}.language.moe")


def stage_rules(s: StageConfig) -> list[Rule]:
    """The training loop's settings (checked for training stages)."""
    betas = s.betas
    return [
        *_positive(s, "steps", "batch_size", "grad_accum", "log_every"),
        seed_rule(s.seed),
        (s.warmup_steps <= s.steps, "warmup_steps", f"<= steps ({s.steps})", s.warmup_steps),
        (finite(s.lr) and s.lr >= 0, "lr", "a finite number >= 0", s.lr),
        (finite(s.min_lr_ratio) and 0 <= s.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]",
         s.min_lr_ratio),
        (s.warmup_steps >= 0, "warmup_steps", ">= 0", s.warmup_steps),
        (finite(s.weight_decay) and s.weight_decay >= 0, "weight_decay", "a finite number >= 0",
         s.weight_decay),
        (len(betas) == 2 and all(finite(b) and 0 <= b < 1 for b in betas), "betas",
         "two numbers in [0, 1)", betas),
        (s.grad_clip is None or (finite(s.grad_clip) and s.grad_clip >= 0), "grad_clip",
         "a finite number >= 0 (0 or null: no clipping)", s.grad_clip),
        (s.precision in ("fp32", "bf16", "auto"), "precision", "fp32, bf16 or auto",
         s.precision),
        (s.on_nonfinite in ("stop", "skip"), "on_nonfinite", "stop or skip", s.on_nonfinite),
        (s.images in ("labelled", "all"), "images", "labelled or all", s.images),
        (s.checkpoint_every >= 0, "checkpoint_every", ">= 0 (0: only at the end)",
         s.checkpoint_every),
        (s.keep_checkpoints >= 0, "keep_checkpoints", ">= 0 (0: keep all)", s.keep_checkpoints),
        (all(finite(v) and v >= 0 for v in s.lr_scale.values()), "lr_scale",
         "finite numbers >= 0", s.lr_scale),
    ]


def build_pairs_rules(p: BuildPairsConfig) -> list[Rule]:
    return [
        (p.samples >= 1, "samples", ">= 1", p.samples),
        (finite(p.temperature) and p.temperature >= 0, "temperature", "a finite number >= 0",
         p.temperature),
        (finite(p.top_p) and 0 < p.top_p <= 1, "top_p", "in (0, 1]", p.top_p),
        (p.max_new_tokens >= 1, "max_new_tokens", ">= 1", p.max_new_tokens),
        (p.max_prompts >= 0, "max_prompts", ">= 0 (0: all)", p.max_prompts),
        (p.max_probes >= 0, "max_probes", ">= 0 (0: all)", p.max_probes),
        seed_rule(p.seed),
    ]


def data_rules(d: DataConfig, t: TokenizerConfig, e: EvalConfig,
               threads: int | None, seed: int = 0) -> list[tuple[str, list[Rule]]]:
    return [
        ("recipe.data", [(d.max_seq_len is None or d.max_seq_len >= 1, "max_seq_len",
                          ">= 1 or null", d.max_seq_len),
                         (d.bad_images in ("error", "skip"), "bad_images", "error or skip",
                          d.bad_images),
                         (finite(d.labelled_fraction) and 0 < d.labelled_fraction <= 1,
                          "labelled_fraction", "in (0, 1]", d.labelled_fraction),
                         seed_rule(d.labelled_seed, "labelled_seed")]),
        ("recipe.tokenizer", [
            (t.kind in ("wordlevel", "bpe"), "kind", "wordlevel or bpe", t.kind),
            (t.vocab_size >= 1, "vocab_size", ">= 1", t.vocab_size),
            (t.min_frequency >= 0, "min_frequency", ">= 0", t.min_frequency)]),
        ("recipe.eval", [(e.batch_size >= 1, "batch_size", ">= 1", e.batch_size),
                         (e.max_new_tokens >= 1, "max_new_tokens", ">= 1", e.max_new_tokens)]),
        ("recipe", [(threads is None or threads >= 1, "threads", ">= 1 or null", threads),
                    seed_rule(seed)]),
    ]
