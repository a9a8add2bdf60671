"""What a stage does, by its action: the registry of stage actions, and the check that every
stage of a recipe can run (its objective or action is registered and its settings are in
range) before the first one starts.

An action is a function of a `StageRun` (the stage, its model, the recipe and the run
directory); it leaves its model as the stage's checkpoint (train, upcycle) or writes the
stage's pairs (build_pairs). The pipeline looks actions up here and nowhere else.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tinyvlm.config import Recipe, StageConfig, stage_refs
from tinyvlm.data.pairs import write_pairs
from tinyvlm.errors import InputError, closest
from tinyvlm.io import read_json, write_json
from tinyvlm.models.connectors import CONNECTORS
from tinyvlm.models.load import load_model
from tinyvlm.models.surgery import upcycle
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir
from tinyvlm.schema import to_dict
from tinyvlm.train.checkpoints import CheckpointContent, Checkpoints, first_difference
from tinyvlm.train.loop import check_modules, completed, load_final, train_stage
from tinyvlm.train.objectives import TrainData, objective_class
from tinyvlm.train.pairs import load_probes, make_pairs
from tinyvlm.train.runtime import Runtime
from tinyvlm.train.stage_data import stage_conversations, unlabelled_image_paths
from tinyvlm.train.teacher import FrozenModel


@dataclass
class StageRun:
    """Everything an action needs to run one stage."""

    stage: StageConfig
    model: TinyVLM
    recipe: Recipe
    run: RunDir
    runtime: Runtime = field(default_factory=Runtime)
    resume: bool = False
    progress: bool = True
    depends: dict[str, Any] | None = None  # what the stage's results depend on (on resume)

    def ref_path(self, ref: str) -> Path:
        return ref_path(ref, self.recipe, self.run)


def ref_path(ref: str, recipe: Recipe, run: RunDir) -> Path:
    """'stage:NAME' -> the model directory that stage finished with, or for a build_pairs
    stage its pairs file; any other string is a path as given."""
    if not ref.startswith("stage:"):
        return Path(ref)
    stage = stage_named(recipe, ref)
    if stage.action == "build_pairs":
        return run.pairs(stage.name).resolve()
    path = run.stage_model(stage)
    if not (path / "config.json").is_file():
        raise InputError(f"stage '{stage.name}' has not finished: no model in {path}")
    return path


def stage_named(recipe: Recipe, ref: str) -> StageConfig:
    name = ref.removeprefix("stage:")
    stage = next((s for s in recipe.stages if s.name == name), None)
    if stage is None or not ref.startswith("stage:"):
        raise InputError(f"'{ref}' does not name a stage of recipe '{recipe.name}'")
    return stage


# ----------------------------------------------------------------------------- actions


def run_train(r: StageRun) -> None:
    """The one training loop with the stage's objective (skipped when finished, on resume)."""
    stage = r.stage
    if r.resume and completed(r.run, stage, r.depends):
        load_final(r.run, stage, r.model)
        return
    init_modules(r)
    stage = with_resolved_refs(r)
    objective = objective_class(stage.objective)(r.model, stage)
    data = check_images(objective.data(r.model, r.recipe.data, stage), stage,
                        r.recipe.data.bad_images, r.progress)
    train_stage(r.model, stage, objective, data, r.run, resume=r.resume, progress=r.progress,
                runtime=r.runtime, depends=r.depends)


def run_upcycle(r: StageRun) -> None:
    """The model's dense FFNs become experts (copies of the dense FFN); the result is the
    stage's step-0 checkpoint, so a resumed run reloads it."""
    stage = r.stage
    assert stage.upcycle is not None
    torch.manual_seed(stage.seed)  # the new routers: the same on every (re)run
    stage.upcycle.check(r.model.config.language.depth, None,
                        f"stage '{stage.name}': upcycle")
    upcycle(r.model, stage.upcycle)
    ckpts = Checkpoints(r.run, stage.name, stage.keep_checkpoints, r.depends,
                        fresh=not r.resume)
    if r.resume and 0 in ckpts.steps() and ckpts.problem(0) is None:
        ckpts.check_settings(0)
        ckpts.restore(0, r.model)
        return
    init_modules(r)
    ckpts.save(0, CheckpointContent(r.model, {"step": 0, "stage": to_dict(stage)}))


