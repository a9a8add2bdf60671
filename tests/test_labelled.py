"""The labelled / unlabelled split of the training images and mimic's use of both."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tinyvlm.config import DataConfig, MimicConfig, StageConfig, from_dict
from tinyvlm.config.checks import data_rules
from tinyvlm.data.collate import IGNORE
from tinyvlm.data.labelled import image_key, labelled_images, split_labelled
from tinyvlm.data.llava import load_llava
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.infer import Engine, Sampling
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.losses import distill_loss
from tinyvlm.train.objectives import build_objective
from tinyvlm.train.objectives.base import token_cross_entropy
from tinyvlm.train.stage_data import stage_conversations, unlabelled_conversations

from .conftest import tiny_model_config


def data(shapes_dir: Path, fraction: float, seed: int = 0) -> DataConfig:
    return from_dict(DataConfig, {"path": str(shapes_dir), "shapes": None,
                                  "labelled_fraction": fraction, "labelled_seed": seed})


def test_the_split_is_by_image_disjoint_seeded_and_order_free(shapes_dir: Path) -> None:
    convs = load_llava(shapes_dir / "train.json")
    images = {image_key(c) for c in convs}
    labelled, unlabelled = split_labelled(convs, 0.25, seed=3)
    seen, unseen = {image_key(c) for c in labelled}, {image_key(c) for c in unlabelled}
    assert not seen & unseen and seen | unseen == images
    assert len(seen) == round(0.25 * len(images))
    shuffled = list(convs)
    random.Random(0).shuffle(shuffled)
    assert labelled_images(shuffled, 0.25, 3) == seen  # the file's order does not matter
    assert labelled_images(convs, 0.25, 4) != seen  # the seed does
    assert labelled_images(convs, 1.0, 3) == images
    assert len(labelled_images(convs, 1e-6, 3)) == 1  # never an empty labelled set


def test_the_unlabelled_split_carries_no_answers(shapes_dir: Path) -> None:
    stage = StageConfig(name="s")
    unlabelled = unlabelled_conversations(data(shapes_dir, 0.5), stage)
    assert unlabelled and all(a == "" for c in unlabelled for _, a in c.turns)
    assert all(m["labelled"] is False for c in unlabelled for m in c.meta)
    labelled = stage_conversations(data(shapes_dir, 0.5), stage)[1]
    answers = {a for c in labelled for _, a in c.turns}
    assert "" not in answers and len(labelled) + len(unlabelled) == 48
    # Questions are kept, turn for turn.
    original = {c.id: c for c in load_llava(shapes_dir / "train.json")}
    for c in unlabelled:
        assert [q for q, _ in c.turns] == [q for q, _ in original[c.id].turns]


def test_stages_of_a_curriculum_see_the_same_images(shapes_dir: Path) -> None:
    config = data(shapes_dir, 0.25)
    every = {image_key(c) for c in stage_conversations(config, StageConfig())[1]}
    bind = stage_conversations(config, StageConfig(question_types=["colour_of"]))[1]
    assert bind and {image_key(c) for c in bind} <= every
    assert all(m["type"] == "colour_of" for c in bind for m in c.meta)
    whole = stage_conversations(config, StageConfig(images="all"))[1]
    assert len(whole) == 48 and len(every) == 12
    assert not unlabelled_conversations(config, StageConfig(images="all"))


def test_patch_labels_read_only_the_labelled_images(shapes_tokenizer: Tokenizer,
                                                    shapes_dir: Path) -> None:
    model = TinyVLM.from_tokenizer(tiny_model_config(), shapes_tokenizer)
    config = data(shapes_dir, 0.25)
    stage = StageConfig(objective="patch_labels", trainable=["vision"])
    items = build_objective("patch_labels", model, stage).data(model, config, stage).items
    labelled = {image_key(c) for c in stage_conversations(config, stage)[1]}
    assert {str(path) for path, _, _ in items} == labelled
    everything = StageConfig(objective="patch_labels", trainable=["vision"], images="all")
    assert len(build_objective("patch_labels", model, everything).data(
        model, config, everything).items) == 48


def test_labelled_settings_are_checked() -> None:
    bad = {k: v for _, rules in data_rules(from_dict(DataConfig, {"labelled_fraction": 0.0}),
                                           *_defaults()) for ok, k, *v in rules if not ok}
    assert set(bad) == {"labelled_fraction"}


def _defaults():
    from tinyvlm.config import EvalConfig, TokenizerConfig
    return TokenizerConfig(), EvalConfig(), None


def teacher_and_mimic(tok: Tokenizer, root: Path, **mimic: object):
    """A saved random teacher, a student of another seed and its mimic objective."""
    torch.manual_seed(1)
    TinyVLM.from_tokenizer(tiny_model_config(), tok).save_pretrained(root)
    torch.manual_seed(2)
    student = TinyVLM.from_tokenizer(tiny_model_config(), tok)
    stage = StageConfig(name="mimic", objective="mimic",
                        mimic=MimicConfig(teacher=str(root), **mimic))  # type: ignore[arg-type]
    return TinyVLM.from_pretrained(root), student, stage, build_objective("mimic", student, stage)


def test_mimic_on_unlabelled_images_distils_the_teachers_own_answers(
        shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path) -> None:
    teacher, student, stage, obj = teacher_and_mimic(shapes_tokenizer, tmp_path / "t",
                                                     unlabelled=True)
    config = data(shapes_dir, 0.25)
    source = obj.data(student, config, stage)
    assert len(source.items) == 48  # 12 labelled conversations + 36 answered by the teacher
    answered = [c for c in source.items if c.meta and c.meta[0].get("labelled") is False]
    assert len(answered) == 36
    # The answers are the teacher's greedy answers to each question asked on its own.
    conv = answered[0]
    engine = Engine(teacher)
    first = engine.generate([engine.encode([], conv.turns[0][0], conv.images)],
                            Sampling(max_new_tokens=8))[0]
    assert conv.turns[0][1] == first.strip()

    labelled = [c for c in source.items if c not in answered][:2]
    batch = source.collate([*labelled, *answered[:2]])
    assert batch.labelled.tolist() == [True, True, False, False]
    out = obj(student, batch)
    b = batch.student
    logits = student(b.input_ids, b.attention_mask, b.pixel_values,
                     image_rows=b.image_rows).logits
    # CE on the labelled rows only; KD on every answer token, the teacher's answers included.
    ce, _ = token_cross_entropy(logits[:2], b.target_ids[:2])
    assert out.metrics["ce"] == pytest.approx(float(ce.detach()), rel=1e-5)
    t_logits = teacher(b.input_ids, b.attention_mask, b.pixel_values,
                       image_rows=b.image_rows).logits
    mask = b.target_ids != IGNORE
    kd, _ = distill_loss(logits[mask], t_logits[mask], None, "forward_kl", 1.0)
    assert out.metrics["kd"] == pytest.approx(float(kd.detach()), rel=1e-5)
    assert out.units == int(mask.sum())


def test_only_correct_distils_where_the_teacher_is_right(
        shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path) -> None:
    teacher, student, stage, obj = teacher_and_mimic(shapes_tokenizer, tmp_path / "t",
                                                     only_correct=True)
    source = obj.data(student, data(shapes_dir, 1.0), stage)
    batch = source.collate(source.items[:4])
    b = batch.student
    with torch.no_grad():
        t_logits = teacher(b.input_ids, b.attention_mask, b.pixel_values,
                           image_rows=b.image_rows).logits
    # Make the teacher right on some answer tokens: copy the targets into its argmax.
    mask = b.target_ids != IGNORE
    rows, cols = mask.nonzero(as_tuple=True)
    right = torch.zeros_like(mask)
    right[rows[::2], cols[::2]] = True
    fixed = t_logits.clone()
    fixed[right] = fixed[right].scatter(-1, b.target_ids[right][:, None], 100.0)
    obj.teacher.model.forward = _returning(obj.teacher.model, fixed)
    out = obj(student, batch)
    logits = student(b.input_ids, b.attention_mask, b.pixel_values,
                     image_rows=b.image_rows).logits
    keep = right | (mask & (t_logits.argmax(-1) == b.target_ids.clamp(min=0)))
    kd, _ = distill_loss(logits[keep], fixed[keep], None, "forward_kl", 1.0)
    assert 0 < int(keep.sum()) < int(mask.sum())
    assert out.metrics["kd"] == pytest.approx(float(kd.detach()), rel=1e-5)


def _returning(model: TinyVLM, logits: torch.Tensor):
    original = model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = logits
        return out

    return forward


def test_a_labelled_regime_recipe_runs_resumes_and_hides_the_unlabelled_answers(
        shapes_dir: Path, tmp_path: Path) -> None:
    """Teacher on every image; student, ablation and pairs on the labelled quarter; mimic
    also on the unlabelled questions. A rerun with resume changes nothing."""
    import shutil

    from tinyvlm.data.pairs import load_pairs
    from tinyvlm.train.pipeline import run_recipe

    from .test_recipes_multi import stage, teacher_student

    data_dir = tmp_path / "data"
    shutil.copytree(shapes_dir, data_dir)
    recipe = teacher_student(data_dir)
    recipe.data.labelled_fraction = 0.25
    recipe.stages[0].images = "all"
    recipe.stages[2].mimic.unlabelled = True
    recipe.stages.append(stage("pairs", action="build_pairs", build_pairs={
        "samples": 2, "max_prompts": 4, "probes": "train.json", "seed": 1}))
    run = tmp_path / "run"
    run_recipe(recipe, run, progress=False)
    labelled = {image_key(c) for c in stage_conversations(recipe.data, StageConfig())[1]}
    pairs = load_pairs(run / "checkpoints" / "pairs" / "pairs.jsonl")
    assert pairs and any(p["source"] == "pope" for p in pairs)
    assert {str(Path(p["image"]).resolve()) for p in pairs} <= \
        {str(Path(k).resolve()) for k in labelled}
    before = (run / "model" / "model.safetensors").read_bytes()
    run_recipe(recipe, run, resume=True, progress=False)
    assert (run / "model" / "model.safetensors").read_bytes() == before


def test_the_curve_reruns_the_student_stages_at_each_fraction(tmp_path: Path,
                                                            shapes_dir: Path) -> None:
    """benchmarks/distill_curve.py: the llava-mod recipe without its teacher and preference
    stages, at the given fraction, from the finished run's teacher and student encoder; a
    stage with fewer labelled items than its batch takes them all as its batch."""
    import importlib.util

    from tinyvlm.config import load_recipe
    from tinyvlm.train.stages import check_runnable

    spec = importlib.util.spec_from_file_location(
        "distill_curve", Path(__file__).parents[1] / "benchmarks" / "distill_curve.py")
    assert spec is not None and spec.loader is not None
    curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curve)
    base = load_recipe(Path(__file__).parents[1] / "recipes" / "llava_mod.yaml")
    (tmp_path / "data").symlink_to(shapes_dir)
    recipe = curve.student_recipe(base, tmp_path, 0.25)
    check_runnable(recipe)
    assert recipe.data.labelled_fraction == 0.25
    names = [s.name for s in recipe.stages]
    assert all(s.model != "teacher" and s.objective != "preference"
               and s.action != "build_pairs" for s in recipe.stages)
    assert "student-vision" not in names and "mimic-sparse" in names and "student-sft" in names
    encoder = str((tmp_path / "checkpoints" / "student-vision").resolve())
    first = next(s for s in recipe.stages if s.model == "model")
    assert set(first.init) == {"vision", "connector", "language"}
    assert all(v.startswith(encoder) for v in first.init.values())
    teacher = str((tmp_path / "checkpoints" / "teacher-sft").resolve())
    assert all(s.mimic.teacher.startswith(teacher) and s.mimic.unlabelled
               for s in recipe.stages if s.mimic is not None)
    everything = curve.student_recipe(base, tmp_path, 1.0)
    assert not any(s.mimic.unlabelled for s in everything.stages if s.mimic is not None)
    assert set(everything.eval.models) == set(curve.ROWS)
    few = curve.student_recipe(base, tmp_path, 0.02)
    batches = {s.name: s.batch_size for s in base.stages}
    capped = 0
    for s in few.stages:
        if s.action != "train":
            continue
        n = len(stage_conversations(few.data, s)[1])
        if s.mimic is not None and s.mimic.unlabelled:
            assert s.batch_size == batches[s.name]
        else:
            assert s.batch_size == min(n, batches[s.name])
            capped += s.batch_size < batches[s.name]
    assert capped > 0  # the small set really is smaller than some batch
