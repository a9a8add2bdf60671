"""Hugging Face checkpoints in and out, against transformers itself: tiny random models
built from configs and saved with save_pretrained, imported into tinyvlm's modules and
compared in fp32 (features, logits, greedy generations, chat strings, pixel values); tinyvlm
models exported and loaded back by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from tinyvlm.config import LanguageConfig, ModelConfig, MoEConfig, VisionConfig  # noqa: E402
from tinyvlm.data.images import ImageStore  # noqa: E402
from tinyvlm.errors import InputError  # noqa: E402
from tinyvlm.models.hf import (  # noqa: E402
    Unsupported,
    assemble,
    clip,
    export_model,
    import_model,
    llava,
    siglip,
)
from tinyvlm.models.hf.common import read_config, read_weights  # noqa: E402
from tinyvlm.models.language import LanguageModel  # noqa: E402
from tinyvlm.models.vision import VisionEncoder  # noqa: E402
from tinyvlm.models.vlm import TinyVLM  # noqa: E402

ATOL = 1e-5
CHATML = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() + ': ' }}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}"
    "{% endfor %}{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ c['text'] + ' ' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_WORD_TEXT = ("the a red blue green circle square triangle what colour shape is there how "
              "many yes no one two three left right of on in USER ASSISTANT")
WORDS = _WORD_TEXT.split()


def hf_tokenizer(directory: Path, specials: list[str], template: str, bos: str | None,
                 eos: str, llama_bos: bool = False, kind: str = "wordlevel") -> int:
    """A small fast tokenizer with a chat template, saved as transformers does: word-level,
    or BPE trained here with Llama's metaspace or Qwen2's byte-level pre-tokenizer. Returns
    its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if kind == "wordlevel":
        vocab = {t: i for i, t in enumerate([*specials, *WORDS, "?", ".", ":", "\n"])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[0]))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation()])
    else:
        tok = Tokenizer(models.BPE(unk_token=specials[0] if kind == "metaspace" else None))
        if kind == "metaspace":
            tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
            tok.decoder = decoders.Metaspace(prepend_scheme="first")
            alphabet: list[str] = []
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            alphabet = pre_tokenizers.ByteLevel.alphabet()
        corpus = [" ".join(WORDS), "what colour is the circle ? a red circle .",
                  "USER: ASSISTANT: how many shapes are there ? two", "\n" * 3]
        tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(
            vocab_size=120, special_tokens=specials, initial_alphabet=alphabet))
        vocab = tok.get_vocab()
    if llama_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=specials[0],
        pad_token=specials[0], additional_special_tokens=specials[1:])
    fast.chat_template = template
    fast.save_pretrained(directory)
    return tok.get_vocab_size()


def clip_config(**kw: object) -> object:
    return transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=3, num_attention_heads=4,
                                         image_size=32, patch_size=8, **kw)


def siglip_config() -> object:
    return transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=48,
                                           num_hidden_layers=3, num_attention_heads=4,
                                           image_size=32, patch_size=8)


def llama_config(vocab: int, **kw: object) -> object:
    return transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=256, **kw)


def qwen2_config(vocab: int) -> object:
    return transformers.Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=256,
                                    tie_word_embeddings=True)


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere (norms, biases, embeddings): a mapping error shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model.eval()


def image_pixels(size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, size, size, generator=g)


# ----------------------------------------------------------------------------- vision towers


