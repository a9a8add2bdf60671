"""Objectives turn a batch into a loss; each stage of a recipe names one.

The registry is filled here from the modules it imports: an objective module defines its
class, this file lists it.
"""

from __future__ import annotations

from tinyvlm.config import StageConfig
from tinyvlm.errors import InputError, closest
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.objectives.base import (
    DataSource,
    LossOutput,
    Objective,
    TrainData,
    token_cross_entropy,
)
from tinyvlm.train.objectives.mimic import CachedBatch, Mimic, MimicBatch
from tinyvlm.train.objectives.patches import PatchBatch, PatchLabels, PatchWords, TaskHeads
from tinyvlm.train.objectives.preference import PairBatch, Preference, initial_reference
from tinyvlm.train.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (SFT, PatchLabels, PatchWords, TaskHeads, Mimic, Preference)
}


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective '{name}'{closest(name, OBJECTIVES)}; "
                         f"known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def build_objective(name: str, model: TinyVLM, stage: StageConfig | None = None) -> Objective:
    return objective_class(name)(model, stage)


__all__ = [
    "OBJECTIVES",
    "SFT",
    "CachedBatch",
    "DataSource",
    "LossOutput",
    "Mimic",
    "MimicBatch",
    "Objective",
    "PairBatch",
    "PatchBatch",
    "PatchLabels",
    "PatchWords",
    "Preference",
    "TaskHeads",
    "TrainData",
    "build_objective",
    "initial_reference",
    "objective_class",
    "token_cross_entropy",
]
