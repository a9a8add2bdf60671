import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.models.language import attention_mask_for
from tinyvlm.models.vision import VisionEncoder, sincos_2d
from tinyvlm.models.vlm import TinyVLM, sample

from .conftest import tiny_model_config


def prompts(model: TinyVLM, questions: list[str], images: int = 1) -> tuple[torch.Tensor, ...]:
    """Left-padded prompt ids and mask, each question with `images` images."""
    tok = model.tokenizer
    assert tok is not None
    rows = [tok.encode_prompt([], "<image>" * images + q, model.image_tokens) for q in questions]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_vision_encoder_shapes_and_cls_attention() -> None:
    config = tiny_model_config().vision
    enc = VisionEncoder(config).eval()
    x = torch.randn(3, 3, 32, 32)
    out = enc(x)
    assert out.patches.shape == (3, config.num_patches, config.dim)
    assert out.cls.shape == (3, config.dim)
    assert set(out.cls_attention) == {0, config.depth - 1}
    # Recompute layer 0's [CLS] attention by hand from the same q and k.
    block = enc.blocks[0]
    h = enc.patch_embed(x).flatten(2).transpose(1, 2) + enc.pos_embed
    h = torch.cat([enc.cls_token.expand(3, -1, -1), h], 1)
    q, k, _ = block.attn.qkv(block.attn_norm(h)).chunk(3, dim=-1)
    heads, hd = config.heads, config.dim // config.heads
    q = q.view(3, -1, heads, hd).transpose(1, 2)
    k = k.view(3, -1, heads, hd).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)
    torch.testing.assert_close(out.cls_attention[0], probs[:, :, 0, 1:])


def test_sincos_positions_encode_rows_and_columns() -> None:
    pos = sincos_2d(4, 16)
    assert pos.shape == (16, 16)
    # Patches in the same row share the row half; in the same column, the column half.
    torch.testing.assert_close(pos[0, :8], pos[3, :8])
    torch.testing.assert_close(pos[0, 8:], pos[12, 8:])
    assert not torch.allclose(pos[0], pos[5])


def test_grouped_query_attention_matches_repeated_heads(model: TinyVLM) -> None:
    lm = model.language
    attn = lm.blocks[0].attn
    x = torch.randn(2, 5, lm.config.dim)
    rope = lm.rope(torch.arange(5).expand(2, -1))
    got = attn(x, rope, None, True, None)
    from tinyvlm.models.layers import apply_rotary

    b, t, hd = 2, 5, lm.config.head_dim
    q = apply_rotary(attn.q_proj(x).view(b, t, -1, hd).transpose(1, 2), *rope)
    k = apply_rotary(attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2), *rope)
    v = attn.v_proj(x).view(b, t, -1, hd).transpose(1, 2)
    groups = lm.config.heads // lm.config.kv_heads
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    ref = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_rope_relative_property(model: TinyVLM) -> None:
    """Scores of rotated q and k depend only on the distance between positions."""
    from tinyvlm.models.layers import apply_rotary

    rope, hd = model.language.rope, model.language.config.head_dim
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def score(i: int, j: int) -> torch.Tensor:
        qi = apply_rotary(q, *rope(torch.tensor([[i]])))
        kj = apply_rotary(k, *rope(torch.tensor([[j]])))
        return (qi * kj).sum()

    torch.testing.assert_close(score(3, 1), score(10, 8))


def test_image_features_land_on_the_placeholder(model: TinyVLM) -> None:
    tok = model.tokenizer
    n = model.image_tokens
    ids = torch.tensor([tok.encode_prompt([], "what word <image> and <image>", n)])
    feats = torch.randn(2, n, model.config.language.dim)
    embeds = model.embed(ids, feats)
    where = (ids[0] == tok.image_id).nonzero().squeeze(1)
    assert where.numel() == 2 * n
    torch.testing.assert_close(embeds[0, where], feats.reshape(-1, feats.shape[-1]))
    text = (ids[0] != tok.image_id).nonzero().squeeze(1)
    torch.testing.assert_close(embeds[0, text], model.language.embed(ids[0, text]))
    with pytest.raises(ValueError, match="image-token positions"):
        model.embed(ids, feats[:1])