def test_clip_features_match_transformers(tmp_path: Path) -> None:
    hf = randomise(transformers.CLIPVisionModel(clip_config()))
    hf.save_pretrained(tmp_path)
    raw = read_config(tmp_path)
    cfg = clip.vision_config(raw, tmp_path)
    ours = VisionEncoder(cfg)
    ours.load_state_dict(llava.import_vision(read_weights(tmp_path), cfg, clip, tmp_path))
    pixels = image_pixels()
    with torch.no_grad():
        ref = hf(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = ours(pixels).features
    assert got.shape == ref.shape == (2, 16, 32)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    # The [CLS] token kept ("full") and another layer.
    state = ours.state_dict()
    cfg.feature_cls, cfg.feature_layer = True, 0
    ours = VisionEncoder(cfg)
    ours.load_state_dict(state)
    with torch.no_grad():
        ref = hf(pixels, output_hidden_states=True).hidden_states[1]
        got = ours(pixels).features
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_siglip_features_match_transformers(tmp_path: Path) -> None:
    hf = randomise(transformers.SiglipVisionModel(siglip_config()))
    hf.save_pretrained(tmp_path)
    cfg = siglip.vision_config(read_config(tmp_path), tmp_path)
    ours = VisionEncoder(cfg)
    ours.load_state_dict(llava.import_vision(read_weights(tmp_path), cfg, siglip, tmp_path))
    pixels = image_pixels()
    with torch.no_grad():
        ref = hf(pixels, output_hidden_states=True).hidden_states[-1]
        got = ours(pixels).features
    assert got.shape == (2, 16, 32)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- language models


def lm_cases() -> dict[str, object]:
    return {
        "llama": transformers.LlamaForCausalLM(llama_config(40)),
        "llama3-rope": transformers.LlamaForCausalLM(llama_config(40, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16})),
        "llama-bias": transformers.LlamaForCausalLM(llama_config(40, attention_bias=True)),
        "qwen2": transformers.Qwen2ForCausalLM(qwen2_config(40)),
        "mixtral": transformers.MixtralForCausalLM(transformers.MixtralConfig(
            vocab_size=40, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
            num_experts_per_tok=2, max_position_embeddings=256)),
        "qwen2_moe": transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
            vocab_size=40, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
            shared_expert_intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
            decoder_sparse_step=2, mlp_only_layers=[3], norm_topk_prob=False,
            max_position_embeddings=256)),
    }


def import_lm(directory: Path) -> LanguageModel:
    raw = read_config(directory)
    fam = llava.language_family(raw, directory)
    cfg = fam.lm_config(raw, directory)
    model = LanguageModel(cfg)
    model.load_state_dict(llava.import_language(read_weights(directory), cfg, fam, directory),
                          strict=not cfg.tie_embeddings)
    return model.eval()


@pytest.mark.parametrize("name", list(lm_cases()))
def test_language_model_logits_match_transformers(name: str, tmp_path: Path) -> None:
    hf = randomise(lm_cases()[name])
    hf.save_pretrained(tmp_path)
    ours = import_lm(tmp_path)
    ids = torch.randint(0, 40, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours.lm_head(ours(ours.embed(ids), torch.arange(40).expand(2, -1)))
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-5)
    if name == "qwen2_moe":
        moe = ours.config.moe
        assert moe is not None and moe.moe_layers(4) == [1] and not moe.normalize_gates


# ----------------------------------------------------------------------------- whole LLaVA


def make_llava(directory: Path, tower: str, lm: str, kind: str = "wordlevel") -> object:
    specials = ["<unk>", "<s>", "</s>", "<image>", "<|im_start|>", "<|im_end|>"]
    if lm == "llama":
        vocab = hf_tokenizer(directory, specials, LLAVA_TEMPLATE, "<s>", "</s>",
                             llama_bos=True, kind=kind)
    else:
        vocab = hf_tokenizer(directory, specials, CHATML, None, "<|im_end|>", kind=kind)
    vision = clip_config() if tower == "clip" else siglip_config()
    text = llama_config(vocab) if lm == "llama" else qwen2_config(vocab)
    cfg = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=3, image_seq_length=16,
        vision_feature_layer=-2 if tower == "clip" else -1,
        vision_feature_select_strategy="default" if tower == "clip" else "full")
    model = randomise(transformers.LlavaForConditionalGeneration(cfg))
    model.save_pretrained(directory)
    image_processor = (transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                       crop_size=32) if tower == "clip"
                       else transformers.SiglipImageProcessor(size={"height": 32,
                                                                    "width": 32}))
    image_processor.save_pretrained(directory)
    patch = cfg.vision_config.patch_size
    transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=transformers.AutoTokenizer.from_pretrained(directory), patch_size=patch,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        num_additional_image_tokens=int(tower == "clip"),
        chat_template=LLAVA_TEMPLATE if lm == "llama" else CHATML).save_pretrained(directory)
    return model


