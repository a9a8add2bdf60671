"""A recipe end to end: data, tokenizer, models, then its stages, each run by its action."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from tinyvlm.analysis.expert_load import write_expert_load
from tinyvlm.config import (
    DataConfig,
    ModelConfig,
    Recipe,
    check_model,
    dump_yaml,
    find_recipe,
    load_recipe,
    stage_refs,
)
from tinyvlm.cpu_share import pin_threads
from tinyvlm.data import shapes
from tinyvlm.data.llava import conversation_texts, load_llava
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.io import read_json, write_text
from tinyvlm.models.load import load_model, load_tokenizer_of
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir
from tinyvlm.schema import from_dict, to_dict
from tinyvlm.train.runtime import Runtime
from tinyvlm.train.stages import STAGE_ACTIONS, StageRun, check_runnable, ref_path, stage_named


def prepare_data(config: DataConfig, progress: bool = True) -> Path:
    """The dataset directory; with ShapesWorld settings, generated there first unless a
    complete dataset made with the same settings is already there."""
    root = Path(config.path)
    if config.shapes is None:
        if not (root / config.train).is_file():
            raise InputError(f"no training file {config.train} (and no ShapesWorld settings "
                             "to generate one)", root)
        return root
    manifest = root / "dataset.json"  # written last: its presence marks a complete dataset
    if manifest.is_file() and read_json(manifest).get("config") == to_dict(config.shapes):
        return root
    if progress:
        print(f"generating ShapesWorld in {root} ...", flush=True)
    shapes.write_dataset(root, config.shapes)
    return root


def train_tokenizer(recipe: Recipe, run: RunDir) -> Tokenizer:
    """The run's tokenizer, trained on the training text once and shared by its models (or
    a pretrained model's, read from its directory each time and copied into the run)."""
    if recipe.tokenizer.pretrained:
        tokenizer = load_tokenizer_of(recipe.tokenizer.pretrained)
        if run.is_main and not run.tokenizer.is_file():
            tokenizer.save(run.tokenizer)
        return tokenizer
    if run.tokenizer.is_file():
        return Tokenizer.load(run.tokenizer, recipe.model.chat)
    texts = conversation_texts(load_llava(Path(recipe.data.path) / recipe.data.train))
    tokenizer = Tokenizer.train(texts, recipe.tokenizer, recipe.model.chat)
    if run.is_main:
        tokenizer.save(run.tokenizer)
    return tokenizer


