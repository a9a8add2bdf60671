"""Cheaper perception: VLoRA perceptual weights, [CLS]-guided pruning and FastV, each checked
against an invariant (the text-only model, one-by-one runs, the unpruned model, a hand-picked
ranking, cached against uncached generation)."""

from __future__ import annotations

import copy

import pytest
import torch

from tinyvlm.analysis.cost import efficiency, parameter_split
from tinyvlm.config import (
    ConnectorConfig,
    FastVConfig,
    MoEConfig,
    PruneConfig,
    VLoRAConfig,
)
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.models.context import ForwardContext
from tinyvlm.models.perception import PruneProjector, merged
from tinyvlm.models.vision import VisionOutput
from tinyvlm.models.vlm import TinyVLM

from .conftest import tiny_model_config


def build(tokenizer: Tokenizer, connector: ConnectorConfig | None = None,
          fastv: FastVConfig | None = None, moe: MoEConfig | None = None,
          randomise_b: bool = False) -> TinyVLM:
    cfg = tiny_model_config()
    cfg.language.moe = moe
    cfg.vision.patch_size = 4  # 64 patches
    cfg.language.max_seq_len = 256
    if connector is not None:
        cfg.connector = connector
    cfg.language.fastv = fastv
    torch.manual_seed(0)
    model = TinyVLM.from_tokenizer(cfg, tokenizer).eval()
    if randomise_b and cfg.connector.kind == "vlora":
        with torch.no_grad():
            for b in model.connector.b.values():
                b.normal_(0, 0.05)
    return model


VLORA = ConnectorConfig(kind="vlora", vlora=VLoRAConfig(rank=4, dim=32, heads=4, depth=1))


def prompt(model: TinyVLM, text: str = "<image>\nwhat colour is the circle?") -> torch.Tensor:
    return torch.tensor([model.tokenizer.encode_prompt([], text, model.image_tokens)])


def test_vlora_puts_no_visual_token_and_starts_as_the_text_only_model(tokenizer) -> None:
    model = build(tokenizer, VLORA)
    assert model.image_tokens == 0
    ids = prompt(model)
    assert int((ids == model.config.image_token_id).sum()) == 0
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        with_image = model(ids, pixel_values=pixels, image_rows=torch.tensor([0])).logits
        text_only = model(ids).logits
    assert torch.equal(with_image, text_only)  # B = 0: the deltas are exactly zero


def test_vlora_deltas_are_per_sample_and_merge_exactly(tokenizer) -> None:
    model = build(tokenizer, VLORA, randomise_b=True)
    ids = prompt(model).expand(3, -1)
    pixels = torch.randn(3, 3, 32, 32)
    rows = torch.arange(3)
    with torch.no_grad():
        batched = model(ids, pixel_values=pixels, image_rows=rows).logits
        single = [model(ids[:1], pixel_values=pixels[i:i + 1],
                        image_rows=torch.tensor([0])).logits for i in range(3)]
        assert not torch.allclose(single[0], single[1])  # the image matters
        for i in range(3):
            torch.testing.assert_close(batched[i:i + 1], single[i], atol=1e-5, rtol=1e-5)
        # One image: merged weights give the per-sample path's logits; un-merging restores
        # every weight bit for bit.
        before = copy.deepcopy(model.state_dict())
        cond, _ = model.encode_images(pixels[:1])
        with merged(model, cond) as rest:
            assert set(rest) == {n for n in cond.deltas if n.endswith(".ffn")}
            ctx = ForwardContext()
            cond.deltas = rest
            embeds, _ = model.condition(ids[:1], None, torch.tensor([0]), ctx, cond)
            hidden = model.language(embeds, torch.arange(ids.shape[1])[None], None, None, ctx)
            merged_logits = model.language.lm_head(hidden)
        torch.testing.assert_close(merged_logits, single[0], atol=1e-5, rtol=1e-5)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_vlora_gradients_reach_the_generator(tokenizer) -> None:
    model = build(tokenizer, VLORA, randomise_b=True).train()
    ids = prompt(model)
    out = model(ids, pixel_values=torch.randn(1, 3, 32, 32), image_rows=torch.tensor([0]))
    out.logits.square().mean().backward()
    gen = model.connector.generators["q"]
    assert gen.head.weight.grad is not None and gen.head.weight.grad.abs().sum() > 0
    assert model.connector.proj.weight.grad.abs().sum() > 0
    # k/v deltas are sized for grouped-query attention.
    lang = model.config.language
    assert model.connector.b["k"].shape[-1] == lang.kv_heads * lang.head_dim
    assert model.connector.b["q"].shape[-1] == lang.heads * lang.head_dim