def photo(seed: int, size: tuple[int, int] = (45, 37)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("tower,lm,kind", [("clip", "llama", "wordlevel"),
                                           ("siglip", "qwen2", "wordlevel"),
                                           ("clip", "llama", "metaspace"),
                                           ("siglip", "qwen2", "bytelevel")])
def test_llava_matches_transformers(tower: str, lm: str, kind: str, tmp_path: Path) -> None:
    hf = make_llava(tmp_path, tower, lm, kind)
    ours = import_model(tmp_path)
    assert ours.image_tokens == 16
    tok = ours.tokenizer
    assert tok is not None
    question = "<image>\nwhat colour is the circle ?"
    prompt = tok.encode_prompt([], question, ours.image_tokens)
    # The chat string: transformers' template rendering, then its tokenisation.
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    content = ([{"type": "image"}, {"type": "text", "text": "what colour is the circle ?"}]
               if tower == "clip" else question)
    messages = [{"role": "user", "content": content}]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.render([], question) == text
    ref_ids = hf_tok(text.replace("<image>", "<image>" * 16),
                     add_special_tokens=not text.startswith("<s>"))["input_ids"]
    assert prompt == ref_ids
    # Pixels: transformers' image processor on a non-square photo.
    img = photo(0)
    proc = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    ref_pixels = torch.as_tensor(np.asarray(proc(img, return_tensors="np")["pixel_values"]))
    store = ImageStore.for_model(ours.config.vision)
    pixels = store.pixels([img])
    assert pixels is not None
    torch.testing.assert_close(pixels, ref_pixels, atol=0, rtol=0)
    # The whole processor (template text + image) gives the same ids and pixels.
    full = transformers.AutoProcessor.from_pretrained(tmp_path)(text=text, images=[img],
                                                                return_tensors="pt")
    assert full["input_ids"][0].tolist() == prompt
    torch.testing.assert_close(pixels, full["pixel_values"], atol=0, rtol=0)
    # Logits for image + prompt, and greedy generation through our KV cache.
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pixels).logits
        got = ours(ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-5)
    with torch.no_grad():
        ref_gen = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              pixel_values=pixels, max_new_tokens=8, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        got_gen = ours.generate(ids, pixel_values=pixels, max_new_tokens=8)
    eos = ours.config.eos_token_id
    ref_new = ref_gen[0, ids.shape[1]:].tolist()
    expected = ref_new[: ref_new.index(eos) + 1] if eos in ref_new else ref_new
    assert got_gen[0, : len(expected)].tolist() == expected


def test_template_training_marks_answers(tmp_path: Path) -> None:
    make_llava(tmp_path, "siglip", "qwen2")
    tok = import_model(tmp_path).tokenizer
    assert tok is not None
    ids, trainable = tok.encode_conversation([("<image>\nwhat shape ?", "a red circle"),
                                              ("how many ?", "two")], 2)
    answer_ids = [i for i, t in zip(ids, trainable, strict=True) if t]
    end = tok.end_id
    assert answer_ids == [*tok.encode("a red circle"), end, *tok.encode("two"), end]
    assert ids.count(tok.image_id) == 2


# ----------------------------------------------------------------------------- export


def native_config(moe: MoEConfig | None = None, qkv_bias: bool = False) -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4,
                            pre_norm=True, feature_norm=False, feature_layer=-1),
        language=LanguageConfig(dim=32, depth=4, heads=4, kv_heads=2, max_seq_len=128,
                                moe=moe, qkv_bias=qkv_bias))


def native_model(config: ModelConfig) -> TinyVLM:
    from tinyvlm.data.tokenizer import Tokenizer

    tok = Tokenizer.train([" ".join(WORDS)] * 4)
    torch.manual_seed(0)
    model = TinyVLM.from_tokenizer(config, tok)
    randomise(model)
    return model.eval()


@pytest.mark.parametrize("kind", ["dense", "every-other-moe", "all-moe", "qwen2-dense"])
def test_export_round_trip_in_transformers(kind: str, tmp_path: Path) -> None:
    moe = {"dense": None, "qwen2-dense": None,
           "every-other-moe": MoEConfig(experts=4, top_k=2, layers="every-other"),
           "all-moe": MoEConfig(experts=4, top_k=2, layers="all")}[kind]
    model = native_model(native_config(moe, qkv_bias=kind == "qwen2-dense"))
    out = export_model(model, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    expected = {"dense": "llama", "qwen2-dense": "qwen2", "every-other-moe": "qwen2_moe",
                "all-moe": "mixtral"}[kind]
    assert cfg["text_config"]["model_type"] == expected
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    tok = model.tokenizer
    assert tok is not None
    prompt = tok.encode_prompt([], "<image>\nwhat colour is the circle ?", model.image_tokens)
    ids = torch.tensor([prompt])
    pixels = image_pixels()[:1]
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pixels).logits
        got = model(ids, pixel_values=pixels).logits
    torch.testing.assert_close(ref, got, atol=ATOL, rtol=1e-5)
    # transformers' own processor builds the same ids from the exported files.
    processor = transformers.AutoProcessor.from_pretrained(out)
    parts = [{"type": "image"}, {"type": "text", "text": "what colour is the circle ?"}]
    messages = [{"role": "user", "content": parts}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert processor(text=text, images=[photo(1)], return_tensors="pt")["input_ids"][0
                                                                                     ].tolist() \
        == prompt
    # And back: the exported directory imports to the same model.
    again = import_model(out)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, pixel_values=pixels).logits, got, atol=ATOL,
                                   rtol=1e-5)


