"""`tinyvlm tasks`: multi-task vision models with task-routed experts (M3ViT)."""

from __future__ import annotations

import json

import click

from tinyvlm.errors import InputError


@click.group()
def tasks() -> None:
    """Multi-task vision models with task-routed experts (M3ViT)."""


@tasks.command("eval")
@click.argument("run_dir")
@click.option("--split", default="test", show_default=True, help="ShapesWorld split.")
def tasks_eval(run_dir: str, split: str) -> None:
    """Accuracy and expert load of every task of a run trained with `task_heads` (JSON).

    \b
    Example:
      tinyvlm train m3vit --out runs/m3vit && tinyvlm tasks eval runs/m3vit
    """
    from tinyvlm.train.m3vit import evaluate_task, load_task_run

    run = load_task_run(run_dir)
    source = run.data(split)
    results = [evaluate_task(run.model, run.heads, source, t)
               for t in range(len(run.heads.TASKS))]
    click.echo(json.dumps(results, indent=1))


@tasks.command("prune")
@click.argument("run_dir")
@click.option("--task", "task_name", required=True, help="count, shape, colour or word.")
@click.option("--out", required=True, help="Directory of the single-task model.")
@click.option("--min-share", default=0.01, show_default=True,
              help="Keep an expert if it takes more than this share of the task's choices "
                   "in a block (measured on the validation split).")
def tasks_prune(run_dir: str, task_name: str, out: str, min_share: float) -> None:
    """Keep one task's routing and only the experts it uses; save that single-task model.

    \b
    Example:
      tinyvlm tasks prune runs/m3vit --task colour --out runs/m3vit-colour
    """
    from tinyvlm.train.m3vit import evaluate_task, load_task_run, pathway, save_single_task, task_id

    run = load_task_run(run_dir)
    task = task_id(task_name)
    keep = pathway(evaluate_task(run.model, run.heads, run.data("val"), task)["load"], min_share)
    try:
        save_single_task(run.model, run.heads, task, keep, out)
    except ValueError as e:
        raise InputError(str(e), run_dir) from None
    kept = ", ".join(f"block {k}: {len(v)}" for k, v in keep.items())
    click.echo(f"{task_name}: kept experts ({kept}); written to {out}")
