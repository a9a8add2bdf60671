"""Mimic distillation: the frozen teacher, the objective, the offline top-k cache, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinyvlm.config import MimicConfig, StageConfig
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.loop import configure_trainable, train_stage
from tinyvlm.train.objectives import Mimic, build_objective
from tinyvlm.train.teacher_cache import cache_teacher

from .conftest import tiny_model_config, tiny_recipe


def model_dir(tok: Tokenizer, root: Path, seed: int, **language: object) -> Path:
    torch.manual_seed(seed)
    TinyVLM.from_tokenizer(tiny_model_config(**language), tok).save_pretrained(root)
    return root


def mimic_stage(teacher: Path | str, **distill: object) -> StageConfig:
    return StageConfig(name="mimic", objective="mimic", steps=4, batch_size=4, warmup_steps=1,
                       log_every=1, checkpoint_every=2,
                       mimic=MimicConfig(teacher=str(teacher), **distill))  # type: ignore[arg-type]


def first_batch(obj: Mimic, student: TinyVLM, shapes_dir: Path, stage: StageConfig):
    source = obj.data(student, tiny_recipe(shapes_dir).data, stage)
    return source.collate(source.items[:4])


def test_kd_is_zero_when_student_is_teacher(shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                            tmp_path: Path) -> None:
    teacher = model_dir(shapes_tokenizer, tmp_path / "t", seed=0)
    student = TinyVLM.from_pretrained(teacher)
    for kind in ("forward_kl", "reverse_kl", "js", "tv", "skew_forward_kl"):
        st = mimic_stage(teacher, kind=kind, temperature=2.0)
        obj = build_objective("mimic", student, st)
        out = obj(student, first_batch(obj, student, shapes_dir, st))
        assert out.metrics["kd"] == pytest.approx(0.0, abs=1e-6), kind
        assert out.metrics["ce"] > 0


def test_teacher_is_frozen_and_outside_the_optimizer(shapes_tokenizer: Tokenizer,
                                                     shapes_dir: Path, tmp_path: Path) -> None:
    teacher_dir = model_dir(shapes_tokenizer, tmp_path / "t", seed=1, dim=48, heads=4)
    student = TinyVLM.from_pretrained(model_dir(shapes_tokenizer, tmp_path / "s", seed=2))
    st = mimic_stage(teacher_dir, rdist_weight=1.0)
    obj = build_objective("mimic", student, st)
    assert isinstance(obj, Mimic) and obj.teacher is not None
    teacher = obj.teacher.model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    groups = configure_trainable(student, obj, st)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert not any(k.startswith("_teacher") for k in obj.state_dict())
    out = obj(student, first_batch(obj, student, shapes_dir, st))
    assert out.metrics["kd"] > 0 and out.metrics["rdist"] > 0
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.language.parameters())


def test_mismatched_teacher_is_one_clear_error(shapes_tokenizer: Tokenizer, tokenizer: Tokenizer,
                                               tmp_path: Path) -> None:
    teacher = model_dir(tokenizer, tmp_path / "t", seed=0)  # another vocabulary
    student = TinyVLM.from_pretrained(model_dir(shapes_tokenizer, tmp_path / "s", seed=0))
    with pytest.raises(InputError, match="teacher and student do not match: vocabulary"):
        build_objective("mimic", student, mimic_stage(teacher))
    with pytest.raises(InputError, match="needs a 'mimic' section"):
        build_objective("mimic", student, StageConfig(objective="mimic"))


@pytest.mark.parametrize("values_dtype,tol", [("fp32", 1e-6), ("fp16", 2e-3)])
def test_cached_full_vocabulary_equals_online(values_dtype: str, tol: float,
                                              shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                              tmp_path: Path) -> None:
    teacher = model_dir(shapes_tokenizer, tmp_path / "t", seed=1)
    student = TinyVLM.from_pretrained(model_dir(shapes_tokenizer, tmp_path / "s", seed=2))
    data = tiny_recipe(shapes_dir).data
    online = mimic_stage(teacher)
    cache = cache_teacher(teacher, student, data, online, tmp_path / "cache",
                          top_k=student.config.language.vocab_size, shard_size=16,
                          batch_size=8, values_dtype=values_dtype, progress=False)
    offline = mimic_stage("", cache=str(cache))
    obj_on = build_objective("mimic", student, online)
    obj_off = build_objective("mimic", student, offline)
    src_on = obj_on.data(student, data, online)
    src_off = obj_off.data(student, data, offline)
    picks = [3, 20, 7, 41]  # spans shards
    a = obj_on(student, src_on.collate([src_on.items[i] for i in picks]))
    b = obj_off(student, src_off.collate([src_off.items[i] for i in picks]))
    assert a.metrics["kd"] > 0
    assert b.metrics["kd"] == pytest.approx(a.metrics["kd"], abs=tol)
    assert b.metrics["ce"] == a.metrics["ce"]


def test_cache_resumes_at_the_first_missing_shard(shapes_tokenizer: Tokenizer,
                                                  shapes_dir: Path, tmp_path: Path) -> None:
    teacher = model_dir(shapes_tokenizer, tmp_path / "t", seed=1)
    student = TinyVLM.from_pretrained(model_dir(shapes_tokenizer, tmp_path / "s", seed=2))
    data, st = tiny_recipe(shapes_dir).data, mimic_stage(teacher)
    out = cache_teacher(teacher, student, data, st, tmp_path / "c", top_k=8, shard_size=16,
                        progress=False)
    shards = sorted(out.glob("shard-*.safetensors"))
    assert len(shards) == 3  # 48 conversations
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()
    cache_teacher(teacher, student, data, st, out, top_k=8, shard_size=16, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.safetensors"))}
    assert set(after) == set(before)
    assert after[shards[0].name] == before[shards[0].name]  # untouched
    assert after[shards[2].name] == before[shards[2].name]
    with pytest.raises(InputError, match="different cache"):
        cache_teacher(teacher, student, data, st, out, top_k=4, shard_size=16,
                      progress=False)


def test_mimic_resumes_mid_stage(shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                 tmp_path: Path) -> None:
    teacher = model_dir(shapes_tokenizer, tmp_path / "t", seed=1)
    student_dir = model_dir(shapes_tokenizer, tmp_path / "s", seed=2)
    data = tiny_recipe(shapes_dir).data

    def train(out: Path, steps: int, resume: bool, model: TinyVLM) -> TinyVLM:
        st = mimic_stage(teacher)
        st.steps = 4
        obj = build_objective("mimic", model, st)
        if not resume and steps < 4:
            # Stop after `steps` by running a shorter stage with the same schedule length.
            from tinyvlm.train import loop

            original = loop.Checkpoints.save

            def save_then_stop(self, step, m, state):  # type: ignore[no-untyped-def]
                path = original(self, step, m, state)
                if step == steps:
                    raise KeyboardInterrupt
                return path

            loop.Checkpoints.save = save_then_stop  # type: ignore[method-assign]
            try:
                train_stage(model, st, obj, obj.data(model, data, st), out, progress=False)
            except KeyboardInterrupt:
                pass
            finally:
                loop.Checkpoints.save = original  # type: ignore[method-assign]
            return model
        train_stage(model, st, obj, obj.data(model, data, st), out, resume=resume,
                    progress=False)
        return model

    straight = train(tmp_path / "a", 4, False, TinyVLM.from_pretrained(student_dir))
    train(tmp_path / "b", 2, False, TinyVLM.from_pretrained(student_dir))
    resumed = train(tmp_path / "b", 4, True, TinyVLM.from_pretrained(student_dir))
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name


def test_cache_teacher_command(shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    from .test_cli import run_cli

    teacher = model_dir(shapes_tokenizer, tmp_path / "t", seed=1)
    student = model_dir(shapes_tokenizer, tmp_path / "s", seed=2)
    args = ["distill", "cache-teacher", str(teacher), str(student),
            str(shapes_dir / "train.json"), "--out", str(tmp_path / "c"), "--top-k", "5",
            "--quiet"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "top-5 logits written" in out and (tmp_path / "c" / "cache.json").is_file()
    code, _, err = run_cli([*args[:4], str(tmp_path / "missing.json"), *args[5:]],
                           monkeypatch, capsys)
    assert code == 2 and "data file not found" in err


def other_resolution_teacher(tok: Tokenizer, root: Path) -> Path:
    """A teacher that sees 64 px images in 32 px patches (4 tokens per image), where the
    student sees 32 px images in 8 px patches (16 tokens per image)."""
    config = tiny_model_config(dim=48, heads=4)
    config.vision.image_size, config.vision.patch_size = 64, 32  # 4 tokens per image
    torch.manual_seed(5)
    TinyVLM.from_tokenizer(config, tok).save_pretrained(root)
    return root


def test_a_teacher_with_another_image_layout_reads_its_own_batch(
        shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path) -> None:
    teacher_dir = other_resolution_teacher(shapes_tokenizer, tmp_path / "t")
    student = TinyVLM.from_pretrained(model_dir(shapes_tokenizer, tmp_path / "s", seed=2))
    st = mimic_stage(teacher_dir, temperature=2.0)
    obj = build_objective("mimic", student, st)
    batch = first_batch(obj, student, shapes_dir, st)
    assert batch.teacher is not None and obj.teacher is not None
    assert obj.teacher.image_tokens == 4 and student.image_tokens == 16
    assert batch.teacher.pixel_values.shape[-1] == 64 and batch.student.pixel_values.shape[-1] == 32
    out = obj(student, batch)
    # By hand: each model on its own batch, forward KL at the response positions, in order.
    s, t = batch.student, batch.teacher
    with torch.no_grad():
        s_logits = student(s.input_ids, s.attention_mask, s.pixel_values).logits
        t_logits = obj.teacher.model(t.input_ids, t.attention_mask, t.pixel_values).logits
    s_rows = torch.log_softmax(s_logits[s.target_ids != -100] / 2.0, -1)
    t_rows = torch.log_softmax(t_logits[t.target_ids != -100] / 2.0, -1)
    expected = (t_rows.exp() * (t_rows - s_rows)).sum(-1).mean() * 4.0
    assert out.metrics["kd"] == pytest.approx(float(expected), rel=1e-5)


def test_rdist_needs_the_same_visual_tokens(shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                            tmp_path: Path) -> None:
    teacher_dir = other_resolution_teacher(shapes_tokenizer, tmp_path / "t")
    student = TinyVLM.from_pretrained(model_dir(shapes_tokenizer, tmp_path / "s", seed=2))
    st = mimic_stage(teacher_dir, rdist_weight=1.0)
    obj = build_objective("mimic", student, st)
    with pytest.raises(InputError, match="rdist compares visual tokens one to one"):
        obj(student, first_batch(obj, student, shapes_dir, st))


@pytest.mark.parametrize("kw", [{}, {"rdist_weight": 1.0, "kind": "js"}])
def test_own_teacher_batches_give_the_losses_of_shared_ones(
        shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path, kw: dict) -> None:
    """Today's recipes: the teacher reads the student's layout, so its own batch is the
    student's and the losses are the same to the last bit."""
    teacher_dir = model_dir(shapes_tokenizer, tmp_path / "t", seed=1, dim=48, heads=4)
    student = TinyVLM.from_pretrained(model_dir(shapes_tokenizer, tmp_path / "s", seed=2))
    st = mimic_stage(teacher_dir, **kw)
    obj = build_objective("mimic", student, st)
    assert isinstance(obj, Mimic) and obj._shared
    shared = first_batch(obj, student, shapes_dir, st)
    obj._shared = False
    own = first_batch(obj, student, shapes_dir, st)
    assert shared.teacher is None and own.teacher is not None
    assert torch.equal(own.teacher.input_ids, own.student.input_ids)
    a, b = obj(student, shared), obj(student, own)
    assert torch.equal(a.loss, b.loss) and a.metrics == b.metrics