def test_export_refuses_what_llava_cannot_express(tmp_path: Path) -> None:
    config = native_config()
    config.vision.feature_norm = True
    config.vision.pre_norm = False
    model = native_model(config)
    with pytest.raises(Unsupported) as err:
        export_model(model, tmp_path / "hf")
    message = str(err.value)
    assert "final LayerNorm" in message and "neither a CLIP one" in message
    assert not (tmp_path / "hf").exists()


def test_assemble_vision_and_language(tmp_path: Path) -> None:
    vdir, ldir = tmp_path / "clip", tmp_path / "qwen2"
    randomise(transformers.CLIPVisionModel(clip_config())).save_pretrained(vdir)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32
                                    ).save_pretrained(vdir)
    lm = randomise(transformers.Qwen2ForCausalLM(qwen2_config(len(WORDS) + 8)))
    lm.save_pretrained(ldir)
    hf_tokenizer(ldir, ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML, None,
                 "<|im_end|>")
    model = assemble(vdir, ldir)
    tok = model.tokenizer
    assert tok is not None and tok.image_id == len(WORDS) + 8  # the added token
    assert model.config.language.vocab_size == len(WORDS) + 9
    ids = torch.tensor([tok.encode_prompt([], "<image>\nwhat shape ?", model.image_tokens)])
    with torch.no_grad():
        text_ref = lm(torch.tensor([tok.encode("what shape ?")])).logits
        text_got = model(torch.tensor([tok.encode("what shape ?")])).logits
        out = model(ids, pixel_values=image_pixels()[:1]).logits
    torch.testing.assert_close(text_got[..., : text_ref.shape[-1]], text_ref, atol=ATOL,
                               rtol=1e-5)
    assert out.shape == (1, ids.shape[1], len(WORDS) + 9)


def test_unsupported_checkpoints_fail_in_one_line(tmp_path: Path) -> None:
    cfg = transformers.LlavaConfig(vision_config=clip_config(hidden_act="relu"),
                                   text_config=llama_config(40), image_token_id=3,
                                   image_seq_length=16)
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(tmp_path)
    with pytest.raises(InputError, match="hidden_act 'relu' is not supported"):
        import_model(tmp_path)


def test_template_without_end_token_gets_one_after_each_answer(tmp_path: Path) -> None:
    make_llava(tmp_path, "clip", "llama")
    tok = import_model(tmp_path).tokenizer
    assert tok is not None
    ids, trainable = tok.encode_conversation([("<image>\nwhat shape ?", "a red circle"),
                                              ("how many ?", "two")], 2)
    answers = [i for i, t in zip(ids, trainable, strict=True) if t]
    assert answers == [*tok.encode("a red circle"), tok.end_id, *tok.encode("two"), tok.end_id]
    # Apart from the added end tokens the ids are the template's text, tokenised.
    text = tok.render([("<image>\nwhat shape ?", "a red circle"), ("how many ?", "two")])
    plain = [i for i in ids if i != tok.end_id]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert plain == hf_tok(text.replace("<image>", "<image>" * 2))["input_ids"]


