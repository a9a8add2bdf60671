"""Recipes: the data, the models and the stage list of one run, loaded from YAML and checked.

`load_recipe` checks what the schema alone can judge, before anything runs: types and keys,
plain names (every name that becomes a path), stage references, the sections each stage kind
needs and MoE settings. What needs the registries (objectives, stage actions) is checked by
the training layer before its first stage runs (`tinyvlm.train.stages.check_runnable`).
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyvlm.config.checks import build_pairs_rules, check_model, data_rules, require, stage_rules
from tinyvlm.config.data import DataConfig, TokenizerConfig
from tinyvlm.config.model import MODEL_MODULES, ModelConfig
from tinyvlm.config.stages import EvalConfig, StageConfig
from tinyvlm.errors import InputError, closest
from tinyvlm.rundir import check_plain_name
from tinyvlm.schema import from_dict, load_yaml


@dataclass
class ParallelConfig:
    strategy: str = "ddp"
    cpu_offload: bool = False  # fsdp: parameters and optimizer state live on the CPU
    # fsdp: the dtype blocks compute in (FSDP2's mixed precision; gradients are reduced and
    # the sharded weights kept in fp32)
    param_dtype: str = "fp32"
    # sharded: every process writes its shards (torch.distributed.checkpoint); gathered: the
    # main process writes whole tensors, as one process does
    checkpoints: str = "sharded"
    # teachers and references: replicate on every process, or shard (FSDP2, inference only)
    frozen: str = "replicate"
    timeout_s: float = 600.0  # a collective waiting longer fails the run (a dead peer)


@dataclass
class Recipe:
    name: str = "demo"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # More models trained in the same run (a teacher and its students), by name.
    models: dict[str, ModelConfig] = field(default_factory=dict)
    # Models that start from a directory instead of a config (name -> a tinyvlm or Hugging
    # Face model directory): their config and weights are the directory's. Their vocabulary
    # must be the run's (tokenizer.pretrained names the same directory).
    pretrained: dict[str, str] = field(default_factory=dict)
    stages: list[StageConfig] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    threads: int | None = None  # torch intra-op threads; None: torch's default
    # Under torchrun: "ddp" (a full replica per process) or "fsdp" (FSDP2: parameters,
    # gradients and optimizer state sharded over the processes), optionally kept on the CPU.
    parallel: ParallelConfig = field(default_factory=lambda: ParallelConfig())

    def stage_model(self, stage: StageConfig) -> ModelConfig:
        """The config of the model `stage` works on."""
        return self.model if stage.model == "model" else self.models[stage.model]


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def find_recipe(name: str | Path) -> Path:
    """A recipe file path, or the name of a built-in recipe (demo, llava-mod, m3vit, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = RECIPES / f"{str(name).replace('-', '_')}.yaml"
    if builtin.is_file():
        return builtin
    known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    raise InputError(f"no recipe file or built-in recipe '{name}' (built-in: {', '.join(known)})")


class RenamedKeyWarning(FutureWarning):
    """A recipe uses an earlier spelling of a key; it still loads."""


# Stage keys renamed so that each kind's section carries the kind's name: old -> new.
_RENAMED_STAGE_KEYS = {"distill": "mimic", "pairs": "build_pairs", "moe": "upcycle"}
_RENAMED_ACTIONS = {"preference_build": "build_pairs"}


def load_recipe(path: str | Path) -> Recipe:
    raw = load_yaml(path) or {}
    if isinstance(raw, dict) and isinstance(raw.get("stages"), list):
        raw = {**raw, "stages": [_modern_stage(s, i, path) for i, s in enumerate(raw["stages"])]}
    recipe = from_dict(Recipe, raw, source=path, key="recipe")
    if not recipe.stages:
        raise InputError("the recipe has no stages", path)
    check_recipe(recipe, path)
    return recipe


def _modern_stage(stage: Any, index: int, source: str | Path) -> Any:
    """A stage dict with earlier spellings replaced by today's, each with a note."""
    if not isinstance(stage, dict):
        return stage
    out = dict(stage)
    key = f"recipe.stages[{index}]"
    for old, new in _RENAMED_STAGE_KEYS.items():
        if old not in out:
            continue
        if new in out:
            raise InputError(f"{key}: both '{old}' and its new name '{new}' are given", source)
        warnings.warn(f"{source}: {key}.{old} is now spelled '{new}'", RenamedKeyWarning,
                      stacklevel=3)
        out[new] = out.pop(old)
    action = out.get("action")
    if isinstance(action, str) and action in _RENAMED_ACTIONS:
        warnings.warn(f"{source}: {key}.action '{action}' is now spelled "
                      f"'{_RENAMED_ACTIONS[action]}'", RenamedKeyWarning, stacklevel=3)
        out["action"] = _RENAMED_ACTIONS[action]
    return out


def check_recipe(recipe: Recipe, source: str | Path | None = None) -> None:
    """Cross-references a dict check cannot see: names, stage models, stage references, the
    sections stage kinds need, and MoE settings; all before anything trains."""
    check_plain_name(recipe.name, "recipe.name", source)
    par = recipe.parallel
    require([(par.strategy in ("ddp", "fsdp"), "strategy", "ddp or fsdp", par.strategy),
             (par.param_dtype in ("fp32", "bf16"), "param_dtype", "fp32 or bf16",
              par.param_dtype),
             (par.checkpoints in ("sharded", "gathered"), "checkpoints",
              "sharded or gathered", par.checkpoints),
             (par.frozen in ("replicate", "shard"), "frozen", "replicate or shard",
              par.frozen),
             (par.timeout_s > 0, "timeout_s", "> 0", par.timeout_s)],
            "recipe.parallel", source)
    for prefix, rules in data_rules(recipe.data, recipe.tokenizer, recipe.eval, recipe.threads,
                                    recipe.seed):
        require(rules, prefix, source)
    check_model(recipe.model, source, "recipe.model")
    for name, model in recipe.models.items():
        check_model(model, source, f"recipe.models.{name}")
    for name, directory in recipe.pretrained.items():
        check_plain_name(name, f"recipe.pretrained.{name}", source)
        if name in recipe.models:
            raise InputError(f"recipe.pretrained.{name}: '{name}' is also a key of models; a "
                             "model comes from a config or from a directory", source)
        if not (Path(directory) / "config.json").is_file():
            raise InputError(f"recipe.pretrained.{name}: not a model directory (no "
                             "config.json)", directory)
    if recipe.stages and all(s.model != "model" for s in recipe.stages):
        raise InputError("no stage trains the recipe's `model` (the run's final model)", source)
    kinds: dict[str, str] = {}
    for i, stage in enumerate(recipe.stages):
        key = f"recipe.stages[{i}]"
        _check_stage(recipe, stage, key, kinds, source)
        kinds[stage.name] = stage.kind
    for row in recipe.eval.overrides:
        if row not in recipe.eval.models:
            raise InputError(f"recipe.eval.overrides.{row}: not a row of eval.models"
                             f"{closest(row, list(recipe.eval.models))}", source)
    for row, ref in recipe.eval.models.items():
        check_plain_name(row, f"recipe.eval.models.{row}", source)
        _check_stage_ref(ref, kinds, f"recipe.eval.models.{row}", source, wants_pairs=False)


def _check_stage(recipe: Recipe, stage: StageConfig, key: str, kinds: dict[str, str],
                 source: str | Path | None) -> None:
    check_plain_name(stage.name, f"{key}.name", source)
    if stage.name in kinds:
        raise InputError(f"{key}: stage name '{stage.name}' is used twice", source)
    names = [*recipe.models, *recipe.pretrained]
    if stage.model != "model" and stage.model not in names:
        raise InputError(f"{key}.model: '{stage.model}' is neither 'model' nor a key of "
                         f"models or pretrained{closest(stage.model, names)}", source)
    # A kind's settings live in the stage field of the kind's name (mimic, upcycle, ...).
    if stage.kind in _SECTIONS and getattr(stage, stage.kind) is None:
        raise InputError(f"{key}: {_kind_label(stage)} needs a '{stage.kind}' section", source)
    if stage.action == "train":
        require(stage_rules(stage), key, source)
    if stage.action == "build_pairs" and stage.build_pairs is not None:
        require(build_pairs_rules(stage.build_pairs), f"{key}.build_pairs", source)
    if stage.action == "upcycle" and stage.upcycle is not None:
        # A pretrained model's depth is known once it loads: the upcycle action checks it.
        if stage.model not in recipe.pretrained:
            stage.upcycle.check(recipe.stage_model(stage).language.depth, source,
                                f"{key}.upcycle")
        if not stage.upcycle.normalize_gates or stage.upcycle.task_routing != "none":
            raise InputError(f"{key}.upcycle: upcycling needs normalize_gates: true and "
                             "task_routing: none", source)
    for section, modules in (("init", stage.init), ("trainable", stage.trainable),
                             ("lr_scale", stage.lr_scale)):
        for module in modules:
            if module not in MODEL_MODULES:
                raise InputError(f"{key}.{section}: unknown module '{module}'"
                                 f"{closest(module, MODEL_MODULES)}; modules: "
                                 f"{', '.join(MODEL_MODULES)}", source)
    for where, ref in stage_refs(stage).items():
        _check_stage_ref(ref, kinds, f"{key}.{where}", source,
                         wants_pairs=where == "preference.pairs")


def _section_fields() -> set[str]:
    """The StageConfig fields that hold a section (an optional settings dataclass)."""
    hints = typing.get_type_hints(StageConfig)
    return {f.name for f in dataclasses.fields(StageConfig)
            if any(dataclasses.is_dataclass(a) for a in typing.get_args(hints[f.name]))}


_SECTIONS = _section_fields()


def _kind_label(stage: StageConfig) -> str:
    return (f"objective '{stage.objective}'" if stage.action == "train"
            else f"action '{stage.action}'")


def stage_refs(stage: StageConfig, every: bool = False) -> dict[str, str]:
    """Every "stage:NAME" reference of a stage, by the key it stands under; with `every`,
    also the models and files it names by path."""
    refs = {f"init.{k}": v for k, v in stage.init.items()}
    candidates = {
        "mimic.teacher": stage.mimic.teacher if stage.mimic else "",
        "preference.teacher": (stage.preference.teacher
                               if stage.preference and stage.preference.reference == "teacher"
                               else ""),
        "preference.pairs": (stage.preference.pairs or "") if stage.preference else "",
        "build_pairs.teacher": stage.build_pairs.teacher if stage.build_pairs else "",
    }
    refs.update({k: v for k, v in candidates.items() if v and (every or v.startswith("stage:"))})
    if not every:
        refs = {k: v for k, v in refs.items() if v.startswith("stage:")}
    return refs


def _check_stage_ref(ref: str, earlier: dict[str, str], key: str, source: str | Path | None,
                     wants_pairs: bool) -> None:
    name = ref.removeprefix("stage:")
    if not ref.startswith("stage:") or name not in earlier:
        raise InputError(f"{key}: '{ref}' must be 'stage:NAME' naming an earlier stage"
                         f"{closest(name, list(earlier))}", source)
    # Pairs come from a build_pairs stage; models from every other stage.
    if (earlier[name] == "build_pairs") != wants_pairs:
        what = "a build_pairs stage" if wants_pairs else "a stage with a model"
        raise InputError(f"{key}: '{ref}' must name {what}", source)
