"""A transformers model as a distillation teacher and under evaluation (the hf extra), and
Universal Logit Distillation across tokenizers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinyvlm.config import MimicConfig, StageConfig  # noqa: E402
from tinyvlm.data.conversation import Conversation  # noqa: E402
from tinyvlm.errors import InputError  # noqa: E402
from tinyvlm.eval.harness import evaluate  # noqa: E402
from tinyvlm.hf_adapter import TransformersVLM  # noqa: E402
from tinyvlm.models.hf import import_model  # noqa: E402
from tinyvlm.train.losses import align_answers, distill_loss, uld_loss  # noqa: E402
from tinyvlm.train.objectives.mimic import Mimic  # noqa: E402

from .test_hf_interop import make_llava, native_config, native_model, photo  # noqa: E402


def test_uld_loss_hand_computed() -> None:
    # Student (vocabulary 3): probabilities 0.7, 0.1, 0.2; teacher (vocabulary 2): 0.4, 0.6.
    # Sorted: 0.7 0.2 0.1 against 0.6 0.4 0 -> |0.1| + |0.2| + |0.1| = 0.4.
    s = torch.tensor([[0.7, 0.1, 0.2]]).log()
    t = torch.tensor([[0.4, 0.6]]).log()
    assert float(uld_loss(s, t)) == pytest.approx(0.4, abs=1e-6)
    # Two positions average; the same distribution in another order costs nothing.
    s2 = torch.tensor([[0.7, 0.1, 0.2], [0.1, 0.2, 0.7]]).log()
    t2 = torch.tensor([[0.4, 0.6], [0.7, 0.3]]).log()
    # second: 0.7 0.2 0.1 vs 0.7 0.3 0 -> 0 + 0.1 + 0.1 = 0.2
    assert float(uld_loss(s2, t2)) == pytest.approx((0.4 + 0.2) / 2, abs=1e-6)
    assert float(uld_loss(s2[:1], s2[:1].flip(-1))) == pytest.approx(0.0, abs=1e-7)


def test_align_answers_pairs_answers_in_order_and_truncates() -> None:
    s = torch.arange(2 * 8 * 3, dtype=torch.float).view(2, 8, 3)
    t = -torch.arange(2 * 9 * 2, dtype=torch.float).view(2, 9, 2)
    s_mask = torch.tensor([[0, 1, 1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 0, 0, 0]]).bool()
    t_mask = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0]]).bool()
    a, b = align_answers(s, s_mask, t, t_mask)
    # row 0: answers of 3 and 1 student tokens, 2 and 3 teacher tokens -> 2 + 1 pairs;
    # row 1: 2 and 3 -> 2 pairs.
    assert a.shape == (5, 3) and b.shape == (5, 2)
    assert torch.equal(a, s[[0, 0, 0, 1, 1], [1, 2, 6, 2, 3]])
    assert torch.equal(b, t[[0, 0, 0, 1, 1], [2, 3, 5, 0, 1]])


def small_llava(directory: Path, patch: int) -> None:
    """A CLIP + Llama LLaVA whose tower makes (32 / patch)^2 image tokens."""
    from . import test_hf_interop as h

    original = h.clip_config
    h.clip_config = lambda **kw: transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        image_size=32, patch_size=patch, **kw)
    try:
        cfg_seq = (32 // patch) ** 2
        model = make_llava(directory, "clip", "llama")
        raw = json.loads((directory / "config.json").read_text())
        raw["image_seq_length"] = cfg_seq
        (directory / "config.json").write_text(json.dumps(raw))
        del model
    finally:
        h.clip_config = original


def conversations(tmp_path: Path) -> list[Conversation]:
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        photo(i, (40, 32)).save(p)
        paths.append(p)
    return [Conversation("a", [paths[0]], [("<image>\nwhat shape is there ?", "a red circle"),
                                           ("how many ?", "two")]),
            Conversation("b", [paths[1]], [("what colour ? <image>", "blue")])]


def test_transformers_teacher_with_other_image_tokens(tmp_path: Path) -> None:
    small_llava(tmp_path / "teacher", patch=8)  # 16 image tokens
    small_llava(tmp_path / "student", patch=16)  # 4 image tokens, the same tokenizer
    student = import_model(tmp_path / "student").train()
    stage = StageConfig(name="kd", objective="mimic", mimic=MimicConfig(
        teacher=str(tmp_path / "teacher"), teacher_backend="transformers"))
    objective = Mimic(student, stage)
    teacher = objective.teacher
    assert isinstance(teacher, TransformersVLM) and teacher.image_tokens == 16
    convs = conversations(tmp_path)
    from tinyvlm.data.collate import SFTCollator
    from tinyvlm.data.images import ImageStore
    from tinyvlm.train.objectives.mimic import MimicBatch

    collate = SFTCollator(student.tokenizer, ImageStore.for_model(student.config.vision),
                          student.image_tokens, 128)
    s_batch = collate(convs)
    t_batch = teacher.collate(convs)
    assert (t_batch.input_ids == 3).sum() == 16 * 2 and (s_batch.input_ids == 3).sum() == 4 * 2
    # The same answer tokens on both sides, in order.
    s_answers = s_batch.target_ids[s_batch.target_ids != -100].tolist()
    t_answers = t_batch.target_ids[t_batch.target_ids != -100].tolist()
    assert s_answers == t_answers and len(s_answers) > 5
    out = objective.forward(student, MimicBatch(s_batch, t_batch))
    out.loss.backward()
    assert all(p.grad is not None for p in student.language.parameters() if p.requires_grad)
    # The KD term against transformers' own forward pass of the teacher's batch.
    with torch.no_grad():
        ref = teacher.model(input_ids=t_batch.input_ids, attention_mask=t_batch.attention_mask,
                            pixel_values=t_batch.pixel_values).logits
        logits = student(s_batch.input_ids, s_batch.attention_mask, s_batch.pixel_values,
                         image_rows=s_batch.image_rows).logits
    expected, _ = distill_loss(logits[s_batch.target_ids != -100],
                               ref[t_batch.target_ids != -100], None, "forward_kl", 1.0)
    assert out.metrics["kd"] == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_vocabulary_mismatch_is_one_error_naming_both(tmp_path: Path) -> None:
    small_llava(tmp_path / "teacher", patch=8)
    student = native_model(native_config())
    stage = StageConfig(name="kd", objective="mimic", mimic=MimicConfig(
        teacher=str(tmp_path / "teacher"), teacher_backend="transformers"))
    with pytest.raises(InputError) as err:
        Mimic(student, stage)
    message = str(err.value)
    assert "vocabularies differ" in message and "the teacher's tokenizer has" in message
    assert f"the student's {student.tokenizer.vocab_size}" in message and "uld" in message
    # With ULD the two tokenizers may differ: the loss runs and is finite.
    stage.mimic.kind = "uld"
    objective = Mimic(student, stage)
    convs = conversations(tmp_path)
    from tinyvlm.data.collate import SFTCollator
    from tinyvlm.data.images import ImageStore
    from tinyvlm.train.objectives.mimic import MimicBatch

    s_batch = SFTCollator(student.tokenizer, ImageStore.for_model(student.config.vision),
                          student.image_tokens, 128)(convs)
    out = objective.forward(student.train(), MimicBatch(s_batch, objective.teacher.collate(convs)))
    assert math.isfinite(out.metrics["kd"]) and 0 < out.metrics["kd"] <= 2


def test_eval_through_transformers_matches_the_imported_model(tmp_path: Path) -> None:
    small_llava(tmp_path / "llava", patch=8)
    for i in range(3):
        photo(i, (40, 32)).save(tmp_path / f"img{i}.png")
    lines = [{"question_id": i, "image": f"img{i % 3}.png", "label": "yes" if i % 2 else "no",
              "text": q} for i, q in enumerate(["is there a red circle ?",
                                                 "is there a blue square ?",
                                                 "is there a green triangle ?",
                                                 "how many shapes are there ?"])]
    bench = tmp_path / "pope_random.jsonl"
    bench.write_text("".join(json.dumps(x) + "\n" for x in lines))
    hf_summary, hf_samples = evaluate(TransformersVLM(tmp_path / "llava"), [bench],
                                      tmp_path / "out", "hf", batch_size=3, progress=False)
    ours_summary, ours_samples = evaluate(import_model(tmp_path / "llava"), [bench],
                                          tmp_path / "out", "ours", batch_size=3,
                                          progress=False)
    predictions = [s["prediction"] for s in hf_samples]
    assert predictions == [s["prediction"] for s in ours_samples]
    assert any(predictions)  # not all empty: real text compared
    assert hf_summary["benchmarks"]["pope/random"]["result"] == \
        ours_summary["benchmarks"]["pope/random"]["result"]


def test_recipe_from_hf_checkpoints_to_an_exported_moe_student(tmp_path: Path,
                                                                shapes_dir: Path) -> None:
    """The documented path: a pretrained student (an HF directory) upcycled to MoE and
    mimic-distilled from an HF LLaVA teacher run by transformers, then exported for
    transformers, which computes the student's logits."""
    from tinyvlm.config import load_recipe
    from tinyvlm.models.hf import export_model
    from tinyvlm.train.pipeline import run_recipe

    small_llava(tmp_path / "teacher", patch=8)
    small_llava(tmp_path / "student", patch=16)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"""
name: hf-mod
data: {{path: {shapes_dir}, shapes: null}}
tokenizer: {{pretrained: {tmp_path / 'student'}}}
pretrained: {{model: {tmp_path / 'student'}}}
stages:
  - {{name: upcycle, action: upcycle, upcycle: {{experts: 4, top_k: 2, layers: every-other}}}}
  - name: mimic
    objective: mimic
    steps: 2
    batch_size: 2
    warmup_steps: 0
    log_every: 1
    mimic: {{teacher: {tmp_path / 'teacher'}, teacher_backend: transformers}}
""")
    recipe = load_recipe(recipe_file)
    model = run_recipe(recipe, tmp_path / "run", progress=False)
    assert model.config.language.moe is not None
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    kd = [m["kd"] for m in metrics if "kd" in m]
    assert len(kd) == 2 and all(math.isfinite(x) and x > 0 for x in kd)
    out = export_model(model, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["text_config"]["model_type"] \
        == "qwen2_moe"
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    tok = model.tokenizer
    ids = torch.tensor([tok.encode_prompt([], "<image>\nwhat shape ?", model.image_tokens)])
    pixels = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, pixel_values=pixels).logits,
                                   model(ids, pixel_values=pixels).logits, atol=1e-5,
                                   rtol=1e-5)