def test_vlora_rows_without_an_image_get_no_delta(tokenizer) -> None:
    model = build(tokenizer, VLORA, randomise_b=True)
    text = torch.tensor([model.tokenizer.encode_prompt([], "what colour?", 0)])
    ids = torch.cat([text, text])
    with torch.no_grad():
        mixed = model(ids, pixel_values=torch.randn(1, 3, 32, 32),
                      image_rows=torch.tensor([1])).logits
        plain = model(ids).logits  # the same batch without any image
    torch.testing.assert_close(mixed[:1], plain[:1], atol=0, rtol=0)
    assert not torch.allclose(mixed[1:], plain[1:])


def test_prune_keeps_the_top_k_in_their_order(tokenizer) -> None:
    model = build(tokenizer, ConnectorConfig(kind="prune", prune=PruneConfig(keep=0.25)))
    conn = model.connector
    assert isinstance(conn, PruneProjector) and conn.keep == 16 and model.image_tokens == 16
    patches = torch.randn(2, 64, 32)
    scores = torch.rand(2, 64)
    attn = scores[:, None].expand(-1, 2, -1)  # two heads, averaged: the same scores
    out = VisionOutput(patches=patches, cls=patches[:, 0],
                       cls_attention={i: attn for i in range(2)})
    idx = conn.select(out)
    for row in range(2):
        expected = sorted(scores[row].topk(16).indices.tolist())
        assert idx[row].tolist() == expected
    tokens = conn(out).tokens
    torch.testing.assert_close(tokens, conn.fc2(conn.act(conn.fc1(
        patches.gather(1, idx[..., None].expand(-1, -1, 32))))))
    merge = build(tokenizer, ConnectorConfig(kind="prune", prune=PruneConfig(keep=16,
                                                                             merge=True)))
    assert merge.image_tokens == 17


def test_prune_uses_the_mlp_models_weights(tokenizer) -> None:
    """Training-free pruning: an mlp model's weights load into a prune connector."""
    mlp = build(tokenizer)
    pruned = build(tokenizer, ConnectorConfig(kind="prune", prune=PruneConfig(keep=0.5)))
    pruned.load_state_dict(mlp.state_dict())
    ids = prompt(pruned)
    assert int((ids == pruned.config.image_token_id).sum()) == 32
    with torch.no_grad():
        out = pruned.generate(ids, pixel_values=torch.randn(1, 3, 32, 32), max_new_tokens=4)
    assert out.shape[0] == 1


def test_fastv_keep_all_equals_the_unpruned_model(tokenizer) -> None:
    plain = build(tokenizer)
    keep_all = build(tokenizer, fastv=FastVConfig(layer=0, keep=1.0))
    ids = prompt(plain)
    pixels = torch.randn(1, 3, 32, 32)
    a = plain.generate(ids, pixel_values=pixels, max_new_tokens=6)
    b = keep_all.generate(ids, pixel_values=pixels, max_new_tokens=6)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["mlp", "prune", "vlora", "fastv", "fastv-moe"])