def test_padding_does_not_change_logits(model: TinyVLM) -> None:
    ids, mask = prompts(model, ["how many shapes?", "what colour is the circle?"])
    pixels = torch.randn(2, 3, 32, 32)
    batched = model(ids, mask, pixels).logits
    n = int(mask[0].sum())
    alone = model(ids[:1, -n:], None, pixels[:1]).logits
    torch.testing.assert_close(batched[0, -n:], alone[0], atol=1e-5, rtol=1e-4)


def varied(tokenizer: Tokenizer) -> TinyVLM:
    """An untied model with unit-gain weights: at the library's small initialisation, with tied
    embeddings, greedy decoding repeats the last prompt token, which would make equality
    tests vacuous."""
    torch.manual_seed(1)
    model = TinyVLM.from_tokenizer(tiny_model_config(tie_embeddings=False), tokenizer).eval()
    with torch.no_grad():
        for m in model.language.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, m.in_features**-0.5)
        model.language.embed.weight.normal_(0, 1.0)
    return model


def test_cached_generation_equals_recomputation(tokenizer: Tokenizer) -> None:
    model = varied(tokenizer)
    model.config.eos_token_id = -1  # never stop: compare all 12 steps
    ids, mask = prompts(model, ["how many shapes?", "what colour is the circle?", "no"])
    pixels = torch.randn(3, 3, 32, 32)
    cached = model.generate(ids, mask, pixels, max_new_tokens=12)
    full = model.generate(ids, mask, pixels, max_new_tokens=12, use_cache=False)
    assert cached.shape == (3, 12)
    assert len(set(cached.flatten().tolist())) >= 4  # the check is not vacuous
    assert torch.equal(cached, full)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = model.generate(ids, mask, pixels, 12, temperature=1.0, top_p=0.9, generator=g1)
    s2 = model.generate(ids, mask, pixels, 12, temperature=1.0, top_p=0.9, generator=g2,
                        use_cache=False)
    assert torch.equal(s1, s2)


def test_batched_generation_equals_one_by_one(tokenizer: Tokenizer) -> None:
    model = varied(tokenizer)
    model.config.eos_token_id = -1
    questions = ["how many shapes?", "what colour is the circle?"]
    ids, mask = prompts(model, questions)
    pixels = torch.randn(2, 3, 32, 32)
    batched = model.generate(ids, mask, pixels, max_new_tokens=8)
    for i in range(2):
        n = int(mask[i].sum())
        alone = model.generate(ids[i : i + 1, -n:], None, pixels[i : i + 1], max_new_tokens=8)
        assert torch.equal(batched[i], alone[0])
    assert len(set(batched.flatten().tolist())) >= 3


def test_generation_stops_at_eos_and_pads_after(tokenizer: Tokenizer) -> None:
    tok = tokenizer
    m = TinyVLM.from_tokenizer(tiny_model_config(tie_embeddings=False), tok).eval()
    short = torch.tensor([[tok.bos_id, tok.user_id]])
    with torch.no_grad():  # point the EOS row of the head at this prompt's last hidden state
        h = m.language(m.language.embed(short), torch.arange(2)[None])[0, -1]
        m.language.lm_head.weight[tok.end_id] = 100 * h / h.norm()
    assert m.generate(short, None, None, max_new_tokens=5).tolist() == [[tok.end_id]]
    other = torch.tensor([[tok.pad_id, tok.bos_id, tok.user_id], [tok.bos_id, tok.user_id,
                                                                  tok.assistant_id]])
    out = m.generate(other, (other != tok.pad_id).long(), None, max_new_tokens=4)
    assert out[0, 0] == tok.end_id and (out[0, 1:] == tok.pad_id).all()


