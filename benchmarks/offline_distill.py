"""Offline vs online mimic distillation: the same stage run twice from the same student,
once running the teacher at every step, once reading its top-k logits from a cache.

Uses a finished llava-mod run (its teacher and its aligned student). Prints JSON: the time to
build the cache, each stage's training time, the speedup of the mimic stage, and the test
accuracy of both students.

    python benchmarks/offline_distill.py --run runs/llava-mod [--steps 600] [--top-k 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from tinyvlm.config import load_recipe
from tinyvlm.eval.harness import evaluate
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.loop import train_stage
from tinyvlm.train.objectives import build_objective
from tinyvlm.train.pipeline import resolve_stage_ref
from tinyvlm.train.teacher_cache import cache_teacher


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/llava-mod")
    ap.add_argument("--stage", default="mimic-dense")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    recipe = load_recipe(run / "recipe.yaml")
    stage = next(s for s in recipe.stages if s.name == args.stage)
    assert stage.mimic is not None
    # A top-k cache holds the teacher's logits on the labelled conversations: both runs
    # distil those alone (no unlabelled questions), so they compare the same thing.
    stage = dataclasses.replace(stage, mimic=dataclasses.replace(stage.mimic, unlabelled=False))
    assert stage.mimic is not None
    teacher = resolve_stage_ref(stage.mimic.teacher, recipe, run)
    start_from = resolve_stage_ref("stage:student-align", recipe, run)
    steps = args.steps or stage.steps
    out = run / "offline-vs-online"
    test = Path(recipe.data.path) / "test.json"
    result: dict[str, object] = {"steps": steps, "top_k": args.top_k,
                                 "threads": torch.get_num_threads()}

    tick = time.perf_counter()
    cache = cache_teacher(teacher, TinyVLM.from_pretrained(start_from), recipe.data, stage,
                          out / "cache", top_k=args.top_k, progress=False)
    result["cache_seconds"] = round(time.perf_counter() - tick, 1)
    result["cache_mb"] = round(sum(p.stat().st_size for p in cache.iterdir()) / 2**20, 1)

    for mode in ("online", "offline"):
        mimic = dataclasses.replace(stage.mimic, teacher=str(teacher),
                                    cache=str(cache) if mode == "offline" else None)
        st = dataclasses.replace(stage, name=f"{stage.name}-{mode}", steps=steps,
                                 mimic=mimic, checkpoint_every=0)
        model = TinyVLM.from_pretrained(start_from)
        objective = build_objective("mimic", model, st)
        source = objective.data(model, recipe.data, st)
        tick = time.perf_counter()
        train_stage(model, st, objective, source, out / mode, progress=False)
        result[f"{mode}_train_seconds"] = round(time.perf_counter() - tick, 1)
        summary, _ = evaluate(model.eval(), [test], out / mode, mode,
                              recipe.eval.batch_size, recipe.eval.max_new_tokens,
                              progress=False)
        result[f"{mode}_accuracy"] = summary["accuracy"]
    result["speedup"] = round(float(result["online_train_seconds"])  # type: ignore[arg-type]
                              / float(result["offline_train_seconds"]), 2)  # type: ignore[arg-type]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