def test_cached_and_uncached_generation_agree(kind: str, tokenizer) -> None:
    connector = {"prune": ConnectorConfig(kind="prune", prune=PruneConfig(keep=0.25)),
                 "vlora": VLORA}.get(kind)
    fastv = FastVConfig(layer=0, keep=0.25) if kind.startswith("fastv") else None
    moe = MoEConfig(experts=4, top_k=2, layers="all") if kind == "fastv-moe" else None
    model = build(tokenizer, connector, fastv, moe, randomise_b=True)
    tok = model.tokenizer
    # A left-padded batch of two prompts of different lengths, one image each.
    rows = [tok.encode_prompt([], "<image>\nwhat colour is the circle?", model.image_tokens),
            tok.encode_prompt([], "<image>\nhow many?", model.image_tokens)]
    from tinyvlm.data.collate import Batch

    batch = Batch.from_rows(rows, tok.pad_id, pixel_values=torch.randn(2, 3, 32, 32),
                            images_per_row=[1, 1], side="left")
    kw = {"pixel_values": batch.pixel_values, "image_rows": batch.image_rows,
          "max_new_tokens": 8}
    cached = model.generate(batch.input_ids, batch.attention_mask, **kw)
    uncached = model.generate(batch.input_ids, batch.attention_mask, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    # Each row as it would be alone.
    for row in range(2):
        alone = model.generate(torch.tensor([rows[row]]),
                               pixel_values=batch.pixel_values[row:row + 1],
                               image_rows=torch.tensor([0]), max_new_tokens=8)
        assert alone[0].tolist() == cached[row, : alone.shape[1]].tolist()


def test_fastv_drops_image_tokens_from_later_layers_cache(tokenizer) -> None:
    model = build(tokenizer, fastv=FastVConfig(layer=0, keep=0.25))
    ids = prompt(model)
    n_img = int((ids == model.config.image_token_id).sum())
    from tinyvlm.models.language import FastVState, KVCache

    cache = KVCache(model.config.language, 1, ids.shape[1] + 4)
    ctx = ForwardContext()
    ctx.fastv = FastVState(0, 0.25, ids == model.config.image_token_id)
    embeds, _ = model.condition(ids, torch.randn(1, 3, 32, 32), None, ctx)
    model.language(embeds, torch.arange(ids.shape[1])[None], torch.ones_like(ids), cache, ctx)
    assert cache.lengths[0] == ids.shape[1]
    assert cache.lengths[1] == ids.shape[1] - (n_img - round(0.25 * n_img))


def test_costs_of_each_connector(tokenizer) -> None:
    for connector in (VLORA, ConnectorConfig(kind="prune", prune=PruneConfig(keep=0.25))):
        model = build(tokenizer, connector)
        split = parameter_split(model.config)
        assert split.connector.total == sum(p.numel() for p in model.connector.parameters())
    base = efficiency(build(tokenizer).config)
    vlora = efficiency(build(tokenizer, VLORA).config)
    pruned = efficiency(build(tokenizer, ConnectorConfig(
        kind="prune", prune=PruneConfig(keep=0.25))).config)
    fastv = efficiency(build(tokenizer, fastv=FastVConfig(layer=0, keep=0.25)).config)
    assert base["visual_tokens_per_image"] == 64 and vlora["visual_tokens_per_image"] == 0
    assert pruned["visual_tokens_per_image"] == 16
    assert vlora["prefill_flops"] < pruned["prefill_flops"] < base["prefill_flops"]
    assert fastv["prefill_flops"] < base["prefill_flops"]
    assert fastv["kv_cache_bytes"] < base["kv_cache_bytes"]


@pytest.mark.parametrize("kind", ["prune", "vlora", "fastv"])
def test_save_load_and_info(kind: str, tokenizer, tmp_path) -> None:
    connector = {"prune": ConnectorConfig(kind="prune", prune=PruneConfig(keep=0.25)),
                 "vlora": VLORA}.get(kind)
    moe = MoEConfig(experts=4, top_k=2, layers="every-other") if kind == "vlora" else None
    model = build(tokenizer, connector, FastVConfig(layer=0, keep=0.5) if kind == "fastv"
                  else None, moe, randomise_b=True)
    model.save_pretrained(tmp_path / "m")
    again = TinyVLM.from_pretrained(tmp_path / "m")
    ids = prompt(model)
    pixels = torch.randn(1, 3, 32, 32)
    kw = {"pixel_values": pixels, "image_rows": torch.tensor([0]), "max_new_tokens": 5}
    assert torch.equal(model.generate(ids, **kw), again.generate(ids, **kw))
    from tinyvlm.analysis.cost import model_report

    report = model_report(again)
    assert report["image_tokens"] == model.image_tokens
    assert report["params"]["connector"] == sum(p.numel() for p in model.connector.parameters())


def test_a_vlora_student_distils_from_a_token_based_teacher(tokenizer, tmp_path) -> None:
    """Response-token mimic distillation where the teacher sees 64 visual tokens and the
    student none: each reads its own batch; the KD aligns the answers."""
    from tinyvlm.config import MimicConfig, StageConfig
    from tinyvlm.data.collate import SFTCollator
    from tinyvlm.data.conversation import Conversation
    from tinyvlm.data.images import ImageStore
    from tinyvlm.train.objectives.mimic import Mimic, MimicBatch

    teacher = build(tokenizer)
    teacher.save_pretrained(tmp_path / "teacher")
    student = build(tokenizer, VLORA, randomise_b=True).train()
    stage = StageConfig(name="kd", objective="mimic",
                        mimic=MimicConfig(teacher=str(tmp_path / "teacher")))
    objective = Mimic(student, stage)
    assert not objective._shared  # different visual inputs: the teacher builds its own batch
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    convs = [Conversation("a", [img], [("<image>\nwhat colour is the circle?", "red")])]
    s_batch = SFTCollator(student.tokenizer, ImageStore.for_model(student.config.vision), 0,
                          256)(convs)
    t_batch = objective.teacher.collate(convs)
    assert int((t_batch.input_ids == teacher.config.image_token_id).sum()) == 64
    assert int((s_batch.input_ids == student.config.image_token_id).sum()) == 0
    out = objective.forward(student, MimicBatch(s_batch, t_batch))
    out.loss.backward()
    assert out.metrics["kd"] > 0
    assert student.connector.generators["v"].head.weight.grad.abs().sum() > 0


def test_images_with_different_token_counts_equal_their_slots_removed(tokenizer) -> None:
    """Pruning by [CLS] mass keeps a different number of tokens per image: each <image> still
    expands to `keep` slots, the unused ones are left out of attention, and the result is
    what the same model computes with those slots physically absent."""
    model = build(tokenizer, ConnectorConfig(kind="prune", prune=PruneConfig(keep=0.5,
                                                                             mass=0.5)))
    with torch.no_grad():  # a peaked, image-dependent [CLS] attention
        for p in model.vision.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.12)
    tok = model.tokenizer
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cond, _ = model.encode_images(pixels)
    counts = cond.token_mask.sum(1).tolist()
    assert model.image_tokens == 32 and all(1 <= c <= 32 for c in counts)
    assert counts[0] != counts[1] and max(counts) < 32, counts  # really variable
    text = "<image>\nwhat colour is the circle?"
    for i in range(2):
        ids = torch.tensor([tok.encode_prompt([], text, 32)])
        with torch.no_grad():
            got = model(ids, pixel_values=pixels[i:i + 1]).logits[:, -1]
            short = torch.tensor([tok.encode_prompt([], text, counts[i])])
            embeds = model.language.embed(short)
            embeds[short == model.config.image_token_id] = cond.tokens[i][cond.token_mask[i]]
            hidden = model.language(embeds, torch.arange(short.shape[1])[None])
            ref = model.language.lm_head(hidden[:, -1])
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # In a batch, cached and uncached generation agree and each row is as it is alone.
    from tinyvlm.data.collate import Batch

    rows = [tok.encode_prompt([], text, 32), tok.encode_prompt([], "<image>\nhow many?", 32)]
    batch = Batch.from_rows(rows, tok.pad_id, pixel_values=pixels, images_per_row=[1, 1],
                            side="left")
    kw = {"pixel_values": pixels, "image_rows": batch.image_rows, "max_new_tokens": 6}
    cached = model.generate(batch.input_ids, batch.attention_mask, **kw)
    assert torch.equal(cached, model.generate(batch.input_ids, batch.attention_mask,
                                              use_cache=False, **kw))
    for row in range(2):
        alone = model.generate(torch.tensor([rows[row]]), pixel_values=pixels[row:row + 1],
                               max_new_tokens=6)
        assert alone[0].tolist() == cached[row, : alone.shape[1]].tolist()