def build_model(recipe: Recipe, run_dir: str | Path | RunDir, name: str = "model") -> TinyVLM:
    """A fresh model (the recipe's `model`, or models[name]) with the run's tokenizer, or
    the model of directory pretrained[name]."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    tokenizer = train_tokenizer(recipe, run)
    if name in recipe.pretrained:
        model = load_model(recipe.pretrained[name])
        assert model.tokenizer is not None
        if model.tokenizer.backend.get_vocab() != tokenizer.backend.get_vocab():
            raise InputError(f"recipe.pretrained.{name}: its vocabulary "
                             f"({model.tokenizer.vocab_size} tokens) is not the run's "
                             f"({tokenizer.vocab_size}): set tokenizer.pretrained to this "
                             "directory", recipe.pretrained[name])
        return model.train()
    config = copy.deepcopy(recipe.model if name == "model" else recipe.models[name])
    torch.manual_seed(recipe.seed)
    return TinyVLM.from_tokenizer(config, tokenizer)


def load_runnable_recipe(name: str | Path) -> Recipe:
    """A recipe file (or a built-in recipe's name), checked against the schema and the
    registries: every error names the file, before anything runs."""
    path = find_recipe(name)
    recipe = load_recipe(path)
    check_runnable(recipe, path)
    return recipe


def run_recipe(recipe: Recipe, run_dir: str | Path, resume: bool = False,
               progress: bool = True, runtime: Runtime | None = None) -> TinyVLM:
    """Run every stage of `recipe` in `run_dir`; the final model goes to run_dir/model.

    Stages act on the recipe's `model` or on one of its named `models` (teacher, students);
    a stage may start a model from modules of an earlier stage's model, distil from an
    earlier stage's model, upcycle its model into experts or build preference pairs. With
    resume, finished stages are skipped (their final weights reloaded) and an interrupted
    stage continues from its newest good checkpoint; a recipe that changed in what the
    checkpoints depend on is refused. One run at a time holds the directory. Returns the
    recipe's `model` as its last stage left it.
    """
    check_runnable(recipe)
    runtime = runtime or Runtime()
    run = RunDir(run_dir, is_main=runtime.is_main)
    with run.lock():
        if recipe.threads:  # pinned: the thread count no longer follows the machine's load
            pin_threads(recipe.threads)
        if run.is_main:  # one process writes the data and the tokenizer; the others wait
            prepare_data(recipe.data, progress)
            train_tokenizer(recipe, run)
        runtime.barrier()
        check_teachers(recipe, train_tokenizer(recipe, run))
        if resume and not any(run.steps(s.name) for s in recipe.stages):
            warnings.warn(f"{run.root}: nothing to resume yet; starting from the first stage",
                          NothingToResumeWarning, stacklevel=2)
        if run.is_main:  # the settings of this attempt, once they passed every check
            write_text(run.recipe, dump_yaml(recipe))
        models: dict[str, TinyVLM] = {}
        for i, stage in enumerate(recipe.stages):
            model = models.get(stage.model) or models.setdefault(
                stage.model, build_model(recipe, run, stage.model).to(runtime.device))
            STAGE_ACTIONS[stage.action](StageRun(stage, model, recipe, run, runtime, resume,
                                                 progress, depends_on(recipe, i)))
            models[stage.model] = runtime.unwrap(model)  # whole again after a sharded stage
            runtime.barrier()  # the stage's files (its model, pairs) are there for everyone
        model = models.get("model") or build_model(recipe, run)
        if run.is_main:
            model.save_pretrained(run.model)
        val = Path(recipe.data.path) / "val.json"
        if val.is_file() and run.is_main:  # MoE models: which experts took which tokens
            write_expert_load(model, load_llava(val), run.root)
    return model


class NothingToResumeWarning(UserWarning):
    """--resume found no checkpoint of any stage."""


# Stage settings a checkpoint does not depend on: they may change between a run and its resume.
_FREE_STAGE_KEYS = {"log_every", "checkpoint_every", "keep_checkpoints"}


def depends_on(recipe: Recipe, index: int) -> dict[str, Any]:
    """What the result of stage `index` depends on: the seed, the data, the tokenizer, every
    model's config and the settings of this stage and every earlier one (but logging and
    checkpointing). Stored with its checkpoints; a resume refuses one made with other
    settings. Stages may be added at the end."""
    data = {**to_dict(recipe.data), "path": str(Path(recipe.data.path).resolve())}
    for key in ("eval", "bad_images"):
        data.pop(key)
    return {
        "seed": recipe.seed, "data": data, "tokenizer": to_dict(recipe.tokenizer),
        "model": to_dict(recipe.model), "models": to_dict(recipe.models),
        "pretrained": {k: str(Path(v).resolve()) for k, v in recipe.pretrained.items()},
        "stages": [{k: v for k, v in to_dict(s).items() if k not in _FREE_STAGE_KEYS}
                   for s in recipe.stages[: index + 1]],
    }


def check_teachers(recipe: Recipe, tokenizer: Tokenizer) -> None:
    """Teachers, references and rankers given as model directories share the run's
    vocabulary: checked before the first stage, not when their stage is reached."""
    for i, stage in enumerate(recipe.stages):
        for key, ref in stage_refs(stage, every=True).items():
            if ref.startswith("stage:") or key.startswith("init.") or key.endswith(".pairs"):
                continue
            if key == "mimic.teacher" and stage.mimic is not None and stage.mimic.kind == "uld":
                continue  # ULD distils across vocabularies
            theirs = load_tokenizer_of(ref).backend.get_vocab()
            if theirs != tokenizer.backend.get_vocab():
                raise InputError(f"recipe.stages[{i}].{key}: its vocabulary ({len(theirs)} "
                                 f"tokens) is not the run's ({tokenizer.vocab_size} tokens): "
                                 "distillation compares distributions token by token", ref)


def resolve_stage_ref(ref: str, recipe: Recipe, run_dir: str | Path) -> Path:
    """'stage:NAME' -> the model directory that stage finished with (or its pairs file)."""
    stage_named(recipe, ref)  # one clear error for a name the recipe lacks
    return ref_path(ref, recipe, RunDir(run_dir))


def report_models(recipe: Recipe, run_dir: str | Path, final: TinyVLM) -> dict[str, TinyVLM]:
    """The models a run reports: eval.models (row name -> stage reference), or the final
    model under the recipe's name."""
    if not recipe.eval.models:
        return {recipe.name: final}
    out = {}
    for row, ref in recipe.eval.models.items():
        model = load_model(resolve_stage_ref(ref, recipe, run_dir)).eval()
        if row in recipe.eval.overrides:
            model = with_overrides(model, recipe.eval.overrides[row],
                                   f"recipe.eval.overrides.{row}")
        out[row] = model
    return out


def with_overrides(model: TinyVLM, changes: dict[str, Any], key: str) -> TinyVLM:
    """The same weights under a config with `changes` merged in (a training-free variant:
    pruning, FastV): one error when the weights no longer fit."""
    def merge(base: Any, new: Any) -> Any:
        if isinstance(base, dict) and isinstance(new, dict):
            return {k: merge(base.get(k), v) for k, v in new.items()} | \
                {k: v for k, v in base.items() if k not in new}
        return new

    config = from_dict(ModelConfig, merge(to_dict(model.config), changes), key=key)
    check_model(config, None, key)
    variant = TinyVLM(config, model.tokenizer)
    try:
        variant.load_state_dict(model.state_dict())
    except RuntimeError as e:
        raise InputError(f"{key}: the weights do not fit the changed config ({e})") from None
    return variant.eval()