def test_sampling_top_p_keeps_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(logits, 1.0, 0.5, g)) for _ in range(50)}
    assert draws == {0}
    draws = {int(sample(logits, 1.0, 0.85, g)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(sample(logits, 0.0, 1.0, None)) == 0


def test_attention_mask_fast_paths() -> None:
    assert attention_mask_for(None, 5, 0) == (None, True)
    assert attention_mask_for(torch.ones(2, 6, dtype=torch.long), 1, 5) == (None, False)
    mask, causal = attention_mask_for(torch.tensor([[0, 1, 1]]), 3, 0)
    assert not causal and mask is not None
    assert mask[0, 0].tolist() == [[True, False, False], [False, True, False],
                                   [False, True, True]]


def test_generate_checks_the_length_up_front(model: TinyVLM) -> None:
    ids, mask = prompts(model, ["how many shapes?"])
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(ids, mask, torch.randn(1, 3, 32, 32), max_new_tokens=1000)


def test_save_load_round_trip(model: TinyVLM, tmp_path: Path) -> None:
    path = model.save_pretrained(tmp_path / "m")
    assert {p.name for p in path.iterdir()} == {"config.json", "model.safetensors",
                                                "tokenizer.json", "README.md", "checksums.json"}
    loaded = TinyVLM.from_pretrained(path).eval()
    assert loaded.config == model.config
    ids, mask = prompts(model, ["how many shapes?"])
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(ids, mask, pixels).logits, loaded(ids, mask, pixels).logits)
    # Tied embeddings stay tied after loading.
    assert loaded.language.lm_head.weight.data_ptr() == loaded.language.embed.weight.data_ptr()
    # Saving again over an existing directory replaces it whole.
    model.save_pretrained(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_untied_model_round_trips(tokenizer: Tokenizer, tmp_path: Path) -> None:
    m = TinyVLM.from_tokenizer(tiny_model_config(tie_embeddings=False), tokenizer)
    loaded = TinyVLM.from_pretrained(m.save_pretrained(tmp_path / "u"))
    assert torch.equal(loaded.language.lm_head.weight, m.language.lm_head.weight)


def test_from_pretrained_errors(model: TinyVLM, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"config\.json is missing"):
        TinyVLM.from_pretrained(tmp_path / "empty")
    path = model.save_pretrained(tmp_path / "m")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"model\.safetensors does not match its checksum"):
        TinyVLM.from_pretrained(path)
    (path / "checksums.json").unlink()  # a directory written before checksums existed
    with pytest.raises(InputError, match="cannot read weights"):
        TinyVLM.from_pretrained(path)


def test_a_flipped_byte_is_detected_not_loaded(model: TinyVLM, tmp_path: Path) -> None:
    path = model.save_pretrained(tmp_path / "m")
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10] ^= 0x01  # inside the last tensor: safetensors itself would load it
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"model\.safetensors does not match its checksum"):
        TinyVLM.from_pretrained(path)


def test_model_directories_get_the_usual_file_modes(model: TinyVLM, tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        path = model.save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in path.iterdir()} == {0o644}


def test_config_and_tokenizer_mismatches_are_clear_errors(model: TinyVLM, tokenizer: Tokenizer,
                                                          tmp_path: Path) -> None:
    import json

    path = model.save_pretrained(tmp_path / "m")
    (path / "checksums.json").unlink()
    config = json.loads((path / "config.json").read_text())
    config["language"]["vocab_size"] = 5
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"tokenizer\.json has 29 tokens but the embedding only 5"):
        TinyVLM.from_pretrained(path)
    config["language"]["vocab_size"] = tokenizer.vocab_size
    config["language"]["heads"] = 5
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config\.language\.heads' must be a divisor of dim"):
        TinyVLM.from_pretrained(path)
    config["language"]["heads"] = 4
    config["connector"]["kind"] = "nope"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"cannot build the model of config\.json: unknown "
                                         r"connector kind 'nope'"):
        TinyVLM.from_pretrained(path)


def test_loading_non_finite_weights_warns(model: TinyVLM, tmp_path: Path) -> None:
    from tinyvlm.models.vlm import NonFiniteWeightsWarning

    with torch.no_grad():
        model.language.norm.weight[0] = float("nan")
    path = model.save_pretrained(tmp_path / "m")
    with pytest.warns(NonFiniteWeightsWarning, match="1 weight tensors hold NaN"):
        TinyVLM.from_pretrained(path)


def test_training_step_reduces_loss(model: TinyVLM) -> None:
    ids, _ = prompts(model, ["how many shapes?"])
    pixels = torch.randn(1, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        logits = model(ids, None, pixels).logits
        loss = F.cross_entropy(logits[0, :-1], ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_half_precision_attention_runs_in_fp32_on_the_cpu() -> None:
    """Under bf16 autocast on the CPU, attention computes in fp32 (torch's CPU flash kernel is
    several times slower in bf16) and hands back bf16, gradients included."""
    import torch.nn.functional as F

    from tinyvlm.models.layers import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g).bfloat16().requires_grad_(True)
               for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, is_causal=True)
    assert out.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert torch.equal(out, ref.bfloat16())
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16
    x = torch.randn(2, 3, 5, 8, generator=g)
    assert torch.equal(attention(x, x, x), F.scaled_dot_product_attention(x, x, x))
