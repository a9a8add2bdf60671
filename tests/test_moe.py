"""The MoE module: routing invariants, masking, losses, dispatch against references, surgery."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import (
    MixtralSparseMoeBlock,
    load_balancing_loss_func,
)

from tinyvlm.config import MoEConfig, from_dict
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.models.context import ForwardContext
from tinyvlm.models.layers import SwiGLU
from tinyvlm.models.moe import MoE, RouterRecord, router_losses
from tinyvlm.models.surgery import prune_to_task, upcycle
from tinyvlm.models.vlm import TinyVLM

from .conftest import tiny_model_config

DIM, HIDDEN = 16, 24


def make_moe(**cfg: object) -> MoE:
    torch.manual_seed(0)
    config = from_dict(MoEConfig, {"experts": 4, "top_k": 2, **cfg})
    moe = MoE(DIM, HIDDEN, config, name="test")
    with torch.no_grad():  # a router sharp enough that choices are not near-ties
        moe.router.weight.normal_(std=1.0)
    return moe


def run(moe: MoE, x: torch.Tensor, mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, RouterRecord]:
    ctx = ForwardContext(token_mask=mask, task_ids=task_ids)
    y = moe(x, ctx)
    (record,) = ctx.records
    return y, record


def naive(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: the definition, with no batching tricks."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        probs = F.linear(x[t].float(), moe.router.weight[0].float()).softmax(-1)
        top_p, top_i = probs.topk(moe.top_k)
        gates = top_p / top_p.sum()
        for g, e in zip(gates, top_i.tolist(), strict=True):
            gate, up = (moe.gate_up_proj[e] @ x[t]).chunk(2)
            out[t] += g * (moe.down_proj[e] @ (F.silu(gate) * up))
        if moe.shared is not None:
            out[t] += moe.shared(x[t])
    return out


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_exactly_k_distinct_experts_and_gates_sum_to_one(top_k: int) -> None:
    moe = make_moe(top_k=top_k)
    _, rec = run(moe, torch.randn(2, 7, DIM))
    assert rec.choices.shape == (2, 7, top_k)
    for choice in rec.choices.reshape(-1, top_k).tolist():
        assert len(set(choice)) == top_k and all(0 <= e < 4 for e in choice)
    torch.testing.assert_close(rec.gates.sum(-1), torch.ones(2, 7))
    assert int(rec.load.sum()) == 2 * 7 * top_k


@pytest.mark.parametrize("shared", [0, 8])
def test_dropless_equals_naive_reference(shared: int) -> None:
    moe = make_moe(shared_expert_dim=shared)
    x = torch.randn(3, 5, DIM)
    y, _ = run(moe, x)
    torch.testing.assert_close(y, naive(moe, x.reshape(-1, DIM)).view_as(x), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2])
def test_equals_transformers_mixtral_block(top_k: int) -> None:
    moe = make_moe(top_k=top_k)
    cfg = MixtralConfig(hidden_size=DIM, intermediate_size=HIDDEN, num_local_experts=4,
                        num_experts_per_tok=top_k, router_jitter_noise=0.0)
    ref = MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        ref.gate.weight.copy_(moe.router.weight[0])
        ref.experts.gate_up_proj.copy_(moe.gate_up_proj)
        ref.experts.down_proj.copy_(moe.down_proj)
    x = torch.randn(2, 9, DIM)
    y, _ = run(moe.eval(), x)
    torch.testing.assert_close(y, ref(x), atol=1e-5, rtol=1e-5)


def test_masked_tokens_are_not_routed_nor_counted() -> None:
    moe = make_moe(z_coef=1e-3)
    x = torch.randn(2, 6, DIM)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    y, rec = run(moe, x, mask)
    assert (rec.choices[~mask] == -1).all() and (rec.choices[mask] >= 0).all()
    assert (y[~mask] == 0).all()
    assert rec.tokens == int(mask.sum()) and int(rec.load.sum()) == 2 * int(mask.sum())
    # The real tokens alone, with no padding at all, give the same outputs and losses.
    y_real, rec_real = run(moe, x[mask])
    torch.testing.assert_close(y[mask], y_real)
    torch.testing.assert_close(rec.aux_loss, rec_real.aux_loss)
    torch.testing.assert_close(rec.z_loss, rec_real.z_loss)


def test_padding_does_not_change_a_language_model_with_moe(tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config(moe={"experts": 4, "top_k": 2, "layers": "all"})
    model = TinyVLM.from_tokenizer(cfg, tokenizer).eval()
    ids = torch.tensor([tokenizer.encode("how many shapes are there?")])
    padded = torch.cat([torch.full((1, 3), tokenizer.pad_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    plain = model(ids).logits
    out = model(padded, mask)
    torch.testing.assert_close(out.logits[:, 3:], plain, atol=1e-5, rtol=1e-5)
    assert all((r.choices[0, :3] == -1).all() for r in out.records)


# ----------------------------------------------------------------------------- losses


def test_balance_and_z_loss_by_hand() -> None:
    # 2 experts, top-1, logits chosen so that the probabilities are 3/4 and 1/4.
    config = MoEConfig(experts=2, top_k=1, balance_coef=0.5, z_coef=0.25)
    moe = MoE(2, 4, config)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(2)[None])
    x = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)], [math.log(3), 0.0]])
    _, rec = run(moe, x)
    # f = (2/3, 1/3), P = (7/12, 5/12): 2 * (14/36 + 5/36) = 19/18.
    assert rec.balance_loss.item() == pytest.approx(19 / 18, abs=1e-6)
    assert rec.z_loss.item() == pytest.approx(math.log(4) ** 2, abs=1e-6)
    assert rec.aux_loss.item() == pytest.approx(0.5 * 19 / 18 + 0.25 * math.log(4) ** 2,
                                                abs=1e-6)


@pytest.mark.parametrize("top_k", [1, 2])
def test_balance_loss_equals_transformers(top_k: int) -> None:
    moe = make_moe(top_k=top_k)
    x = torch.randn(2, 11, DIM)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, :4] = False
    _, rec = run(moe, x, mask)
    logits = F.linear(x.reshape(-1, DIM), moe.router.weight[0])
    ref = load_balancing_loss_func((logits,), 4, top_k, attention_mask=mask.long())
    torch.testing.assert_close(rec.balance_loss, ref, atol=1e-6, rtol=1e-6)


def test_router_losses_sum_each_layer_once() -> None:
    moe_a, moe_b = make_moe(), make_moe(z_coef=0.1)
    ctx = ForwardContext()
    moe_a(torch.randn(4, DIM), ctx)
    moe_b(torch.randn(4, DIM), ctx)
    ctx.records.append("not a router record")
    total, metrics = router_losses(ctx.records)
    assert total is not None
    torch.testing.assert_close(total, ctx.records[0].aux_loss + ctx.records[1].aux_loss)
    assert metrics["router_loss"] == pytest.approx(float(total.detach()))
    assert router_losses(["x"]) == (None, {})


# ----------------------------------------------------------------------------- capacity


def test_capacity_drops_exactly_the_overflow() -> None:
    # 8 tokens, 4 experts, top-2, capacity factor 1: ceil(8 * 2 / 4) = 4 slots per expert.
    moe = make_moe(routing="capacity", capacity_factor=1.0)
    with torch.no_grad():  # everyone prefers expert 0, then expert 1
        moe.router.weight.zero_()
        moe.router.weight[0, 0, 0] = 2.0
        moe.router.weight[0, 1, 0] = 1.0
    x = torch.randn(8, DIM)
    x[:, 0] = torch.linspace(1, 2, 8)
    y, rec = run(moe, x)
    assert moe.capacity(8) == 4
    assert rec.choices[:, 0].tolist() == [0] * 8 and rec.choices[:, 1].tolist() == [1] * 8
    assert rec.kept is not None
    # First choices are served first, in token order: tokens 0..3 keep both choices.
    assert rec.kept[:, 0].tolist() == [True] * 4 + [False] * 4
    assert rec.kept[:, 1].tolist() == [True] * 4 + [False] * 4
    assert rec.dropped == 8 and rec.drop_rate == 0.5
    assert rec.load.tolist() == [4, 4, 0, 0]
    assert (y[4:] == 0).all()
    torch.testing.assert_close(y[:4], naive(moe, x[:4]), atol=1e-5, rtol=1e-5)


def test_capacity_mode_without_overflow_equals_dropless() -> None:
    x = torch.randn(6, DIM)
    y_drop, rec = run(make_moe(routing="capacity", capacity_factor=4.0), x)
    y_free, _ = run(make_moe(), x)
    assert rec.dropped == 0
    torch.testing.assert_close(y_drop, y_free)


# ----------------------------------------------------------------------------- gradients


def test_gradients_reach_every_chosen_expert_and_the_router() -> None:
    moe = make_moe(experts=6, top_k=2)
    x = torch.randn(3, DIM)  # 6 choices at most: some experts stay unchosen
    y, rec = run(moe.train(), x)
    (y.square().sum() + rec.aux_loss).backward()
    chosen = set(rec.choices.flatten().tolist())
    assert 0 < len(chosen) < 6
    for e in range(6):
        touched = bool(moe.gate_up_proj.grad[e].abs().sum() > 0)
        assert touched == (e in chosen)
        assert bool(moe.down_proj.grad[e].abs().sum() > 0) == (e in chosen)
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_jitter_only_in_training() -> None:
    moe = make_moe(jitter=0.5)
    x = torch.randn(32, DIM)
    moe.eval()
    a, _ = run(moe, x)
    b, _ = run(moe, x)
    torch.testing.assert_close(a, b)
    moe.train()
    c, _ = run(moe, x)
    assert not torch.equal(a, c)


# ----------------------------------------------------------------------------- placement


def test_placement() -> None:
    assert MoEConfig(layers="all").moe_layers(4) == [0, 1, 2, 3]
    assert MoEConfig(layers="every-other").moe_layers(5) == [1, 3]
    assert MoEConfig(layers=[0, -1]).moe_layers(4) == [0, 3]
    assert MoEConfig(layers=[1], layer_experts=[3]).experts_at(4) == {1: 3}
    with pytest.raises(ValueError, match="outside"):
        MoEConfig(layers=[4]).moe_layers(4)
    with pytest.raises(ValueError, match="every-other"):
        MoEConfig(layers="odd").moe_layers(4)


def test_model_builds_moe_where_configured(tokenizer: Tokenizer) -> None:
    cfg = tiny_model_config(depth=4, moe={"experts": 3, "top_k": 1})
    cfg.vision.moe = MoEConfig(experts=2, top_k=1, layers=[0])
    model = TinyVLM.from_tokenizer(cfg, tokenizer)
    kinds = [type(b.ffn).__name__ for b in model.language.blocks]
    assert kinds == ["SwiGLU", "MoE", "SwiGLU", "MoE"]
    assert [type(b.ffn).__name__ for b in model.vision.blocks] == ["MoE", "GELUMLP"]
    out = model(torch.tensor([[tokenizer.image_id] * 16 + tokenizer.encode("red")]),
                pixel_values=torch.randn(1, 3, 32, 32))
    assert sorted(r.layer for r in out.records) == ["language.1", "language.3", "vision.0"]


def test_save_load_round_trip(tokenizer: Tokenizer, tmp_path: Path) -> None:
    cfg = tiny_model_config(moe={"experts": 4, "top_k": 2, "routing": "capacity",
                                 "shared_expert_dim": 8})
    model = TinyVLM.from_tokenizer(cfg, tokenizer).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = TinyVLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    ids = torch.tensor([tokenizer.encode("what colour is the circle?")])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_generate_with_cache_equals_recompute(tokenizer: Tokenizer) -> None:
    cfg = tiny_model_config(moe={"experts": 4, "top_k": 2, "layers": "all"})
    model = TinyVLM.from_tokenizer(cfg, tokenizer).eval()
    ids = torch.tensor([tokenizer.encode("what colour is the circle?")] * 2)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    g = torch.Generator().manual_seed(0)
    cached = model.generate(ids, mask, max_new_tokens=6, temperature=1.0, generator=g)
    g = torch.Generator().manual_seed(0)
    plain = model.generate(ids, mask, max_new_tokens=6, temperature=1.0, generator=g,
                           use_cache=False)
    assert torch.equal(cached, plain)


# ----------------------------------------------------------------------------- surgery


def test_upcycled_model_equals_dense_at_init(tokenizer: Tokenizer) -> None:
    dense = TinyVLM.from_tokenizer(tiny_model_config(depth=4), tokenizer).eval()
    ids = torch.tensor([[tokenizer.image_id] * 16 + tokenizer.encode("how many shapes are there?")])
    pixels = torch.randn(1, 3, 32, 32)
    before = dense(ids, pixel_values=pixels).logits
    sparse = upcycle(dense, MoEConfig(experts=4, top_k=2, layers="every-other",
                                      shared_expert_dim=8))
    assert [type(b.ffn).__name__ for b in sparse.language.blocks] == [
        "SwiGLU", "MoE", "SwiGLU", "MoE"]
    out = sparse(ids, pixel_values=pixels)
    torch.testing.assert_close(out.logits, before, atol=1e-5, rtol=1e-5)
    assert len(out.records) == 2
    with pytest.raises(ValueError, match="already sparse"):
        upcycle(sparse, MoEConfig())


def test_upcycle_single_layer_copies_weights() -> None:
    dense = SwiGLU(DIM, HIDDEN)
    moe = MoE.upcycle(dense, MoEConfig(experts=3, top_k=2))
    for e in range(3):
        torch.testing.assert_close(moe.gate_up_proj[e, :HIDDEN], dense.gate.weight)
        torch.testing.assert_close(moe.gate_up_proj[e, HIDDEN:], dense.up.weight)
        torch.testing.assert_close(moe.down_proj[e], dense.down.weight)
    with pytest.raises(ValueError, match="normalize_gates"):
        MoE.upcycle(dense, MoEConfig(normalize_gates=False))


@pytest.mark.parametrize("mode", ["embedding", "multi_gate"])
def test_task_routing_and_single_task_pruning(mode: str, tokenizer: Tokenizer,
                                              tmp_path: Path) -> None:
    cfg = tiny_model_config()
    cfg.vision.moe = MoEConfig(experts=6, top_k=2, layers="all", task_routing=mode,
                               num_tasks=3, task_dim=4)
    torch.manual_seed(0)
    model = TinyVLM.from_tokenizer(cfg, tokenizer).eval()
    for block in model.vision.blocks:  # make the task matter at initialisation
        torch.nn.init.normal_(block.ffn.router.weight, std=2.0)
        if block.ffn.router.task_embed is not None:
            torch.nn.init.normal_(block.ffn.router.task_embed.weight, std=4.0)
    pixels = torch.randn(2, 3, 32, 32)
    outs = {}
    for task in range(3):
        ctx = ForwardContext(task_ids=torch.full((2,), task))
        outs[task] = (model.vision(pixels, ctx).patches, ctx.records)
    assert not torch.equal(outs[0][1][0].choices, outs[1][1][0].choices)
    with pytest.raises(ValueError, match="task ids"):
        model.vision(pixels)
    # Keep task 1's pathway: the experts it chose anywhere in these images.
    keep = {int(r.layer.split(".")[1]): sorted(set(r.choices.flatten().tolist()))
            for r in outs[1][1]}
    prune_to_task(model, 1, keep)
    model.save_pretrained(tmp_path / "single")
    single = TinyVLM.from_pretrained(tmp_path / "single").eval()
    assert single.config.vision.moe.layer_experts == [len(v) for v in keep.values()]
    assert single.config.vision.moe.num_tasks == 1
    torch.testing.assert_close(single.vision(pixels).patches, outs[1][0], atol=1e-5, rtol=1e-5)


def test_task_expert_mutual_information() -> None:
    from tinyvlm.models.moe import task_expert_mi

    # Two tasks, each sending all its mass to its own expert: MI = log 2. Independent: 0.
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    tasks = torch.tensor([0, 0, 1, 1])
    assert task_expert_mi(probs, tasks, 2).item() == pytest.approx(math.log(2), abs=1e-6)
    flat = torch.full((4, 2), 0.5)
    assert task_expert_mi(flat, tasks, 2).item() == pytest.approx(0.0, abs=1e-6)


def test_bf16_autocast_keeps_the_router_in_fp32(tokenizer: Tokenizer) -> None:
    cfg = tiny_model_config(moe={"experts": 4, "top_k": 2, "layers": "all"})
    model = TinyVLM.from_tokenizer(cfg, tokenizer).train()
    ids = torch.tensor([tokenizer.encode("what colour is the circle?")] * 2)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # padding goes through the masked (index_copy) path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
    assert out.logits.dtype == torch.bfloat16
    loss = out.logits.float().square().mean() + router_losses(out.records)[0]
    loss.backward()
    for rec in out.records:
        assert rec.gates.dtype == torch.float32 and rec.aux_loss.dtype == torch.float32
    assert all(p.grad is not None for b in model.language.blocks for p in b.ffn.parameters())


def test_bad_moe_settings_are_one_clear_error(tmp_path: Path) -> None:
    from tinyvlm.config import load_recipe
    from tinyvlm.errors import InputError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel:\n  language:\n    moe: {experts: 2, top_k: 3}\n"
                      "stages:\n  - {name: sft}\n")
    with pytest.raises(InputError,
                       match=r"recipe\.model\.language\.moe\.top_k' must lie in 1\.\.experts"):
        load_recipe(recipe)
    recipe.write_text("name: r\nmodel:\n  vision:\n    moe: {layers: every_other}\n"
                      "stages:\n  - {name: sft}\n")
    with pytest.raises(InputError, match=r"recipe\.model\.vision\.moe"):
        load_recipe(recipe)


@pytest.mark.parametrize("tokens,top_k", [(1, 1), (1, 2), (2, 2), (4, 1)])
def test_decoding_a_few_tokens_equals_the_sorted_path(monkeypatch: pytest.MonkeyPatch,
                                                      tokens: int, top_k: int) -> None:
    """Without gradients, a handful of (token, choice) pairs runs each pair through its
    expert directly (decoding); it computes what sorting the tokens by expert computes, and
    inference skips the auxiliary losses."""
    import tinyvlm.models.moe as moe_module
    from tinyvlm.config import MoEConfig
    from tinyvlm.models.context import ForwardContext

    torch.manual_seed(0)
    layer = moe_module.MoE(16, 24, MoEConfig(experts=4, top_k=top_k)).eval()
    x = torch.randn(1, tokens, 16)
    with torch.no_grad():
        ctx = ForwardContext()
        few = layer(x, ctx)
        monkeypatch.setattr(moe_module, "DECODE_CHOICES", 0)
        sorted_path = layer(x, ForwardContext())
    torch.testing.assert_close(few, sorted_path, atol=1e-6, rtol=1e-6)
    assert float(ctx.records[0].aux_loss) == 0.0
    layer.train()
    trained = ForwardContext()
    layer(x, trained)
    assert float(trained.records[0].aux_loss.detach()) > 0


@pytest.mark.parametrize("experts,top_k,tokens", [(4, 2, 64), (8, 1, 5), (16, 2, 300)])
def test_the_hand_written_expert_backward_equals_autograds(
        monkeypatch: pytest.MonkeyPatch, experts: int, top_k: int, tokens: int) -> None:
    """fp32 training runs the experts through a Function whose backward writes each expert's
    weight gradients into one buffer; outputs and every gradient equal autograd's own path
    (also with 10 choices over 8 experts)."""
    import tinyvlm.models.moe as moe_module
    from tinyvlm.config import MoEConfig
    from tinyvlm.models.context import ForwardContext

    torch.manual_seed(0)
    layer = moe_module.MoE(32, 48, MoEConfig(experts=experts, top_k=top_k)).train()
    with torch.no_grad():
        layer.router.weight.normal_(std=0.5)
    x = torch.randn(2, tokens, 32, requires_grad=True)
    grad = torch.randn(2, tokens, 32)
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(moe_module, "_fused_experts_apply", lambda *a: False)
        layer.zero_grad()
        x.grad = None
        y = layer(x, ForwardContext())
        y.backward(grad)
        results.append([y.detach(), x.grad.clone(), layer.gate_up_proj.grad.clone(),
                        layer.down_proj.grad.clone(), layer.router.weight.grad.clone()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
