"""The demo: a recipe trained end to end on ShapesWorld, its models evaluated on the held-out
split beside the majority baseline, the report and the training curves written; the one
place where training and evaluation meet."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyvlm.eval.harness import evaluate_models
from tinyvlm.train.curves import plot_training
from tinyvlm.train.pipeline import load_runnable_recipe, report_models, run_recipe


@dataclass
class DemoResult:
    results: dict[str, Any]  # results.json
    run_dir: Path
    minutes: float  # end to end


def run_demo(recipe: str | Path = "demo", out: str | Path = "runs/demo", resume: bool = False,
             progress: bool = True) -> DemoResult:
    """Train `recipe` (a path or a built-in name) into `out`, keeping its data there too
    unless the recipe names an absolute data path, then evaluate and report."""
    tick = time.perf_counter()
    r = load_runnable_recipe(recipe)
    run_dir = Path(out)
    if not Path(r.data.path).is_absolute():
        r.data.path = str(run_dir / "data")  # the demo keeps everything under --out
    model = run_recipe(r, run_dir, resume=resume, progress=progress)
    data_dir = Path(r.data.path)
    results = evaluate_models(report_models(r, run_dir, model),
                              [data_dir / f for f in r.data.eval], run_dir,
                              data_dir / r.data.train, r.eval.batch_size, r.eval.max_new_tokens,
                              progress=progress)
    plot_training(run_dir / "metrics.jsonl", run_dir / "training.png")
    return DemoResult(results, run_dir, (time.perf_counter() - tick) / 60)