def test_cli_import_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    from click.testing import CliRunner

    from tinyvlm.cli import cli
    from tinyvlm.models.load import load_model

    make_llava(tmp_path / "llava", "siglip", "qwen2")
    runner = CliRunner()
    result = runner.invoke(cli, ["import-hf", "--model", str(tmp_path / "llava"), "--out",
                                 str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    ours = TinyVLM.from_pretrained(tmp_path / "ours")  # saved and reloaded: template included
    direct = load_model(tmp_path / "llava")  # an HF directory loads wherever a model does
    ids = torch.tensor([ours.tokenizer.encode_prompt([], "<image>\nwhat shape ?", 16)])
    pixels = image_pixels()[:1]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pixel_values=pixels).logits,
                                   direct(ids, pixel_values=pixels).logits, atol=0, rtol=0)
    result = runner.invoke(cli, ["export-hf", str(tmp_path / "ours"), "--out",
                                 str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "back")
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, pixel_values=pixels).logits,
                                   direct(ids, pixel_values=pixels).logits, atol=ATOL,
                                   rtol=1e-5)
    # Bad usage and unexportable models are one line, exit code 2.
    from .test_cli import run_cli

    capsys.readouterr()  # transformers' own progress bars so far
    code, _, err = run_cli(["import-hf", "--vision", str(tmp_path / "llava"), "--out",
                            str(tmp_path / "x")], monkeypatch, capsys)
    assert code == 2 and "--language" in err and len(err.strip().splitlines()) == 1
    native = native_model(native_config())
    native.config.vision.feature_norm = True
    native.save_pretrained(tmp_path / "native")
    code, _, err = run_cli(["export-hf", str(tmp_path / "native"), "--out",
                            str(tmp_path / "y")], monkeypatch, capsys)
    assert code == 2 and "final LayerNorm" in err and len(err.strip().splitlines()) == 1


def test_configs_that_leave_defaults_out() -> None:
    """config.json files of earlier transformers versions (the hub's llava-1.5-7b-hf) keep
    only what differs from the defaults: the families fill in transformers' defaults."""
    raw = {"model_type": "llava", "image_token_index": 32000,
           "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                             "model_type": "clip_vision_model", "num_attention_heads": 16,
                             "num_hidden_layers": 24, "patch_size": 14},
           "text_config": {"max_position_embeddings": 4096, "model_type": "llama",
                           "rms_norm_eps": 1e-05, "vocab_size": 32064}}
    config, vfam, lfam = llava.model_config(raw, "config.json")
    assert vfam is clip and lfam.__name__.endswith(".llama")
    lang, vision = config.language, config.vision
    assert (lang.dim, lang.depth, lang.heads, lang.kv_heads, lang.hidden_ffn_dim) == \
        (4096, 32, 32, 32, 11008)
    assert (lang.vocab_size, lang.max_seq_len, lang.norm_eps, lang.rope_theta) == \
        (32064, 4096, 1e-5, 10000.0)
    assert (vision.dim, vision.depth, vision.patch_size, vision.act, vision.feature_layer,
            vision.feature_tokens) == (1024, 24, 14, "quick_gelu", -2, 576)
    assert siglip.vision_config({"model_type": "siglip_vision_model"}, "x").act == "gelu_tanh"
    assert siglip.vision_config({"model_type": "siglip_vision_model"}, "x").patch_size == 16
    from tinyvlm.models.hf import mixtral

    mix = mixtral.lm_config({"model_type": "mixtral"}, "x")
    assert (mix.rope_theta, mix.norm_eps, mix.moe.experts) == (1e6, 1e-5, 8)
    # Mistral's sliding window caps the sequence length it is exact for.
    assert llava.language_config({"model_type": "mistral"}, "x").max_seq_len == 4096


def test_llama_attention_bias_exports_as_llama(tmp_path: Path) -> None:
    hf = randomise(transformers.LlamaForCausalLM(llama_config(40, attention_bias=True)))
    hf.save_pretrained(tmp_path / "lm")
    lm = import_lm(tmp_path / "lm")
    config = native_config()
    config.language = lm.config
    assert config.language.qkv_bias and config.language.o_bias
    _, lfam = llava.export_families(config)
    assert lfam.__name__.endswith(".llama")


def test_system_messages_and_a_second_eos(tmp_path: Path) -> None:
    make_llava(tmp_path, "siglip", "qwen2")
    # generation_config lists a second eos (Llama 3 style); the template closes answers with
    # <|im_end|>, so that is the end, and </s> also stops generation.
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 2]}))
    raw = json.loads((tmp_path / "tokenizer_config.json").read_text())
    raw["eos_token"] = "</s>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(raw))
    model = import_model(tmp_path)
    tok = model.tokenizer
    assert tok.chat.end == "<|im_end|>" and tok.chat.stop == ["</s>"]
    assert model.config.eos_token_id == 5 and model.config.stop_token_ids == [2]
    assert tok.decode_answer([*tok.encode("a red circle"), 2, 9]) == "a red circle"
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "system", "content": "be brief ."},
                {"role": "user", "content": "what shape ?"}]
    assert tok.render([], "what shape ?", "be brief .") == hf_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
