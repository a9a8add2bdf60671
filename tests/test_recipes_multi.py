"""Recipes with several models: a teacher and students in one stage list, stage references,
upcycling as a stage, report rows per stage, resume across all of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tinyvlm.config import (
    EvalConfig,
    MimicConfig,
    MoEConfig,
    Recipe,
    StageConfig,
    check_recipe,
    from_dict,
)
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.models.moe import MoE
from tinyvlm.train.pipeline import report_models, resolve_stage_ref, run_recipe

from .conftest import tiny_model_config, tiny_recipe


def stage(name: str, model: str = "model", **kw: object) -> StageConfig:
    base = {"name": name, "model": model, "steps": 2, "batch_size": 4, "warmup_steps": 1,
            "log_every": 1}
    return from_dict(StageConfig, {**base, **kw})


def teacher_student(data_dir: Path) -> Recipe:
    recipe = tiny_recipe(data_dir)
    recipe.models = {"teacher": tiny_model_config(dim=48, heads=4)}
    recipe.stages = [
        stage("teacher-sft", "teacher"),
        stage("align", init={"vision": "stage:teacher-sft"}, trainable=["connector"]),
        stage("mimic-dense", objective="mimic",
              mimic={"teacher": "stage:teacher-sft", "kd_weight": 1.0}),
        stage("upcycle", action="upcycle", upcycle={"experts": 4, "top_k": 2, "layers": [1]}),
        stage("mimic-sparse", objective="mimic", mimic={"teacher": "stage:teacher-sft"}),
    ]
    recipe.eval = EvalConfig(models={"teacher": "stage:teacher-sft",
                                     "student-mimic-dense": "stage:mimic-dense",
                                     "student-mimic-sparse": "stage:mimic-sparse"})
    check_recipe(recipe)
    return recipe


def test_teacher_and_student_in_one_run(shapes_dir: Path, tmp_path: Path) -> None:
    recipe = teacher_student(shapes_dir)
    run = tmp_path / "run"
    final = run_recipe(recipe, run, progress=False)
    # The student started from the teacher's encoder, and only its connector trained there.
    teacher = report_models(recipe, run, final)["teacher"]
    align = resolve_stage_ref("stage:align", recipe, run)
    from tinyvlm.models.vlm import TinyVLM

    aligned = TinyVLM.from_pretrained(align)
    for a, b in zip(aligned.vision.parameters(), teacher.vision.parameters(), strict=True):
        assert torch.equal(a, b)
    # Upcycling is a stage: the final student is sparse at the chosen block.
    assert isinstance(final.language.blocks[1].ffn, MoE)
    assert final.config.language.moe is not None
    rows = report_models(recipe, run, final)
    assert list(rows) == ["teacher", "student-mimic-dense", "student-mimic-sparse"]
    assert rows["teacher"].config.language.dim == 48
    assert rows["student-mimic-dense"].config.language.moe is None
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sparse = [r for r in lines if r["stage"] == "mimic-sparse"]
    assert sparse and all("kd" in r and "router_loss" in r for r in sparse)
    # Resume: everything is finished, so nothing trains again and the result is the same.
    again = run_recipe(recipe, run, resume=True, progress=False)
    for (name, p), q in zip(final.state_dict().items(), again.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name
    assert (run / "metrics.jsonl").read_text().splitlines() == [
        json.dumps(r) for r in lines]


def test_bad_references_are_one_clear_error(shapes_dir: Path) -> None:
    recipe = teacher_student(shapes_dir)
    recipe.stages[2].mimic = MimicConfig(teacher="stage:teacher-sfx")
    with pytest.raises(InputError, match="did you mean 'teacher-sft'"):
        check_recipe(recipe)
    recipe = teacher_student(shapes_dir)
    recipe.stages[0].model = "teachr"
    with pytest.raises(InputError, match="did you mean 'teacher'"):
        check_recipe(recipe)
    recipe = teacher_student(shapes_dir)
    recipe.stages[3].upcycle = None
    with pytest.raises(InputError, match="needs a 'upcycle' section"):
        check_recipe(recipe)
    recipe = teacher_student(shapes_dir)
    recipe.eval.models["x"] = "stage:later"
    with pytest.raises(InputError, match="earlier stage"):
        check_recipe(recipe)
    recipe.stages[3].upcycle = MoEConfig()


def test_stage_sections_and_reference_kinds_are_checked(shapes_dir: Path) -> None:
    recipe = teacher_student(shapes_dir)
    recipe.stages[2].mimic = None
    with pytest.raises(InputError, match="objective 'mimic' needs a 'mimic' section"):
        check_recipe(recipe)
    recipe = teacher_student(shapes_dir)
    recipe.stages[1].init = {"visoin": "stage:teacher-sft"}
    with pytest.raises(InputError, match="did you mean 'vision'"):
        check_recipe(recipe)
    recipe = teacher_student(shapes_dir)
    recipe.stages.insert(1, stage("pairs", action="build_pairs", build_pairs={"samples": 2}))
    recipe.stages[3].init = {"vision": "stage:pairs"}
    with pytest.raises(InputError, match="must name a stage with a model"):
        check_recipe(recipe)
    recipe = teacher_student(shapes_dir)
    recipe.stages.append(stage("pref", objective="preference",
                               preference={"pairs": "stage:mimic-dense"}))
    with pytest.raises(InputError, match="must name a build_pairs stage"):
        check_recipe(recipe)


def test_stage_references_resolve_to_paths(shapes_dir: Path, tmp_path: Path) -> None:
    from tinyvlm.rundir import RunDir
    from tinyvlm.train.stages import StageRun, with_resolved_refs

    def resolved_in(stage: StageConfig, root: Path) -> StageConfig:
        return with_resolved_refs(StageRun(stage, None, recipe, RunDir(root)))  # type: ignore

    recipe = teacher_student(shapes_dir)
    recipe.stages.insert(1, stage("pairs", action="build_pairs", build_pairs={"samples": 2}))
    pref = stage("pref", objective="preference",
                 preference={"pairs": "stage:pairs", "teacher": "stage:teacher-sft"})
    recipe.stages.append(pref)
    check_recipe(recipe)
    teacher_dir = RunDir(tmp_path).stage_model(recipe.stages[0])
    teacher_dir.mkdir(parents=True)
    (teacher_dir / "config.json").write_text("{}")
    resolved = resolved_in(pref, tmp_path)
    assert resolved.preference.teacher == str(teacher_dir)
    assert resolved.preference.pairs == str(RunDir(tmp_path).pairs("pairs").resolve())
    assert pref.preference.pairs == "stage:pairs"  # the recipe's own stage is not changed
    mimic = recipe.stages[3]
    assert resolved_in(mimic, tmp_path).mimic.teacher == str(teacher_dir)
    with pytest.raises(InputError, match="has not finished"):
        resolved_in(mimic, tmp_path / "elsewhere")


def test_llava_mod_sparse_student_activates_at_most_a_third_of_the_teacher(
        shapes_tokenizer: Tokenizer) -> None:
    """The recipe's promise (LLaVA-MoD's budget): the upcycled student, as its upcycle stage
    makes it, activates at most 1/3 of the teacher's parameters with ShapesWorld's
    vocabulary (tied embeddings; a vocabulary of thousands would tip it over)."""
    import dataclasses

    from tinyvlm.analysis.cost import parameter_split
    from tinyvlm.config import load_recipe

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "llava_mod.yaml")
    vocab = shapes_tokenizer.vocab_size

    def activated(model: object) -> int:
        lang = dataclasses.replace(model.language, vocab_size=vocab)  # type: ignore[attr-defined]
        split = parameter_split(dataclasses.replace(model, language=lang))  # type: ignore[arg-type]
        return split.vision.activated + split.connector.activated + split.language.activated

    upcycle = next(s.upcycle for s in recipe.stages if s.action == "upcycle")
    sparse = dataclasses.replace(recipe.model, language=dataclasses.replace(
        recipe.model.language, moe=upcycle))
    assert recipe.models["student_moe"].language == sparse.language
    assert 3 * activated(sparse) <= activated(recipe.models["teacher"])
    assert activated(sparse) > activated(recipe.model)  # top-2: more than the dense student
    # The ablations start from this student's checkpoint: the same architecture.
    ablations = load_recipe(Path(__file__).parents[1] / "recipes" / "mimic_ablations.yaml")
    assert ablations.model == recipe.model
