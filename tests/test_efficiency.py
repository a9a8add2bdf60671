"""Analytic parameters, FLOPs and KV-cache bytes against the built models."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinyvlm.analysis import cost as E
from tinyvlm.config import ModelConfig, MoEConfig
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.models.language import KVCache
from tinyvlm.models.moe import MoE
from tinyvlm.models.surgery import prune_to_task
from tinyvlm.models.vlm import TinyVLM

from .conftest import tiny_model_config


def build(config: ModelConfig, tokenizer: Tokenizer) -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM.from_tokenizer(config, tokenizer).eval()


def counted(module: torch.nn.Module) -> int:
    # parameters() yields a tied weight once, which is what "total" means.
    return sum(p.numel() for p in module.parameters())


def assert_split_matches(model: TinyVLM) -> E.ParamSplit:
    split = E.parameter_split(model.config)
    assert split.total == counted(model) == model.num_parameters()
    for part in ("vision", "connector", "language"):
        assert getattr(split, part).total == counted(getattr(model, part)), part
    return split


@pytest.mark.parametrize("language", [{}, {"tie_embeddings": False}, {"ffn_dim": 40},
                                      {"kv_heads": 4}])
@pytest.mark.parametrize("position", ["learned", "sincos"])
def test_dense_total_equals_the_built_model(language: dict, position: str,
                                            tokenizer: Tokenizer) -> None:
    cfg = tiny_model_config(**language)
    cfg.vision.position = position
    split = assert_split_matches(build(cfg, tokenizer))
    assert split.activated == split.total  # dense: every weight is used by every token


def test_dense_hand_computed(tokenizer: Tokenizer) -> None:
    cfg = tiny_model_config()  # LM: dim 32, 2 layers, 4 heads, 2 kv heads, ffn 96
    v = tokenizer.vocab_size
    lm = v * 32 + 2 * (2 * 32 + (32 * 32 + 2 * 32 * 16 + 32 * 32) + 3 * 32 * 96) + 32
    assert E.language_params(build(cfg, tokenizer).config.language) == E.Params(lm, lm)
    # ViT: 32 px, patch 8 (16 patches), dim 32, 2 layers, MLP 128; connector 32 -> 32 -> 32.
    vit = (3 * 64 * 32 + 32) + 32 + 16 * 32 + 2 * (4 * 32 + 4 * 32 * 32 + 4 * 32
                                                   + 2 * 32 * 128 + 128 + 32) + 2 * 32
    assert E.vision_params(cfg.vision).total == vit
    assert E.parameter_split(cfg).connector.total == 32 * 32 + 32 + 32 * 32 + 32


@pytest.mark.parametrize("moe", [
    {"experts": 4, "top_k": 2},
    {"experts": 4, "top_k": 1, "layers": "all", "shared_expert_dim": 8},
    {"experts": 3, "top_k": 2, "layers": [0], "hidden_dim": 24},
    {"experts": 4, "top_k": 2, "layers": "all", "layer_experts": [2, 4]},
    {"experts": 2, "top_k": 4, "layers": "all"},  # top_k above the expert count is clamped
])
def test_moe_language_model_total_and_activated(moe: dict, tokenizer: Tokenizer) -> None:
    model = build(tiny_model_config(**{"moe": moe}), tokenizer)
    split = assert_split_matches(model)
    # Activated = total minus the experts a token does not run, counted from the built layers.
    idle = 0
    for block in model.language.blocks:
        if isinstance(block.ffn, MoE):
            per_expert = (block.ffn.gate_up_proj[0].numel() + block.ffn.down_proj[0].numel())
            idle += (block.ffn.num_experts - block.ffn.top_k) * per_expert
    assert idle > 0 or moe["experts"] <= moe["top_k"]
    assert split.language.activated == split.language.total - idle
    assert split.activated == split.total - idle


@pytest.mark.parametrize("mode", ["none", "embedding", "multi_gate"])
def test_task_routed_vision_moe(mode: str, tokenizer: Tokenizer) -> None:
    cfg = tiny_model_config()
    cfg.vision.moe = MoEConfig(experts=6, top_k=2, layers="all", task_routing=mode,
                               num_tasks=0 if mode == "none" else 3, hidden_dim=20,
                               shared_expert_dim=4)
    model = build(cfg, tokenizer)
    split = assert_split_matches(model)
    expert = 3 * 32 * 20
    router_idle = 2 * 6 * 32 if mode == "multi_gate" else 0  # the other tasks' gates
    assert split.vision.activated == split.vision.total - 2 * (4 * expert + router_idle)

    if mode != "none":  # the single-task model: config and weights still agree
        prune_to_task(model, task=1, keep={0: [0, 2, 5], 1: [1]})
        pruned = assert_split_matches(model)
        assert pruned.total < split.total
        assert pruned.vision.activated == pruned.vision.total - expert  # block 0: 3 kept, k=2


def test_flops_hand_computed() -> None:
    cfg = tiny_model_config(vocab_size=100)
    lang = cfg.language  # dim 32, 2 layers, heads 4 x 8, kv 2 x 8, ffn 96
    linear = 2 * (32 * 32 + 2 * 32 * 16 + 32 * 32) + 2 * 3 * 32 * 96  # per layer and token
    assert E.decode_flops(lang, 10) == 2 * linear + 2 * (4 * 32 * 10) + 2 * 32 * 100
    # Prefill of 3 tokens: positions attend to 1, 2, 3 keys; logits for the last one only.
    assert E.prefill_flops(lang, 3) == 3 * 2 * linear + 2 * 4 * 32 * 6 + 2 * 32 * 100
    # Vision: 16 patches + [CLS] = 17 tokens, bidirectional.
    n = 17
    per_layer = n * 2 * 4 * 32 * 32 + 4 * 32 * n * n + n * 2 * 2 * 32 * 128
    assert E.vision_flops_per_image(cfg.vision) == 2 * 3 * 64 * 32 * 16 + 2 * per_layer
    report = E.efficiency(cfg, prompt_len=3, context_len=10)
    assert report["prefill_flops_per_token"] == E.prefill_flops(lang, 3) / 3
    assert report["connector_flops_per_image"] == 16 * 2 * (32 * 32 + 32 * 32)
    assert report["visual_tokens_per_image"] == 16


def test_moe_flops_count_only_the_chosen_experts() -> None:
    dense = tiny_model_config(vocab_size=100).language
    sparse = tiny_model_config(vocab_size=100, moe={"experts": 8, "top_k": 2,
                                                    "layers": [1]}).language
    # Layer 1: 2 of 8 experts at the dense width, plus the router (8 x 32).
    extra = 2 * 8 * 32 + (2 - 1) * 2 * 3 * 32 * 96
    assert E.decode_flops(sparse, 5) - E.decode_flops(dense, 5) == extra


@pytest.mark.parametrize("moe", [None, {"experts": 4, "top_k": 2, "layers": "all"}])
def test_flops_match_torch_flop_counter(moe: dict | None, tokenizer: Tokenizer) -> None:
    """torch's counter sees every matmul but not the CPU attention kernel: the two agree
    once our attention term is taken out, and that term is checked by hand above."""
    cfg = tiny_model_config(**({"moe": moe} if moe else {}))
    cfg.vision.cls_attention_layers = []  # the [CLS]-row scores are an extra we do not count
    model = build(cfg, tokenizer)
    lang = model.config.language
    t = 12
    ids = torch.randint(7, tokenizer.vocab_size, (1, t))
    cache = KVCache(lang, 1, t + 1)
    with FlopCounterMode(display=False) as fc:
        h = model.language(model.language.embed(ids), torch.arange(t)[None], None, cache)
        model.language.lm_head(h[:, -1])
    keys = t * (t + 1) // 2
    assert fc.get_total_flops() == E.prefill_flops(lang, t) - E._attention_flops(lang, keys)
    with FlopCounterMode(display=False) as fc:
        h = model.language(model.language.embed(ids[:, :1]), torch.tensor([[t]]), None, cache)
        model.language.lm_head(h[:, -1])
    assert fc.get_total_flops() == E.decode_flops(lang, t + 1) - E._attention_flops(lang, t + 1)
    with FlopCounterMode(display=False) as fc:
        model.vision(torch.randn(1, 3, 32, 32))
    n = cfg.vision.num_patches + 1
    attention = cfg.vision.depth * 4 * cfg.vision.dim * n * n
    assert fc.get_total_flops() == E.vision_flops_per_image(cfg.vision) - attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_equal_the_allocated_cache(dtype: torch.dtype,
                                                  tokenizer: Tokenizer) -> None:
    model = build(tiny_model_config(), tokenizer)
    lang = model.config.language
    cache = KVCache(lang, batch=3, max_len=20)
    x = torch.randn(3, 5, lang.dim, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        model.language(x, torch.arange(5).expand(3, -1), None, cache)
    assert cache.nbytes == E.kv_cache_bytes(lang, 3, 20, dtype)
    assert E.kv_cache_bytes(lang, 3, 20, "bf16") == E.kv_cache_bytes(lang, 3, 20, "float32") // 2
    with pytest.raises(ValueError, match="unknown dtype"):
        E.dtype_bytes("int3")


def test_unknown_connector_kind_is_a_clear_error() -> None:
    cfg = tiny_model_config(vocab_size=100)
    cfg.connector.kind = "qformer"
    with pytest.raises(ValueError, match="unknown connector kind"):
        E.efficiency(cfg)
