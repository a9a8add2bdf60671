"""A recipe end to end: data, tokenizer, model, then its stages through the one loop."""

from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path

import torch

from tinyvlm.config import DataConfig, Recipe, StageConfig, dump_yaml, to_dict
from tinyvlm.data import shapes
from tinyvlm.data.formats import conversation_texts, keep_turns, load_llava
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.eval.telemetry import write_expert_load
from tinyvlm.io import read_json, write_text
from tinyvlm.models.surgery import upcycle
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.loop import Checkpoints, completed, load_final, train_stage
from tinyvlm.train.objectives import build_objective


def prepare_data(config: DataConfig, progress: bool = True) -> Path:
    """The dataset directory; with ShapesWorld settings, generated there first unless a
    complete dataset made with the same settings is already there."""
    root = Path(config.path)
    if config.shapes is None:
        if not (root / config.train).is_file():
            raise InputError(f"no training file {config.train} (and no ShapesWorld settings "
                             "to generate one)", root)
        return root
    world = shapes.ShapesWorldConfig.from_dict(config.shapes, key="data.shapes")
    manifest = root / "dataset.json"  # written last: its presence marks a complete dataset
    if manifest.is_file() and read_json(manifest).get("config") == world.to_dict():
        return root
    if progress:
        print(f"generating ShapesWorld in {root} ...", flush=True)
    shapes.write_dataset(root, world)
    return root


def train_tokenizer(recipe: Recipe, run_dir: Path) -> Tokenizer:
    """The run's tokenizer, trained on the training text once and shared by its models."""
    tok_file = run_dir / "tokenizer.json"
    if tok_file.is_file():
        return Tokenizer.load(tok_file, recipe.model.chat)
    texts = conversation_texts(load_llava(Path(recipe.data.path) / recipe.data.train))
    tokenizer = Tokenizer.train(texts, recipe.tokenizer, recipe.model.chat)
    tokenizer.save(tok_file)
    return tokenizer


def build_model(recipe: Recipe, run_dir: Path, name: str = "model") -> TinyVLM:
    """A fresh model (the recipe's `model`, or models[name]) with the run's tokenizer."""
    tokenizer = train_tokenizer(recipe, run_dir)
    config = copy.deepcopy(recipe.model if name == "model" else recipe.models[name])
    torch.manual_seed(recipe.seed)
    return TinyVLM.from_tokenizer(config, tokenizer)


def stage_model_dir(run_dir: str | Path, stage: StageConfig) -> Path:
    """Where a finished stage left its model."""
    return Checkpoints(Path(run_dir) / "checkpoints" / stage.name, stage.keep_checkpoints
                       ).path(stage.steps) / "model"


def resolve_stage_ref(ref: str, recipe: Recipe, run_dir: Path) -> Path:
    """'stage:NAME' -> the model directory that stage finished with."""
    stage = _ref_stage(ref, recipe)
    name = stage.name
    path = stage_model_dir(run_dir, _steps_of(stage))
    if not (path / "config.json").is_file():
        raise InputError(f"stage '{name}' has not finished: no model in {path}")
    return path


def pairs_file(run_dir: str | Path, stage: StageConfig) -> Path:
    """Where a preference_build stage writes its pairs."""
    return Path(run_dir) / "checkpoints" / stage.name / "pairs.jsonl"


def _ref_stage(ref: str, recipe: Recipe) -> StageConfig:
    name = ref.removeprefix("stage:")
    stage = next((s for s in recipe.stages if s.name == name), None)
    if stage is None or not ref.startswith("stage:"):
        raise InputError(f"'{ref}' does not name a stage of recipe '{recipe.name}'")
    return stage


def build_preference_pairs(model: TinyVLM, recipe: Recipe, stage: StageConfig, run_dir: Path,
                           progress: bool) -> Path:
    """Action preference_build: the model samples answers to the stage's prompts; ranked
    pairs plus hallucination pairs from existence probes, written to pairs_file()."""
    from tinyvlm.train.preference import build_pairs, load_probes, pope_pairs, write_pairs
    from tinyvlm.train.teacher import FrozenTeacher

    cfg = stage.pairs
    assert cfg is not None
    root = Path(recipe.data.path)
    convs = load_llava(root / (stage.train or recipe.data.train))
    if stage.question_types:
        wanted = set(stage.question_types)
        convs = [c for c in (keep_turns(c, wanted) for c in convs) if c is not None]
    rng = random.Random(cfg.seed)
    if cfg.max_prompts and len(convs) > cfg.max_prompts:
        convs = rng.sample(convs, cfg.max_prompts)
    teacher = None
    if cfg.teacher:
        path = resolve_stage_ref(cfg.teacher, recipe, run_dir) if cfg.teacher.startswith(
            "stage:") else Path(cfg.teacher)
        teacher = FrozenTeacher.from_pretrained(path)  # build_pairs checks it fits the model
    model.eval()
    records = build_pairs(model, convs, cfg.samples, cfg.temperature, cfg.top_p, cfg.seed,
                          teacher, max_new_tokens=cfg.max_new_tokens, progress=progress)
    if cfg.probes:
        probes = pope_pairs(load_probes(root / cfg.probes))
        if cfg.max_probes and len(probes) > cfg.max_probes:
            probes = rng.sample(probes, cfg.max_probes)
        records += probes
    if not records:
        raise InputError(f"stage '{stage.name}': no preference pairs could be built")
    return write_pairs(pairs_file(run_dir, stage), records)


