"""Multi-task vision models (M3ViT): accuracy per task, each task's expert pathway, and the
single-task model that keeps only that pathway."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from tinyvlm.config import Recipe, StageConfig, load_recipe
from tinyvlm.errors import InputError, closest
from tinyvlm.io import atomic_dir, read_json, write_json
from tinyvlm.models.context import ForwardContext
from tinyvlm.models.moe import RouterRecord
from tinyvlm.models.surgery import prune_to_task
from tinyvlm.models.vlm import TinyVLM, check_replaceable
from tinyvlm.rundir import RunDir
from tinyvlm.train.objectives import PatchBatch, TaskHeads, TrainData


@torch.no_grad()
def evaluate_task(model: TinyVLM, heads: TaskHeads, source: TrainData, task: int,
                  batch_size: int = 256, routed: bool = True) -> dict[str, Any]:
    """Accuracy of `task` over every item of `source`, and its expert load per MoE layer.

    routed=False: a single-task model, which routes without being given a task id.
    """
    model.eval()
    right = counted = 0
    load: dict[str, torch.Tensor] = {}
    for start in range(0, len(source.items), batch_size):
        batch: PatchBatch = source.collate(source.items[start : start + batch_size])
        ctx = ForwardContext()
        tasks = torch.full((batch.pixel_values.shape[0],), task, dtype=torch.long)
        logits = heads.task_logits(model, batch.pixel_values, tasks, ctx, routed)[task]
        r, c = heads.correct(logits, heads.targets(batch, task), heads.TASKS[task] == "count")
        right, counted = right + r, counted + c
        for rec in ctx.records:
            if isinstance(rec, RouterRecord):
                load[rec.layer] = load.get(rec.layer, 0) + rec.load
    return {"task": heads.TASKS[task], "accuracy": right / counted if counted else None,
            "n": counted, "load": {k: v.tolist() for k, v in load.items()}}


def pathway(load: dict[str, Sequence[int]], min_share: float = 0.0) -> dict[int, list[int]]:
    """Vision block -> experts a task uses: those that took more than `min_share` of the
    block's choices (0: every expert the task chose at all)."""
    out = {}
    for layer, counts in load.items():
        tower, index = layer.split(".")
        if tower != "vision":
            continue
        total = sum(counts) or 1
        out[int(index)] = [e for e, c in enumerate(counts) if c / total > min_share]
    return out


def vision_flops(model: TinyVLM, image_size: int, task: int | None = None) -> int:
    """FLOPs of one image through the encoder as executed (a routed layer counts only the
    experts it ran), measured with torch's FLOP counter."""
    pixels = torch.zeros(1, 3, image_size, image_size)
    ctx = ForwardContext(task_ids=None if task is None else torch.tensor([task]))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.vision(pixels, ctx)
    return int(counter.get_total_flops())


def load_heads(run_dir: str | Path, stage: StageConfig, model: TinyVLM) -> TaskHeads:
    """The task heads trained by `stage` of a run (kept in its final trainer state)."""
    run = RunDir(run_dir)
    if stage.steps not in run.steps(stage.name):
        raise InputError(f"stage '{stage.name}' has not finished", run_dir)
    heads = TaskHeads(model)
    state = torch.load(run.step_dir(stage.name, stage.steps) / "trainer.pt", weights_only=True)
    heads.load_state_dict(state["objective"])
    return heads.eval()


@dataclass
class TaskRun:
    """A finished run trained with `task_heads`: its model, heads, recipe and that stage."""

    model: TinyVLM
    heads: TaskHeads
    recipe: Recipe
    stage: StageConfig

    def data(self, split: str) -> TrainData:
        """The patch-label data of a ShapesWorld split, as the heads read it."""
        stage = dataclasses.replace(self.stage, train=f"{split}.json")
        return self.heads.data(self.model, self.recipe.data, stage)


def load_task_run(run_dir: str | Path) -> TaskRun:
    run = RunDir(run_dir)
    recipe = load_recipe(run.recipe)
    stages = [s for s in recipe.stages if s.objective == "task_heads"]
    if not stages:
        raise InputError("this run has no task_heads stage", run_dir)
    model = TinyVLM.from_pretrained(run.model)
    return TaskRun(model, load_heads(run_dir, stages[-1], model), recipe, stages[-1])


def task_id(name: str) -> int:
    if name not in TaskHeads.TASKS:
        raise InputError(f"unknown task '{name}'{closest(name, TaskHeads.TASKS)}; tasks: "
                         f"{', '.join(TaskHeads.TASKS)}")
    return TaskHeads.TASKS.index(name)


def save_single_task(model: TinyVLM, heads: TaskHeads, task: int, keep: dict[int, list[int]],
                     out_dir: str | Path) -> Path:
    """Prune `model` (in place) to `task`'s pathway and write it with its head:
    a model directory plus task_head.safetensors and task.json."""
    check_replaceable(Path(out_dir))
    prune_to_task(model, task, keep)
    name = heads.TASKS[task]
    head = heads.heads[name]
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()},
                  str(tmp / "task_head.safetensors"))
        write_json(tmp / "task.json", {"task": name, "task_id": task,
                                       "experts": {str(k): v for k, v in keep.items()}})
    return Path(out_dir)


def load_single_task(directory: str | Path) -> tuple[TinyVLM, TaskHeads, int]:
    """A model written by save_single_task, with heads whose task slot holds its head."""
    directory = Path(directory)
    meta = read_json(directory / "task.json")
    model = TinyVLM.from_pretrained(directory).eval()
    heads = TaskHeads(model)
    heads.heads[meta["task"]].load_state_dict(load_file(str(directory /
                                                            "task_head.safetensors")))
    return model, heads.eval(), int(meta["task_id"])