def run_build_pairs(r: StageRun) -> None:
    """The model samples answers to the stage's prompts; ranked pairs plus hallucination
    pairs from existence probes go to the stage's pairs file."""
    if not r.run.is_main:  # one process samples and writes the pairs; the others wait
        return
    stage, cfg = r.stage, r.stage.build_pairs
    assert cfg is not None
    out = r.run.pairs(stage.name)
    made_with = r.run.stage_dir(stage.name) / "depends.json"
    if r.resume and out.is_file():
        if made_with.is_file() and r.depends is not None:
            where = first_difference(read_json(made_with), r.depends, "")
            if where is not None:
                raise InputError(f"--resume: these pairs were made with other settings: "
                                 f"recipe{where}. Resume with the recipe they were made with, "
                                 "or start over without --resume", out)
        return
    _, convs = stage_conversations(r.recipe.data, stage)
    teacher = (FrozenModel.from_pretrained(r.ref_path(cfg.teacher),
                                           device=next(r.model.parameters()).device)
               if cfg.teacher else None)
    root = Path(r.recipe.data.path)
    probes = load_probes(root / cfg.probes) if cfg.probes else []
    hidden = unlabelled_image_paths(r.recipe.data, stage)  # their answers are not known
    probes = [p for p in probes if not any(str(i) in hidden for i in p.images)]
    records = make_pairs(r.model, convs, probes,
                         samples=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                         seed=cfg.seed, teacher=teacher, max_new_tokens=cfg.max_new_tokens,
                         max_prompts=cfg.max_prompts, max_probes=cfg.max_probes,
                         balance_yes_no=cfg.balance_yes_no, progress=r.progress)
    if not records:
        raise InputError(f"stage '{stage.name}': no preference pairs could be built")
    if r.run.is_main:
        write_pairs(out, records)
        if r.depends is not None:
            write_json(made_with, r.depends)


STAGE_ACTIONS: dict[str, Callable[[StageRun], None]] = {
    "train": run_train,
    "upcycle": run_upcycle,
    "build_pairs": run_build_pairs,
}


# ----------------------------------------------------------------------------- helpers


def check_images(data: TrainData, stage: StageConfig, policy: str = "error",
                 progress: bool = True) -> TrainData:
    """Decode every image the stage reads before its first step (they stay cached): a bad
    one is one error naming it, or with policy "skip" its records are left out (counted)."""
    if data.images_of is None or data.store is None:
        return data
    images_of = data.images_of
    bad = data.store.check([i for item in data.items for i in images_of(item)], progress,
                           f"{stage.name}: images")
    if not bad:
        return data
    first = next(iter(bad.values()))
    if policy != "skip":
        raise InputError(f"stage '{stage.name}': {len(bad)} images cannot be read (set "
                         f"data.bad_images: skip to leave their records out); the first: "
                         f"{first}")
    items = [it for it in data.items if not any(i in bad for i in images_of(it))]
    warnings.warn(f"stage '{stage.name}': {len(data.items) - len(items)} of "
                  f"{len(data.items)} records left out: {len(bad)} images cannot be read "
                  f"(the first: {first})", SkippedRecordsWarning, stacklevel=2)
    return replace(data, items=items)


class SkippedRecordsWarning(UserWarning):
    """Records whose images cannot be read were left out of a stage."""


def init_modules(r: StageRun) -> None:
    """Copy modules from finished stages' models (the stage's `init`)."""
    for module, ref in r.stage.init.items():
        source = load_model(r.ref_path(ref))
        try:
            getattr(r.model, module).load_state_dict(getattr(source, module).state_dict())
        except RuntimeError:
            raise InputError(f"stage '{r.stage.name}': init.{module} from '{ref}': the two "
                             f"models' {module} modules differ in shape") from None


def with_resolved_refs(r: StageRun) -> StageConfig:
    """The stage with every "stage:NAME" of its mimic/preference sections replaced by the
    path it names: a model directory, or for preference.pairs the pairs file."""
    stage = r.stage
    sections: dict[str, object] = {}
    for where, ref in stage_refs(stage).items():
        section, key = where.split(".")
        if section not in ("mimic", "preference"):
            continue
        cfg = sections.get(section, getattr(stage, section))
        sections[section] = replace(cfg, **{key: str(r.ref_path(ref))})  # type: ignore[type-var]
    return replace(stage, **sections) if sections else stage  # type: ignore[arg-type]


def check_runnable(recipe: Recipe, source: str | Path | None = None) -> None:
    """Every model's connector, every stage's action and objective is registered and the
    stage's settings are in range: one InputError naming the key, before any stage runs."""
    models = {"recipe.model": recipe.model,
              **{f"recipe.models.{n}": m for n, m in recipe.models.items()}}
    for key, config in models.items():
        kind = config.connector.kind
        if kind not in CONNECTORS:
            raise InputError(f"'{key}.connector.kind': unknown connector kind '{kind}'"
                             f"{closest(kind, CONNECTORS)}; known: {', '.join(CONNECTORS)}",
                             source)
    for i, stage in enumerate(recipe.stages):
        key = f"recipe.stages[{i}]"
        if stage.action not in STAGE_ACTIONS:
            raise InputError(f"{key}.action must be one of {', '.join(STAGE_ACTIONS)}, got "
                             f"'{stage.action}'{closest(stage.action, STAGE_ACTIONS)}", source)
        if stage.action != "train":
            continue
        try:
            objective_class(stage.objective).check(stage)
            check_modules(stage)
        except InputError as e:
            raise InputError(f"{key}: {e}", source) from None
