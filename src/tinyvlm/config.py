"""Configuration dataclasses: model, tokenizer, data, training stages, evaluation, recipes.

Every hyperparameter lives here. Each dataclass round-trips through plain dicts, so the same
objects are written to config.json (model directories) and read from YAML recipes. Unknown keys
are errors that name the file and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tinyvlm.errors import InputError, closest

T = TypeVar("T")


# --------------------------------------------------------------------------- model


@dataclass
class MoEConfig:
    """Sparse mixture-of-experts FFNs, for the language model or the vision encoder.

    Experts are SwiGLU FFNs; a linear router scores them in fp32 and each token goes to its
    top_k. LLaVA-MoD's student: 4 experts, top-2, every other layer, balance_coef 0.01.
    """

    experts: int = 4
    top_k: int = 2
    # Which blocks are MoE: "all", "every-other" (1, 3, 5, ...: the first block stays dense),
    # or an explicit list of block indices (negative counts from the end).
    layers: str | list[int] = "every-other"
    hidden_dim: int | None = None  # each expert's hidden width; None: the dense FFN's
    # Experts per MoE block when they differ (a pruned single-task model), aligned with
    # moe_layers(); empty: `experts` everywhere.
    layer_experts: list[int] = field(default_factory=list)
    shared_expert_dim: int = 0  # > 0: an always-on SwiGLU expert of this width beside them
    normalize_gates: bool = True  # renormalise the top_k probabilities to sum to 1
    # "dropless" runs every choice; "capacity" gives each expert ceil(capacity_factor *
    # tokens * top_k / experts) slots and drops the overflow (top-1 choices first, then
    # token order), as GShard and Switch do.
    routing: str = "dropless"
    capacity_factor: float = 1.5
    eval_capacity_factor: float | None = None  # None: the training capacity factor
    balance_coef: float = 0.01  # load-balancing loss E * sum_e f_e * P_e
    z_coef: float = 0.0  # router z-loss mean(logsumexp(logits)^2)
    jitter: float = 0.0  # training only: router input scaled by U(1 - jitter, 1 + jitter)
    # Task-conditioned routing (M3ViT): "none", "embedding" (the router sees the token
    # concatenated with a learned task embedding) or "multi_gate" (one router per task).
    task_routing: str = "none"
    num_tasks: int = 0
    task_dim: int = 16
    # Task-expert mutual information (Mod-Squad): its negative, weighted by this, joins the
    # auxiliary loss, so each task concentrates on a few experts while the balance loss keeps
    # all experts in use: the sparse per-task pathways that single-task pruning keeps.
    task_mi_coef: float = 0.0

    def check(self, depth: int, source: str | Path | None = None, key: str = "moe") -> None:
        """Every value in range, or one InputError naming the key."""
        problems = [
            (self.experts >= 1, "experts", "must be >= 1"),
            (1 <= self.top_k <= self.experts, "top_k", f"must lie in 1..experts ({self.experts})"),
            (self.routing in ("dropless", "capacity"), "routing", "must be dropless or capacity"),
            (self.capacity_factor > 0, "capacity_factor", "must be > 0"),
            (self.eval_capacity_factor is None or self.eval_capacity_factor > 0,
             "eval_capacity_factor", "must be > 0"),
            (0 <= self.jitter < 1, "jitter", "must lie in [0, 1)"),
            (self.task_routing in ("none", "embedding", "multi_gate"), "task_routing",
             "must be none, embedding or multi_gate"),
            (self.task_routing == "none" or self.num_tasks >= 1, "num_tasks",
             "must be >= 1 with task routing"),
            (all(n >= 1 for n in self.layer_experts), "layer_experts", "entries must be >= 1"),
            (self.hidden_dim is None or self.hidden_dim >= 1, "hidden_dim", "must be >= 1"),
        ]
        for ok, name, message in problems:
            if not ok:
                raise InputError(f"'{key}.{name}' {message}", source)
        try:
            self.experts_at(depth)
        except ValueError as e:
            raise InputError(f"'{key}': {e}", source) from None

    def moe_layers(self, depth: int) -> list[int]:
        """The block indices that are MoE, for a stack of `depth` blocks."""
        if self.layers == "all":
            return list(range(depth))
        if self.layers == "every-other":
            return list(range(1, depth, 2))
        if isinstance(self.layers, str):
            raise ValueError(f"moe.layers must be 'all', 'every-other' or a list of block "
                             f"indices, got {self.layers!r}")
        bad = [i for i in self.layers if not -depth <= i < depth]
        if bad:
            raise ValueError(f"moe.layers {bad} outside the {depth} blocks")
        return sorted({i % depth for i in self.layers})

    def experts_at(self, depth: int) -> dict[int, int]:
        """Block index -> number of experts, for every MoE block."""
        layers = self.moe_layers(depth)
        if self.layer_experts and len(self.layer_experts) != len(layers):
            raise ValueError(f"moe.layer_experts has {len(self.layer_experts)} entries for "
                             f"{len(layers)} MoE blocks")
        return dict(zip(layers, self.layer_experts or [self.experts] * len(layers), strict=True))


@dataclass
class VisionConfig:
    image_size: int = 64
    patch_size: int = 16
    channels: int = 3
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    position: str = "learned"  # "learned" or "sincos" (2-D sine-cosine, fixed)
    norm_eps: float = 1e-6
    dropout: float = 0.0
    # Layers (0-based; negative counts from the end) whose [CLS] attention is returned, so
    # token pruning can rank patches without a second pass.
    cls_attention_layers: list[int] = field(default_factory=lambda: [-1])
    moe: MoEConfig | None = None  # sparse FFNs (task-routed for M3ViT); None: dense

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


@dataclass
class ConnectorConfig:
    kind: str = "mlp"  # the projector family; later connectors register other kinds
    hidden_dim: int | None = None  # None: the language model's width


@dataclass
class LanguageConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer when the model is built
    dim: int = 192
    depth: int = 4
    heads: int = 6
    kv_heads: int = 2
    ffn_dim: int | None = None  # None: about 8/3 * dim, rounded up to a multiple of 32
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    tie_embeddings: bool = True
    moe: MoEConfig | None = None  # sparse FFNs (LLaVA-MoD's student); None: dense

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden_ffn_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        return -(-int(8 * self.dim / 3) // 32) * 32


@dataclass
class ChatTemplate:
    """Role markers and special tokens shared by training, evaluation and chat.

    A conversation renders as
    `<bos><|user|><image>...\\nquestion<|end|><|assistant|>answer<|end|><|user|>...`;
    each `<image>` expands to one token per visual feature.
    """

    bos: str = "<bos>"
    pad: str = "<pad>"
    unk: str = "<unk>"
    image: str = "<image>"
    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    end: str = "<|end|>"

    @property
    def special_tokens(self) -> list[str]:
        return [self.pad, self.unk, self.bos, self.image, self.user, self.assistant, self.end]


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    chat: ChatTemplate = field(default_factory=ChatTemplate)
    # Token ids of the chat template's special tokens, filled from the tokenizer.
    pad_token_id: int = 0
    bos_token_id: int = 2
    image_token_id: int = 3
    eos_token_id: int = 6


# --------------------------------------------------------------------------- data


@dataclass
class TokenizerConfig:
    kind: str = "wordlevel"  # "wordlevel" or "bpe"
    vocab_size: int = 2048  # upper bound; word-level vocabularies are usually smaller
    min_frequency: int = 1
    lowercase: bool = True


@dataclass
class DataConfig:
    # A directory with train.json / val.json / test.json (LLaVA format). When it holds no
    # dataset yet and `shapes` is set, ShapesWorld is generated there first.
    path: str = "data/shapes"
    # ShapesWorld generator settings (keys of tinyvlm.data.shapes.ShapesWorldConfig); None
    # for a dataset that must already exist.
    shapes: dict[str, Any] | None = field(default_factory=dict)
    train: str = "train.json"
    eval: list[str] = field(default_factory=lambda: ["test.json", "pope.json"])
    max_seq_len: int | None = None  # None: the language model's max_seq_len


# --------------------------------------------------------------------------- training


@dataclass
class DistillConfig:
    """Mimic distillation (objective `mimic`): the student matches a frozen teacher's
    next-token distributions; total loss = ce_weight * CE + kd_weight * KD
    (+ rdist_weight * RDist), MoE auxiliary losses added once by the loop."""

    teacher: str = ""  # a tinyvlm model directory
    teacher_dtype: str = "fp32"  # "fp32" or "bf16"
    # "forward_kl" (LLaVA-MoD), "reverse_kl", "js", "tv", "skew_forward_kl", "skew_reverse_kl"
    kind: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5  # mixing weight of "js"
    alpha: float = 0.1  # skew of the skew kinds
    tokens: str = "response"  # positions distilled: "response", "text" or "visual"
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    # Relation distillation (LLaVA-KD): self-similarity of visual-token hidden states.
    rdist_weight: float = 0.0
    rdist_kind: str = "mse"  # "mse", "l1", "kl" or "cosine"
    # Offline distillation: a directory written by `tinyvlm distill cache-teacher`; the
    # teacher's top-k logits are read from it instead of running the teacher.
    cache: str | None = None


@dataclass
class PreferenceConfig:
    """Preference distillation (objective `preference`): a DPO-family loss on chosen/rejected
    pairs against a frozen reference model (LLaVA-MoD stage 2)."""

    pairs: str | None = None  # a pairs JSONL, relative to data.path; None: the stage's `train`
    loss: str = "sigmoid"  # "sigmoid" (DPO), "robust", "ipo", "hinge" or "kto_pair"
    beta: float = 0.1
    label_smoothing: float = 0.0  # sigmoid and robust only
    # "teacher": the frozen teacher model (LLaVA-MoD); "initial": a frozen copy of the student
    # as the stage starts (plain DPO).
    reference: str = "teacher"
    teacher: str = ""  # a tinyvlm model directory (or "stage:NAME" in a recipe)
    teacher_dtype: str = "fp32"  # "fp32" or "bf16", for either reference
    sft_weight: float = 0.0  # > 0: add this times the cross-entropy on the chosen answers


@dataclass
class PairsConfig:
    """Preference-pair building (action `preference_build`): the stage's model samples
    answers to the prompts of the stage's data; pairs go to the stage's directory and a later
    stage reads them with `preference.pairs: "stage:NAME"`."""

    samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8
    max_prompts: int = 0  # 0: every conversation; otherwise a seeded random subset
    # Yes/no existence probes for hallucination pairs (relative to data.path), e.g. the
    # training file itself: its existence turns. Never the benchmark's own probes.
    probes: str | None = None
    max_probes: int = 0  # 0: all
    teacher: str = ""  # ranks samples of prompts without a ground truth ("stage:NAME")
    seed: int = 0


@dataclass
class StageConfig:
    """One stage of a recipe, run by the one training loop."""

    name: str = "sft"
    objective: str = "sft"  # a registered objective: "sft", "patch_labels", ...
    # Modules that receive gradients ("vision", "connector", "language"); the rest are frozen.
    trainable: list[str] = field(default_factory=lambda: ["vision", "connector", "language"])
    # Learning-rate multipliers per module, e.g. {vision: 0.1} for a gentler encoder.
    lr_scale: dict[str, float] = field(default_factory=dict)
    # Data of this stage: a training file (relative to data.path; default data.train) and,
    # for curricula, the question types to keep (from each turn's meta; empty: all).
    train: str | None = None
    question_types: list[str] = field(default_factory=list)
    steps: int = 100
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float | None = 1.0
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    distill: DistillConfig | None = None  # settings of the distillation objectives
    preference: PreferenceConfig | None = None  # settings of the `preference` objective
    # Which model of the recipe this stage works on: "model" (the recipe's `model`) or a
    # name under `models` (a teacher, a student, an ablation).
    model: str = "model"
    # "train" runs the one loop; "upcycle" turns the model's dense FFNs into `moe` experts.
    action: str = "train"
    moe: MoEConfig | None = None
    pairs: PairsConfig | None = None  # settings of action "preference_build"
    # Copy modules from a finished stage's model before training, e.g. {vision:
    # "stage:teacher-sft"}: a student that starts from the teacher's encoder.
    init: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalConfig:
    batch_size: int = 128
    max_new_tokens: int = 8
    # Report rows: row name -> "stage:NAME" (the model as that stage left it). Empty: one
    # row, the recipe's final model.
    models: dict[str, str] = field(default_factory=dict)


@dataclass
class Recipe:
    name: str = "demo"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # More models trained in the same run (a teacher and its students), by name.
    models: dict[str, ModelConfig] = field(default_factory=dict)
    stages: list[StageConfig] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    threads: int | None = None  # torch intra-op threads; None: torch's default


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain dicts/lists, ready for JSON or YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: Any, source: str | Path | None = None, key: str = "") -> T:
    """Build `cls` from a dict, checking keys and types; errors name `source` and the key path."""
    return _convert(cls, data, source, key or cls.__name__)


def _convert(tp: Any, value: Any, source: str | Path | None, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        for arg in args[:-1]:
            try:
                return _convert(arg, value, source, key)
            except InputError:
                continue
        return _convert(args[-1], value, source, key)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise InputError(f"'{key}' must be a mapping, got {type(value).__name__}", source)
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        kwargs = {}
        for name, item in value.items():
            if name not in names:
                raise InputError(f"unknown key '{key}.{name}'{closest(str(name), names)}", source)
            kwargs[name] = _convert(hints[name], item, source, f"{key}.{name}")
        return tp(**kwargs)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise InputError(f"'{key}' must be a list, got {value!r}", source)
        return [_convert(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise InputError(f"'{key}' must be a mapping, got {value!r}", source)
        return {
            _convert(key_tp, k, source, key): _convert(val_tp, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (
        tp is int and isinstance(value, bool)
    ):
        return value
    raise InputError(f"'{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}", source)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(
            f"malformed YAML: {problem}", path, None if line is None else line + 1
        ) from None


def load_recipe(path: str | Path) -> Recipe:
    recipe = from_dict(Recipe, load_yaml(path) or {}, source=path, key="recipe")
    if not recipe.stages:
        raise InputError("the recipe has no stages", path)
    if recipe.data.shapes is not None:
        from tinyvlm.data.shapes import ShapesWorldConfig  # checks the generator's keys

        ShapesWorldConfig.from_dict(recipe.data.shapes, source=path, key="recipe.data.shapes")
    check_recipe(recipe, path)
    return recipe


STAGE_ACTIONS = ("train", "upcycle", "preference_build")


def check_model(config: ModelConfig, source: str | Path | None = None, key: str = "model"
                ) -> None:
    """Values a type check cannot judge (MoE settings), as one InputError naming the key."""
    if config.vision.moe is not None:
        config.vision.moe.check(config.vision.depth, source, f"{key}.vision.moe")
    if config.language.moe is not None:
        config.language.moe.check(config.language.depth, source, f"{key}.language.moe")


MODEL_MODULES = ("vision", "connector", "language")
STAGE_SECTIONS = {"mimic": "distill", "preference": "preference"}


def check_recipe(recipe: Recipe, source: str | Path | None = None) -> None:
    """Cross-references a dict check cannot see: stage models, actions, stage references,
    the sections objectives need, and MoE settings; all before anything trains."""
    check_model(recipe.model, source, "recipe.model")
    for name, model in recipe.models.items():
        check_model(model, source, f"recipe.models.{name}")
    if recipe.stages and all(s.model != "model" for s in recipe.stages):
        raise InputError("no stage trains the recipe's `model` (the run's final model)", source)
    kinds: dict[str, str] = {}
    seen: list[str] = []
    for i, stage in enumerate(recipe.stages):
        key = f"recipe.stages[{i}]"
        if stage.name in seen:
            raise InputError(f"{key}: stage name '{stage.name}' is used twice", source)
        if stage.model != "model" and stage.model not in recipe.models:
            raise InputError(f"{key}.model: '{stage.model}' is neither 'model' nor a key of "
                             f"models{closest(stage.model, list(recipe.models))}", source)
        if stage.action not in STAGE_ACTIONS:
            raise InputError(f"{key}.action must be one of {', '.join(STAGE_ACTIONS)}, got "
                             f"'{stage.action}'", source)
        if stage.action == "upcycle" and stage.moe is None:
            raise InputError(f"{key}: action 'upcycle' needs a 'moe' section", source)
        if stage.action == "upcycle" and stage.moe is not None:
            depth = (recipe.model if stage.model == "model"
                     else recipe.models[stage.model]).language.depth
            stage.moe.check(depth, source, f"{key}.moe")
            if not stage.moe.normalize_gates or stage.moe.task_routing != "none":
                raise InputError(f"{key}.moe: upcycling needs normalize_gates: true and "
                                 "task_routing: none", source)
        section = STAGE_SECTIONS.get(stage.objective)
        if stage.action == "train" and section and getattr(stage, section) is None:
            raise InputError(f"{key}: objective '{stage.objective}' needs a '{section}' "
                             "section", source)
        for module in stage.init:
            if module not in MODEL_MODULES:
                raise InputError(f"{key}.init: unknown module '{module}'"
                                 f"{closest(module, MODEL_MODULES)}", source)
        if stage.action == "preference_build" and stage.pairs is None:
            raise InputError(f"{key}: action 'preference_build' needs a 'pairs' section", source)
        refs = {f"init.{k}": v for k, v in stage.init.items()}
        if stage.distill is not None and stage.distill.teacher.startswith("stage:"):
            refs["distill.teacher"] = stage.distill.teacher
        if stage.preference is not None and stage.preference.teacher.startswith("stage:"):
            refs["preference.teacher"] = stage.preference.teacher
        if stage.preference is not None and (stage.preference.pairs or "").startswith("stage:"):
            refs["preference.pairs"] = stage.preference.pairs or ""
        if stage.pairs is not None and stage.pairs.teacher.startswith("stage:"):
            refs["pairs.teacher"] = stage.pairs.teacher
        for where, ref in refs.items():
            _check_stage_ref(ref, seen, f"{key}.{where}", source)
            # Pairs come from a preference_build stage; models from the other stages.
            wants_pairs = where == "preference.pairs"
            if (kinds[ref.removeprefix("stage:")] == "preference_build") != wants_pairs:
                what = "a preference_build stage" if wants_pairs else "a stage with a model"
                raise InputError(f"{key}.{where}: '{ref}' must name {what}", source)
        seen.append(stage.name)
        kinds[stage.name] = stage.action
    for row, ref in recipe.eval.models.items():
        _check_stage_ref(ref, seen, f"recipe.eval.models.{row}", source)
        if kinds[ref.removeprefix("stage:")] == "preference_build":
            raise InputError(f"recipe.eval.models.{row}: '{ref}' must name a stage with a "
                             "model", source)


def _check_stage_ref(ref: str, earlier: list[str], key: str, source: str | Path | None) -> None:
    name = ref.removeprefix("stage:")
    if not ref.startswith("stage:") or name not in earlier:
        raise InputError(f"{key}: '{ref}' must be 'stage:NAME' naming an earlier stage"
                         f"{closest(name, earlier)}", source)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
