"""Stage hyperparameters: the training loop's settings and each stage kind's own section.

A stage's `action` says what it does: "train" runs the one training loop with `objective`;
"upcycle" and "build_pairs" are actions on its model. The settings of a kind live in the
section named after it: `mimic:` for the mimic objective, `preference:` for the preference
objective, `upcycle:` and `build_pairs:` for those actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tinyvlm.config.model import MODEL_MODULES, MoEConfig


@dataclass
class MimicConfig:
    """Mimic distillation (objective `mimic`): the student matches a frozen teacher's
    next-token distributions; total loss = ce_weight * CE + kd_weight * KD
    (+ rdist_weight * RDist), MoE auxiliary losses added once by the loop."""

    # A model directory: tinyvlm's, a Hugging Face one, or "stage:NAME" in a recipe.
    teacher: str = ""
    teacher_dtype: str = "fp32"  # "fp32" or "bf16"
    # Who runs the teacher: "auto" (tinyvlm for its own and LLaVA directories, transformers
    # for other HF models), "tinyvlm" or "transformers" (any AutoModelForImageTextToText).
    teacher_backend: str = "auto"
    # "forward_kl" (LLaVA-MoD), "reverse_kl", "js", "tv", "skew_forward_kl", "skew_reverse_kl",
    # or "uld" (Universal Logit Distillation: teacher and student may have different
    # tokenizers; see train/losses.uld_loss)
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
    # Also distil on the questions about the unlabelled images (data.labelled_fraction < 1):
    # the teacher answers them (greedy) and its distribution on those answers is the only
    # target there (no CE), LLaVA-MoD's "mimic the teacher" in its pure form.
    unlabelled: bool = False
    # Distil only where the teacher is right (labelled answers whose first token is the
    # teacher's argmax); the CE still covers every labelled answer.
    only_correct: bool = False
    # Offline distillation: a directory written by `tinyvlm distill cache-teacher`; the
    # teacher's top-k logits are read from it instead of running the teacher.
    cache: str | None = None


DistillConfig = MimicConfig  # the earlier name


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
class BuildPairsConfig:
    """Preference-pair building (action `build_pairs`): the stage's model samples answers to
    the prompts of the stage's data; pairs go to the stage's directory and a later stage reads
    them with `preference.pairs: "stage:NAME"`."""

    samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8
    max_prompts: int = 0  # 0: every conversation; otherwise a seeded random subset
    # Yes/no existence probes for hallucination pairs (relative to data.path), e.g. the
    # training file itself: its existence turns. Never the benchmark's own probes.
    probes: str | None = None
    max_probes: int = 0  # 0: all
    # Keep as many yes-over-no as no-over-yes pairs (a seeded subset of the larger side):
    # lopsided pairs teach the answer prior, not the grounding.
    balance_yes_no: bool = False
    teacher: str = ""  # ranks samples of prompts without a ground truth ("stage:NAME")
    seed: int = 0


PairsConfig = BuildPairsConfig  # the earlier name


@dataclass
class StageConfig:
    """One stage of a recipe: the training loop's settings plus its kind's section."""

    name: str = "sft"
    objective: str = "sft"  # a registered objective: "sft", "patch_labels", ...
    # Modules that receive gradients ("vision", "connector", "language"); the rest are frozen.
    trainable: list[str] = field(default_factory=lambda: list(MODEL_MODULES))
    # Learning-rate multipliers per module, e.g. {vision: 0.1} for a gentler encoder.
    lr_scale: dict[str, float] = field(default_factory=dict)
    # Data of this stage: a training file (relative to data.path; default data.train) and,
    # for curricula, the question types to keep (from each turn's meta; empty: all).
    train: str | None = None
    question_types: list[str] = field(default_factory=list)
    # Which training images: "labelled" (data.labelled_fraction of them, seeded; all of them
    # at the default 1.0) or "all" (a teacher trained on the full set, an encoder's
    # pretraining).
    images: str = "labelled"
    steps: int = 100
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float | None = 1.0
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "auto" (bf16 where native)
    # A step whose loss or gradient is NaN or inf: "stop" the stage naming the step (the
    # last checkpoint stays the result), or "skip" it (no update) and count it.
    on_nonfinite: str = "stop"
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    # Which model of the recipe this stage works on: "model" (the recipe's `model`) or a
    # name under `models` (a teacher, a student, an ablation).
    model: str = "model"
    # "train" runs the one loop; "upcycle" turns the model's dense FFNs into experts;
    # "build_pairs" samples preference pairs from the model.
    action: str = "train"
    mimic: MimicConfig | None = None  # settings of the `mimic` objective
    preference: PreferenceConfig | None = None  # settings of the `preference` objective
    upcycle: MoEConfig | None = None  # settings of action `upcycle`: the MoE it makes
    build_pairs: BuildPairsConfig | None = None  # settings of action `build_pairs`
    # Copy modules from a finished stage's model before training, e.g. {vision:
    # "stage:teacher-sft"}: a student that starts from the teacher's encoder.
    init: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """What the stage is: its action, or for training stages its objective."""
        return self.objective if self.action == "train" else self.action


@dataclass
class EvalConfig:
    batch_size: int = 128
    max_new_tokens: int = 8
    # Report rows: row name -> "stage:NAME" (the model as that stage left it). Empty: one
    # row, the recipe's final model.
    models: dict[str, str] = field(default_factory=dict)
    # Training-free variants: row name -> model-config keys changed for that row, e.g.
    # {connector: {kind: prune, prune: {keep: 0.25}}} or {language: {fastv: {layer: 2}}};
    # the row's weights are its stage's model's, unchanged (the shapes must stay).
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