def with_resolved_refs(stage: StageConfig, recipe: Recipe, run_dir: Path) -> StageConfig:
    """The stage with every "stage:NAME" of its distill/preference sections replaced by the
    path it names: a model directory, or for preference.pairs the pairs file."""
    sections: dict[str, object] = {}
    for section, key in (("distill", "teacher"), ("preference", "teacher"),
                         ("preference", "pairs")):
        cfg = sections.get(section, getattr(stage, section))
        ref = getattr(cfg, key, None) if cfg is not None else None
        if not (isinstance(ref, str) and ref.startswith("stage:")):
            continue
        path = (pairs_file(run_dir, _ref_stage(ref, recipe)).resolve() if key == "pairs"
                else resolve_stage_ref(ref, recipe, run_dir))
        sections[section] = dataclasses.replace(cfg, **{key: str(path)})  # type: ignore[type-var]
    return dataclasses.replace(stage, **sections) if sections else stage  # type: ignore[arg-type]


def _steps_of(stage: StageConfig) -> StageConfig:
    # Actions leave their model as a step-0 checkpoint, so they resume like training stages.
    return stage if stage.action == "train" else dataclasses.replace(stage, steps=0)


def run_recipe(recipe: Recipe, run_dir: str | Path, resume: bool = False,
               progress: bool = True) -> TinyVLM:
    """Train every stage of `recipe` into `run_dir`; the final model goes to run_dir/model.

    Stages act on the recipe's `model` or on one of its named `models` (teacher, students);
    a stage may start a model from modules of an earlier stage's model, distil from an
    earlier stage's model, or upcycle its model into experts. With resume, finished stages
    are skipped (their final weights reloaded) and an interrupted stage continues from its
    latest checkpoint. Returns the recipe's `model` as its last stage left it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    write_text(run_dir / "recipe.yaml", dump_yaml(recipe))
    prepare_data(recipe.data, progress)
    models: dict[str, TinyVLM] = {}
    for raw in recipe.stages:
        stage = _steps_of(raw)
        model = models.get(stage.model) or models.setdefault(
            stage.model, build_model(recipe, run_dir, stage.model))
        if stage.action == "preference_build":
            if not (resume and pairs_file(run_dir, stage).is_file()):
                build_preference_pairs(model, recipe, stage, run_dir, progress)
            continue
        if stage.action == "upcycle":
            assert stage.moe is not None
            torch.manual_seed(stage.seed)  # the new routers: the same on every (re)run
            upcycle(model, stage.moe)
        done = resume and completed(run_dir, stage)
        if done:
            load_final(run_dir, stage, model)
            continue
        for module, ref in stage.init.items():
            source = TinyVLM.from_pretrained(resolve_stage_ref(ref, recipe, run_dir))
            try:
                getattr(model, module).load_state_dict(getattr(source, module).state_dict())
            except RuntimeError:
                raise InputError(f"stage '{stage.name}': init.{module} from '{ref}': the two "
                                 f"models' {module} modules differ in shape") from None
        if stage.action == "upcycle":
            Checkpoints(run_dir / "checkpoints" / stage.name, stage.keep_checkpoints).save(
                0, model, {"step": 0, "stage": to_dict(stage)})
            continue
        stage = with_resolved_refs(stage, recipe, run_dir)
        objective = build_objective(stage.objective, model, stage)
        source = objective.data(model, recipe.data, stage)
        train_stage(model, stage, objective, source, run_dir, resume=resume, progress=progress)
    model = models.get("model") or build_model(recipe, run_dir)
    model.save_pretrained(run_dir / "model")
    val = Path(recipe.data.path) / "val.json"
    if val.is_file():  # MoE models: which experts took which tokens, as JSON and a heatmap
        write_expert_load(model, load_llava(val), run_dir)
    return model


def report_models(recipe: Recipe, run_dir: str | Path, final: TinyVLM
                  ) -> dict[str, TinyVLM]:
    """The models a run reports: eval.models (row name -> stage reference), or the final
    model under the recipe's name."""
    if not recipe.eval.models:
        return {recipe.name: final}
    return {row: TinyVLM.from_pretrained(resolve_stage_ref(ref, recipe, Path(run_dir))).eval()
            for row, ref in recipe.eval.models.items()}
