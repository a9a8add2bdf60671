"""Parameters, FLOPs and KV-cache bytes of a model, computed from its config alone (the
analytic cost; analysis.memory measures).

Conventions (the ones papers use, so numbers compare):

- **Activated parameters per token** count every dense weight (embedding tables included, as
  Mixtral's "12.9B active" does) but only `top_k` of the `experts` experts of an MoE block; the
  shared expert and the router always count (for one-gate-per-task routing, only the token's
  task gate: the others never touch it). A VLM's count adds the vision encoder and connector.
- **FLOPs** are 2 per multiply-accumulate, for the weight matmuls and the attention scores and
  values; norms, activations, softmax, rotary and biases are left out (under 1% here).
  Prefill is causal: position t attends to t keys; logits are computed for the last position
  only, as `generate` does. A decode step attends to `context` keys (the cache plus itself).
- **Vision FLOPs per image** cover the patch embedding and every ViT block over the
  patches plus [CLS] (bidirectional attention); the connector's FLOPs are reported beside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tinyvlm.config import MODEL_MODULES, LanguageConfig, ModelConfig, MoEConfig, VisionConfig
from tinyvlm.models import perception  # noqa: F401 - registers its connectors
from tinyvlm.models.connectors import connector_class

_DTYPE_BYTES = {"float32": 4, "fp32": 4, "float": 4, "bfloat16": 2, "bf16": 2, "float16": 2,
                "fp16": 2, "half": 2, "float64": 8, "fp64": 8, "float8": 1, "fp8": 1}


@dataclass(frozen=True)
class Params:
    total: int
    activated: int

    def __add__(self, other: Params) -> Params:
        return Params(self.total + other.total, self.activated + other.activated)


DENSE_ZERO = Params(0, 0)


def _dense(n: int) -> Params:
    return Params(n, n)


# --------------------------------------------------------------------------- MoE blocks


def moe_params(dim: int, dense_hidden: int, moe: MoEConfig, experts: int) -> Params:
    """One MoE FFN: stacked SwiGLU experts gate_up (E, 2I, H) and down (E, H, I) without
    biases, the router (E, H) or its task-conditioned variants, and the shared expert."""
    hidden = moe.hidden_dim or dense_hidden
    expert = 3 * dim * hidden
    k = min(moe.top_k, experts)
    shared = 3 * dim * moe.shared_expert_dim
    if moe.shared_expert_dim and moe.shared_expert_gate:
        shared += dim  # its sigmoid gate, Linear(dim, 1)
    router_total = router_active = experts * dim
    if moe.task_routing == "embedding":
        # The router reads [token; task embedding]; the (num_tasks, task_dim) table counts in
        # full, like token embedding tables do.
        table = moe.num_tasks * moe.task_dim
        router_total = router_active = experts * (dim + moe.task_dim) + table
    elif moe.task_routing == "multi_gate":
        router_total = moe.num_tasks * experts * dim  # one gate per task; a token uses one
    return Params(experts * expert + router_total + shared, k * expert + router_active + shared)


def moe_flops_per_token(dim: int, dense_hidden: int, moe: MoEConfig, experts: int) -> int:
    hidden = moe.hidden_dim or dense_hidden
    k = min(moe.top_k, experts)
    router_in = dim + (moe.task_dim if moe.task_routing == "embedding" else 0)
    return 2 * (experts * router_in + k * 3 * dim * hidden + 3 * dim * moe.shared_expert_dim)


def _moe_layers(moe: MoEConfig | None, depth: int) -> dict[int, int]:
    return moe.experts_at(depth) if moe is not None else {}


# --------------------------------------------------------------------------- vision


def _vision_mlp_hidden(v: VisionConfig) -> int:
    return v.hidden_mlp_dim


def vision_params(v: VisionConfig) -> Params:
    d, h = v.dim, _vision_mlp_hidden(v)
    # patch conv (+bias), [CLS], the LayerNorm before the blocks
    total = _dense(v.channels * v.patch_size**2 * d + d + d * v.cls_token + 2 * d * v.pre_norm)
    if v.position == "learned":
        total += _dense(v.num_patches * d)
    experts = _moe_layers(v.moe, v.depth)
    for layer in range(v.depth):
        total += _dense(4 * d + 4 * d * d + 4 * d)  # two LayerNorms; qkv and proj with biases
        if layer in experts:
            assert v.moe is not None
            total += moe_params(d, h, v.moe, experts[layer])
        else:
            total += _dense(2 * d * h + h + d)  # GELU MLP with biases
    return total + _dense(2 * d)  # final LayerNorm


def vision_flops_per_image(v: VisionConfig) -> int:
    d, h, n = v.dim, _vision_mlp_hidden(v), v.num_patches + 1
    flops = 2 * v.channels * v.patch_size**2 * d * v.num_patches
    experts = _moe_layers(v.moe, v.depth)
    for layer in range(v.depth):
        flops += n * 2 * 4 * d * d + 2 * 2 * d * n * n  # qkv + proj; scores + values
        if layer in experts:
            assert v.moe is not None
            flops += n * moe_flops_per_token(d, h, v.moe, experts[layer])
        else:
            flops += n * 2 * 2 * d * h
    return flops


# --------------------------------------------------------------------------- connector


def _connector(config: ModelConfig) -> tuple[int, int, int]:
    """(parameters, FLOPs per image, tokens per image), as the connector kind reports them."""
    cost = connector_class(config.connector.kind).cost(config)
    return cost.params, cost.flops_per_image, cost.tokens_per_image


def visual_tokens_per_image(config: ModelConfig) -> int:
    return _connector(config)[2]


# --------------------------------------------------------------------------- language


def _attention_weights(lang: LanguageConfig) -> int:
    q = lang.heads * lang.head_dim
    kv = lang.kv_heads * lang.head_dim
    biases = (q + 2 * kv) * lang.qkv_bias + lang.dim * lang.o_bias
    return lang.dim * q + 2 * lang.dim * kv + q * lang.dim + biases


def _vocab(lang: LanguageConfig) -> int:
    if lang.vocab_size <= 0:
        raise ValueError("language.vocab_size is not set (it comes from the tokenizer)")
    return lang.vocab_size


def language_params(lang: LanguageConfig) -> Params:
    d, f = lang.dim, lang.hidden_ffn_dim
    total = _dense(_vocab(lang) * d)  # token embedding
    experts = _moe_layers(lang.moe, lang.depth)
    for layer in range(lang.depth):
        total += _dense(2 * d + _attention_weights(lang))  # two RMSNorms, q/k/v/o
        if layer in experts:
            assert lang.moe is not None
            total += moe_params(d, f, lang.moe, experts[layer])
        else:
            total += _dense(3 * d * f)
    total += _dense(d)  # final RMSNorm
    if not lang.tie_embeddings:
        total += _dense(_vocab(lang) * d)
    return total


def _layer_linear_flops(lang: LanguageConfig, layer: int) -> int:
    """Weight matmuls of one block for one token (no attention scores)."""
    d, f = lang.dim, lang.hidden_ffn_dim
    experts = _moe_layers(lang.moe, lang.depth)
    flops = 2 * _attention_weights(lang)
    if layer in experts:
        assert lang.moe is not None
        return flops + moe_flops_per_token(d, f, lang.moe, experts[layer])
    return flops + 2 * 3 * d * f


def _linear_flops_per_token(lang: LanguageConfig) -> int:
    """Weight matmuls of every block for one token (no attention scores, no logits)."""
    return sum(_layer_linear_flops(lang, layer) for layer in range(lang.depth))


def _attention_flops(lang: LanguageConfig, keys: int, layers: int | None = None) -> int:
    """Scores (q.k) and weighted values for one query over `keys` keys, every layer."""
    return (lang.depth if layers is None else layers) * 2 * 2 * lang.heads * lang.head_dim * keys


def _logits_flops(lang: LanguageConfig) -> int:
    return 2 * lang.dim * _vocab(lang)


def _split(lang: LanguageConfig, dropped: int) -> tuple[int, int]:
    """(layers that see every token, layers after FastV's that miss `dropped` of them)."""
    if lang.fastv is None or dropped <= 0:
        return lang.depth, 0
    return lang.fastv.layer + 1, lang.depth - lang.fastv.layer - 1


def fastv_dropped(config: ModelConfig, images: int = 1) -> int:
    """Image tokens FastV drops from the later layers for `images` images."""
    if config.language.fastv is None:
        return 0
    tokens = _connector(config)[2]
    return images * (tokens - max(1, round(config.language.fastv.keep * tokens))) \
        if tokens else 0


def prefill_flops(lang: LanguageConfig, prompt_len: int, dropped: int = 0,
                  extra_per_token: int = 0) -> int:
    """FLOPs of the causal forward over a `prompt_len`-token prompt, logits for the last
    position only; with FastV the layers after its layer see `dropped` tokens fewer, and a
    connector's weight deltas add `extra_per_token` to every token."""
    if prompt_len < 1:
        raise ValueError("prompt_len must be >= 1")
    full, later = _split(lang, dropped)
    short = prompt_len - dropped if later else prompt_len
    flops = prompt_len * sum(_layer_linear_flops(lang, i) for i in range(full))
    flops += short * sum(_layer_linear_flops(lang, i) for i in range(full, lang.depth))
    flops += _attention_flops(lang, prompt_len * (prompt_len + 1) // 2, full)
    flops += _attention_flops(lang, short * (short + 1) // 2, later)
    return flops + _logits_flops(lang) + prompt_len * extra_per_token


def decode_flops(lang: LanguageConfig, context_len: int, dropped: int = 0,
                 extra_per_token: int = 0) -> int:
    """FLOPs of one decoding step whose token attends to `context_len` keys (itself
    included; `dropped` fewer in the layers after FastV's)."""
    if context_len < 1:
        raise ValueError("context_len must be >= 1")
    full, later = _split(lang, dropped)
    return (_linear_flops_per_token(lang) + _attention_flops(lang, context_len, full)
            + _attention_flops(lang, context_len - dropped, later) + _logits_flops(lang)
            + extra_per_token)


# --------------------------------------------------------------------------- KV cache


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of a dtype name ('bf16', 'float32', ...) or a torch dtype."""
    if hasattr(dtype, "itemsize"):
        return int(dtype.itemsize)
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


def kv_cache_bytes(lang: LanguageConfig, batch: int, length: int, dtype: Any = "float32",
                   dropped: int = 0) -> int:
    """Keys and values of every layer for `batch` sequences of `length` tokens (the KVCache
    preallocates this for its max_len); with FastV the later layers hold `dropped` fewer."""
    full, later = _split(lang, dropped)
    tokens = full * length + later * (length - dropped)
    return 2 * batch * lang.kv_heads * tokens * lang.head_dim * dtype_bytes(dtype)


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class ParamSplit:
    vision: Params
    connector: Params
    language: Params

    @property
    def total(self) -> int:
        return self.vision.total + self.connector.total + self.language.total

    @property
    def activated(self) -> int:
        return self.vision.activated + self.connector.activated + self.language.activated


def parameter_split(config: ModelConfig) -> ParamSplit:
    return ParamSplit(vision_params(config.vision), _dense(_connector(config)[0]),
                      language_params(config.language))


def efficiency(config: ModelConfig, prompt_len: int | None = None,
               context_len: int | None = None, kv_len: int | None = None, batch: int = 1,
               dtype: Any = "float32") -> dict[str, Any]:
    """Everything above for one config, as a JSON-ready dict.

    Defaults: a prompt of one image plus 32 text tokens, a decode step right after it, and a
    KV cache for that prompt plus 32 new tokens (all capped at max_seq_len).
    """
    lang = config.language
    split = parameter_split(config)
    conn = connector_class(config.connector.kind).cost(config)
    connector_flops, tokens, extra = conn.flops_per_image, conn.tokens_per_image, \
        conn.lm_flops_per_token
    prompt_len = prompt_len or min(tokens + 32, lang.max_seq_len)
    context_len = context_len or prompt_len + 1
    kv_len = kv_len or min(prompt_len + 32, lang.max_seq_len)
    dropped = min(fastv_dropped(config), prompt_len - 1)
    prefill = prefill_flops(lang, prompt_len, dropped, extra)
    return {
        "total_params": split.total,
        "activated_params": split.activated,
        "params": {k: asdict(getattr(split, k)) for k in MODEL_MODULES},
        "visual_tokens_per_image": tokens,
        "prompt_tokens": prompt_len,
        "prefill_flops": prefill,
        "prefill_flops_per_token": prefill / prompt_len,
        "decode_context": context_len,
        "decode_flops_per_token": decode_flops(lang, context_len, dropped, extra),
        "vision_flops_per_image": vision_flops_per_image(config.vision),
        "connector_flops_per_image": connector_flops,
        "kv_cache_tokens": kv_len,
        "kv_cache_batch": batch,
        "kv_cache_dtype": str(dtype).removeprefix("torch."),
        "kv_cache_bytes": kv_cache_bytes(lang, batch, kv_len, dtype, dropped),
    }


def model_report(model: Any, prompt_len: int | None = None) -> dict[str, Any]:
    """What `tinyvlm info` shows of a model: parameter counts (measured per module, activated
    from the config), tokens per image, the cost figures above, and the config."""
    from tinyvlm.schema import to_dict

    acct = efficiency(model.config, prompt_len)
    return {"total_params": model.num_parameters(), "activated_params": acct["activated_params"],
            "params": model.parameters_by_module(), "image_tokens": model.image_tokens,
            "efficiency": acct, "config": to_dict(model.config)}
