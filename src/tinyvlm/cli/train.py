"""`tinyvlm train` and `tinyvlm demo`: run recipes."""

from __future__ import annotations

from pathlib import Path

import click

from tinyvlm.errors import InputError


@click.command()
@click.argument("recipe")
@click.option("--out", default=None, help="Run directory [default: runs/<recipe name>].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(recipe: str, out: str | None, resume: bool, quiet: bool) -> None:
    """Train the stages of a YAML RECIPE (a path or a built-in name).

    Under torchrun every process trains a data-parallel replica (DDP):
    torchrun --nproc_per_node 2 -m tinyvlm train RECIPE --out DIR.

    \b
    Example:
      tinyvlm train recipes/demo.yaml --out runs/mine
      tinyvlm train demo --out runs/mine --resume
    """
    from tinyvlm.train.distributed import launched
    from tinyvlm.train.pipeline import load_runnable_recipe, run_recipe

    if out == "":
        raise InputError("--out is empty")
    r = load_runnable_recipe(recipe)
    run_dir = Path(out or f"runs/{r.name}")
    with launched(r.parallel) as runtime:  # torchrun's environment, if any
        run_recipe(r, run_dir, resume=resume, progress=not quiet, runtime=runtime)
    if runtime.is_main:
        click.echo(f"model written to {run_dir / 'model'}")


@click.command()
@click.option("--out", default="runs/demo", show_default=True, help="Run directory.")
@click.option("--recipe", default="demo", show_default=True, help="Recipe path or name.")
@click.option("--resume", is_flag=True, help="Continue an interrupted demo in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out: str, recipe: str, resume: bool, quiet: bool) -> None:
    """Generate ShapesWorld, train a VLM, evaluate it on the test split, print the table.

    Writes results.json, report.md, capabilities.png, training.png and model/ into --out.

    \b
    Example:
      tinyvlm demo --out runs/demo
    """
    from tinyvlm.demo import run_demo
    from tinyvlm.eval.report import format_table

    done = run_demo(recipe, out, resume=resume, progress=not quiet)
    click.echo(format_table(done.results))
    click.echo(f"\n{done.minutes:.1f} min end to end. In {done.run_dir}: report.md, "
               "results.json, capabilities.png, training.png, predictions/, model/")