def test_fastv_prunes_without_the_cache_too_and_saves_cache_memory(tokenizer) -> None:
    """A single prompt (no padding): the uncached path masks the dropped tokens exactly as
    the cached path drops them; the later layers' cache buffers are shorter by as much."""
    from tinyvlm.analysis.cost import kv_cache_bytes
    from tinyvlm.models.language import FastVState, KVCache

    plain = build(tokenizer)
    with torch.no_grad():
        for p in plain.parameters():
            p.mul_(3.0)  # sharper attention: pruning changes the greedy tokens
    fastv = build(tokenizer, fastv=FastVConfig(layer=0, keep=0.25))
    fastv.load_state_dict(plain.state_dict())
    ids = prompt(plain)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cached = fastv.generate(ids, pixel_values=pixels, max_new_tokens=8)
    assert torch.equal(cached, fastv.generate(ids, pixel_values=pixels, max_new_tokens=8,
                                              use_cache=False))
    assert not torch.equal(cached, plain.generate(ids, pixel_values=pixels, max_new_tokens=8))
    lang = fastv.config.language
    cache = KVCache(lang, 1, ids.shape[1] + 8)
    ctx = ForwardContext()
    ctx.fastv = FastVState(0, 0.25, ids == fastv.config.image_token_id)
    embeds, _ = fastv.condition(ids, pixels, None, ctx)
    fastv.language(embeds, torch.arange(ids.shape[1])[None], torch.ones_like(ids), cache, ctx)
    assert cache.nbytes == kv_cache_bytes(lang, 1, ids.shape[1] + 8, "float32", 64 - 16)


