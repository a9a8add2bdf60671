"""M3ViT on ShapesWorld: a task-routed MoE ViT against dense multi-task ViTs.

Trains recipes/m3vit.yaml (task-routed MoE) and recipes/m3vit_dense.yaml at two FFN widths
(skipping runs already finished), then for every task reports test accuracy, the experts the
task routes to (found on the validation split), the single-task model that keeps only them
(its accuracy, stored parameters and FLOPs per image as executed), and the dense models'
figures. Prints JSON; --markdown prints the table for docs/m3vit.md.

    python benchmarks/m3vit.py --out runs/m3vit [--steps 600] [--markdown]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tinyvlm.config import Recipe, load_recipe
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.m3vit import (
    evaluate_task,
    load_heads,
    load_single_task,
    pathway,
    save_single_task,
    vision_flops,
)
from tinyvlm.train.objectives import TaskHeads
from tinyvlm.train.pipeline import run_recipe

ROOT = Path(__file__).resolve().parents[1]


def split_source(model: TinyVLM, recipe: Recipe, split: str) -> Any:
    stage = dataclasses.replace(recipe.stages[-1], train=f"{split}.json")
    return TaskHeads(model).data(model, recipe.data, stage)


def vision_params(model: TinyVLM) -> int:
    return sum(p.numel() for p in model.vision.parameters())


def vision_megabytes(model: TinyVLM) -> float:
    """The encoder's weights in memory (their own dtype), MB."""
    return sum(p.numel() * p.element_size() for p in model.vision.parameters()) / 2**20


def train(recipe: Recipe, out: Path) -> tuple[TinyVLM, TaskHeads, float]:
    start = time.perf_counter()
    run_recipe(recipe, out, resume=True, progress=False)
    model = TinyVLM.from_pretrained(out / "model").eval()
    return model, load_heads(out, recipe.stages[-1], model), time.perf_counter() - start


def study(recipe: Recipe, out: Path, min_share: float) -> dict[str, Any]:
    model, heads, seconds = train(recipe, out)
    test, val = split_source(model, recipe, "test"), split_source(model, recipe, "val")
    size = recipe.model.vision.image_size
    sparse = recipe.model.vision.moe is not None
    row: dict[str, Any] = {"model": recipe.name, "train_seconds": round(seconds, 1),
                           "vision_params": vision_params(model),
                           "vision_mb": round(vision_megabytes(model), 2), "tasks": {}}
    for task, name in enumerate(TaskHeads.TASKS):
        result = evaluate_task(model, heads, test, task)
        entry = {"accuracy": result["accuracy"], "n": result["n"],
                 "flops_per_image": vision_flops(model, size, task if sparse else None)}
        if sparse:
            keep = pathway(evaluate_task(model, heads, val, task)["load"], min_share)
            single_dir = save_single_task(copy.deepcopy(model), heads, task, keep,
                                          out / "single_task" / name)
            single, single_heads, _ = load_single_task(single_dir)
            pruned = evaluate_task(single, single_heads, test, task, routed=False)
            entry.update({
                "experts_kept": {str(k): len(v) for k, v in keep.items()},
                "single_task_accuracy": pruned["accuracy"],
                "single_task_vision_params": vision_params(single),
                "single_task_vision_mb": round(vision_megabytes(single), 2),
                "single_task_flops_per_image": vision_flops(single, size),
            })
        row["tasks"][name] = entry
    return row


def markdown(rows: list[dict[str, Any]], experts: int | None = None) -> str:
    lines = ["| model | task | accuracy | vision params | weights MB | MFLOPs / image | "
             f"experts kept per MoE block{f' (of {experts})' if experts else ''} | "
             "single-task accuracy | single-task params | single-task MB | "
             "single-task MFLOPs |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        for name, t in row["tasks"].items():
            kept = ", ".join(f"{v}" for v in t.get("experts_kept", {}).values()) or "-"
            single = "single_task_accuracy" in t
            cells = ([f"{100 * t['single_task_accuracy']:.1f}%",
                      f"{t['single_task_vision_params'] / 1e3:.0f}K",
                      f"{t['single_task_vision_mb']:.2f}",
                      f"{t['single_task_flops_per_image'] / 1e6:.1f}"] if single
                     else ["-"] * 4)
            lines.append(f"| {row['model']} | {name} | {100 * t['accuracy']:.1f}% | "
                         f"{row['vision_params'] / 1e3:.0f}K | {row['vision_mb']:.2f} | "
                         f"{t['flops_per_image'] / 1e6:.1f} | {kept} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/m3vit")
    ap.add_argument("--steps", type=int, default=None, help="override every recipe's steps")
    ap.add_argument("--min-share", type=float, default=0.01,
                    help="an expert stays in a task's pathway if it takes more than this "
                         "share of the task's choices in a block (validation split)")
    ap.add_argument("--dense-ratios", default="2,4",
                    help="mlp_ratio of the dense baselines (comma separated)")
    ap.add_argument("--shared-gate", action="store_true",
                    help="also the MoE ViT with one shared, task-embedding gate and no "
                         "mutual-information loss (the earlier recipe)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    recipes = [load_recipe(ROOT / "recipes" / "m3vit.yaml")]
    if args.shared_gate:
        shared = load_recipe(ROOT / "recipes" / "m3vit.yaml")
        moe = shared.model.vision.moe
        assert moe is not None
        moe.task_routing, moe.task_mi_coef = "embedding", 0.0
        shared.name = "m3vit-shared-gate"
        recipes.append(shared)
    for ratio in (float(r) for r in args.dense_ratios.split(",")):
        dense = load_recipe(ROOT / "recipes" / "m3vit_dense.yaml")
        dense.model.vision.mlp_ratio = ratio
        dense.name = f"dense-mlp{ratio:g}"
        recipes.append(dense)
    rows = []
    for recipe in recipes:
        if args.steps:
            for stage in recipe.stages:
                stage.steps = args.steps
        rows.append(study(recipe, out / recipe.name, args.min_share))
        print(f"{recipe.name}: done", file=sys.stderr, flush=True)
    experts = recipes[0].model.vision.moe.experts if recipes[0].model.vision.moe else None
    print(markdown(rows, experts) if args.markdown else json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