def test_a_template_that_writes_bos_gets_one(tmp_path: Path) -> None:
    """Rendered text that starts with bos is tokenised without the tokenizer's own bos, as
    transformers' processors do (no doubled bos in the teacher's batches or in prompts)."""
    from . import test_hf_interop as h

    original = h.LLAVA_TEMPLATE
    h.LLAVA_TEMPLATE = "{{ bos_token }}" + original
    try:
        small_llava(tmp_path / "m", patch=8)
    finally:
        h.LLAVA_TEMPLATE = original
    teacher = TransformersVLM(tmp_path / "m")
    bos = teacher.hf_tokenizer.bos_token_id
    batch = teacher.collate(conversations(tmp_path))
    assert batch.input_ids[0, 0] == bos and batch.input_ids[0, 1] != bos
    prompt = teacher.engine().encode([], "what shape is there ?", [])
    messages = [{"role": "user", "content": [{"type": "text", "text": "what shape is there ?"}]}]
    ref = teacher.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=True, return_dict=True)
    assert prompt.ids == list(ref["input_ids"][0])
    ours = import_model(tmp_path / "m").tokenizer
    assert ours.encode_prompt([], "what shape is there ?", 16) == prompt.ids


def test_a_transformers_model_is_served(tmp_path: Path) -> None:
    """tinyvlm serve with the transformers adapter: the answer is the adapter engine's."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from tinyvlm.serve.app import create_app, running

    from .test_serve import ask

    small_llava(tmp_path / "m", patch=8)
    model = TransformersVLM(tmp_path / "m")
    img = photo(3, (40, 32))
    engine = model.engine(1)
    from tinyvlm.infer import Sampling

    expected = engine.generate([engine.encode([], "<image>\nwhat shape ?", [img])],
                               Sampling(6))[0]
    with running(create_app(model, "hf", None)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="hf", messages=ask("what shape ?", img),
                                               max_tokens=6)
    assert reply.choices[0].message.content == expected