def test_learned_positions_add_one_vector_per_patch(tokenizer) -> None:
    """connector.position 'learned': the projector's output plus the patch's own vector; the
    prune connector adds the vectors of the patches it keeps (and the mean of the dropped
    ones to the merged token), so pruning a trained model keeps every token's place."""
    plain = build(tokenizer)
    placed = build(tokenizer, ConnectorConfig(kind="mlp", position="learned"))
    placed.load_state_dict(plain.state_dict(), strict=False)  # same projector weights
    pos = placed.connector.position
    assert pos is not None and pos.shape == (64, placed.config.language.dim)
    patches = torch.randn(2, 64, 32)
    out = VisionOutput(patches=patches, cls=patches[:, 0])
    torch.testing.assert_close(placed.connector(out).tokens, plain.connector(out).tokens + pos)

    pruned = build(tokenizer, ConnectorConfig(kind="prune", position="learned",
                                              prune=PruneConfig(keep=16, merge=True)))
    pruned.load_state_dict(placed.state_dict())
    scores = torch.rand(2, 64)
    out = VisionOutput(patches=patches, cls=patches[:, 0],
                       cls_attention={i: scores[:, None].expand(-1, 2, -1) for i in range(2)})
    conn = pruned.connector
    idx = conn.select(out)
    tokens = conn(out).tokens
    full = placed.connector(out).tokens  # projection is per token, so kept rows match
    torch.testing.assert_close(tokens[:, :16],
                               full.gather(1, idx[..., None].expand(-1, -1, full.shape[-1])))
    for row in range(2):
        rest = sorted(set(range(64)) - set(idx[row].tolist()))
        mean_patch = patches[row, rest].mean(0)
        expected = conn.fc2(conn.act(conn.fc1(mean_patch))) + pos[rest].mean(0)
        torch.testing.assert_close(tokens[row, 16], expected)
    # the cost accounting counts the vectors
    counted = sum(p.numel() for p in placed.connector.parameters())
    assert counted == sum(p.numel() for p in plain.connector.parameters()) + pos.numel()
    assert parameter_split(placed.config).connector.total == counted


def test_connector_position_is_checked() -> None:
    from tinyvlm.config.checks import check_model
    from tinyvlm.errors import InputError
    cfg = tiny_model_config()
    cfg.connector.position = "sincos"
    with pytest.raises(InputError, match=r"'model\.connector\.position' must be 'none' or"):
        check_model(cfg)
    cfg.connector = ConnectorConfig(kind="vlora", position="learned", vlora=VLoRAConfig())
    with pytest.raises(InputError, match="'none' for connector kind 'vlora'"):
        check_model(cfg)
