"""The `tinyvlm` command line. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tinyvlm.errors import InputError

if TYPE_CHECKING:
    from tinyvlm.models.vlm import TinyVLM

RECIPES = Path(__file__).parent / "recipes"


def resolve_recipe(name: str) -> Path:
    """A recipe file path, or the name of a built-in recipe (demo, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = RECIPES / f"{name.replace('-', '_')}.yaml"
    if builtin.is_file():
        return builtin
    known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    raise InputError(f"no recipe file or built-in recipe '{name}' (built-in: {', '.join(known)})")


def load_model(path: str) -> TinyVLM:
    from tinyvlm.models.vlm import TinyVLM  # imported here: torch loads slowly, --help should not

    return TinyVLM.from_pretrained(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinyvlm")
def cli() -> None:
    """tinyvlm: small vision-language models that stay good.

    \b
    Start with:  tinyvlm demo
    Then:        tinyvlm info runs/demo/model
                 tinyvlm generate runs/demo/model --image IMG --prompt "how many shapes are there?"
    """


# ----------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Make datasets."""


@data.command("shapes")
@click.option("--out", "out", default="data/shapes", show_default=True, help="Output directory.")
@click.option("--num-train", default=3000, show_default=True, help="Training images.")
@click.option("--num-val", default=200, show_default=True, help="Validation images.")
@click.option("--num-test", default=500, show_default=True, help="Test images.")
@click.option("--pope-images", default=200, show_default=True, help="Test images with probes.")
@click.option("--image-size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Everything follows from it.")
def data_shapes(out: str, num_train: int, num_val: int, num_test: int, pope_images: int,
                image_size: int, seed: int) -> None:
    """Generate ShapesWorld: images, LLaVA conversation JSON, POPE probes.

    \b
    Example:
      tinyvlm data shapes --out data/shapes --num-train 3000 --seed 0
    """
    from tinyvlm.data import shapes

    config = shapes.ShapesWorldConfig(num_train=num_train, num_val=num_val, num_test=num_test,
                                      pope_images=pope_images, image_size=image_size, seed=seed)
    manifest = shapes.write_dataset(out, config)
    click.echo(json.dumps(manifest.get("counts", {}), indent=2))


# ----------------------------------------------------------------------------- train


@cli.command()
@click.argument("recipe")
@click.option("--out", default=None, help="Run directory [default: runs/<recipe name>].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(recipe: str, out: str | None, resume: bool, quiet: bool) -> None:
    """Train the stages of a YAML RECIPE (a path or a built-in name).

    \b
    Example:
      tinyvlm train recipes/demo.yaml --out runs/mine
      tinyvlm train demo --out runs/mine --resume
    """
    from tinyvlm.config import load_recipe
    from tinyvlm.train.pipeline import run_recipe

    r = load_recipe(resolve_recipe(recipe))
    run_dir = Path(out or f"runs/{r.name}")
    run_recipe(r, run_dir, resume=resume, progress=not quiet)
    click.echo(f"model written to {run_dir / 'model'}")


# ----------------------------------------------------------------------------- eval


@cli.command("eval")
@click.argument("model")
@click.argument("data_files", nargs=-1, required=True)
@click.option("--out", default="runs/eval", show_default=True, help="Output directory.")
@click.option("--name", default=None, help="Row name in the report [default: model dir name].")
@click.option("--train", "train_file", default=None,
              help="Training file for the majority-answer baseline "
                   "[default: train.json beside the first data file, if any].")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--max-new-tokens", default=8, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(model: str, data_files: tuple[str, ...], out: str, name: str | None,
             train_file: str | None, batch_size: int, max_new_tokens: int, quiet: bool) -> None:
    """Evaluate MODEL on DATA_FILES (LLaVA JSON): predictions, results.json, report, chart.

    \b
    Example:
      tinyvlm eval runs/demo/model data/shapes/test.json data/shapes/pope.json --out runs/eval
    """
    from tinyvlm.eval.run import evaluate_models

    train_path = Path(train_file) if train_file else Path(data_files[0]).parent / "train.json"
    results = evaluate_models({name or Path(model).name: load_model(model)},
                              [Path(f) for f in data_files], Path(out),
                              train_path if train_path.is_file() else None,
                              batch_size, max_new_tokens, progress=not quiet)
    from tinyvlm.eval.report import format_table

    click.echo(format_table(results))
    click.echo(f"\nreport: {Path(out) / 'report.md'}")


# ----------------------------------------------------------------------------- generate


@cli.command()
@click.argument("model")
@click.option("--image", "images", multiple=True, help="Image file (repeat for several).")
@click.option("--prompt", required=True, help="The question; '<image>' marks where images go.")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 decodes greedily.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
def generate(model: str, images: tuple[str, ...], prompt: str, max_new_tokens: int,
             temperature: float, top_p: float, seed: int) -> None:
    """Answer one prompt about one or more images.

    \b
    Example:
      tinyvlm generate runs/demo/model --image data/shapes/images/test/000001.png \\
          --prompt "how many shapes are there?"
    """
    import torch

    from tinyvlm.data.collate import PromptCollator
    from tinyvlm.data.formats import Conversation, ImageStore

    m = load_model(model)
    placeholders = prompt.count("<image>")
    if images and placeholders == 0:
        prompt = "<image>\n" * len(images) + prompt
    elif placeholders != len(images):
        raise InputError(f"the prompt has {placeholders} <image> placeholders for "
                         f"{len(images)} --image files")
    conv = Conversation("cli", [Path(p) for p in images], [(prompt, "")])
    batch = PromptCollator(m.tokenizer, ImageStore(m.config.vision.image_size),
                           m.image_tokens)([conv])
    g = torch.Generator().manual_seed(seed)
    new = m.generate(batch.input_ids, batch.attention_mask, batch.pixel_values,
                     max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                     generator=g)[0].tolist()
    click.echo(m.tokenizer.decode_answer(new))


# ----------------------------------------------------------------------------- info


def parse_layers(value: str) -> str | list[int]:
    """'all', 'every-other' or a comma-separated list of block indices."""
    if value in ("all", "every-other"):
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise InputError(f"--layers must be 'all', 'every-other' or block indices like 1,3; "
                         f"got {value!r}") from None


@cli.command()
@click.argument("model_dir")
@click.argument("out_dir")
@click.option("--experts", default=4, show_default=True, help="Experts per MoE layer.")
@click.option("--top-k", default=2, show_default=True, help="Experts each token runs.")
@click.option("--layers", default="every-other", show_default=True,
              help="all, every-other, or block indices like 1,3.")
@click.option("--capacity-factor", type=float, default=None,
              help="Drop choices beyond this capacity [default: dropless].")
@click.option("--balance-coef", default=0.01, show_default=True,
              help="Weight of the load-balancing loss.")
@click.option("--z-coef", default=0.0, show_default=True, help="Weight of the router z-loss.")
def upcycle(model_dir: str, out_dir: str, experts: int, top_k: int, layers: str,
            capacity_factor: float | None, balance_coef: float, z_coef: float) -> None:
    """Turn a dense model into a sparse one whose experts start as copies of the dense FFN.

    At initialisation the sparse model computes exactly what the dense one did; training
    (e.g. mimic distillation) then moves the experts apart.

    \b
    Example:
      tinyvlm upcycle runs/demo/model runs/moe/model --experts 4 --top-k 2 --layers every-other
    """
    from tinyvlm.config import MoEConfig
    from tinyvlm.models.surgery import upcycle as upcycle_model

    moe = MoEConfig(experts=experts, top_k=top_k, layers=parse_layers(layers),
                    routing="dropless" if capacity_factor is None else "capacity",
                    capacity_factor=capacity_factor or 1.5, balance_coef=balance_coef,
                    z_coef=z_coef)
    model = load_model(model_dir)
    try:
        upcycle_model(model, moe)
    except ValueError as e:
        raise InputError(str(e), model_dir) from None
    model.save_pretrained(out_dir)
    lang = model.config.language
    click.echo(f"{len(moe.moe_layers(lang.depth))} of {lang.depth} language blocks now have "
               f"{experts} experts (top-{top_k}); written to {out_dir}")


@cli.group()
def tasks() -> None:
    """Multi-task vision models with task-routed experts (M3ViT)."""


def _task_run(run_dir: str) -> tuple[TinyVLM, Any, Any]:
    from tinyvlm.config import load_recipe
    from tinyvlm.eval.tasks import load_heads

    recipe = load_recipe(Path(run_dir) / "recipe.yaml")
    model = load_model(str(Path(run_dir) / "model"))
    return model, load_heads(run_dir, recipe.stages[-1], model), recipe


def _task_id(name: str) -> int:
    from tinyvlm.errors import closest
    from tinyvlm.train.objectives import TaskHeads

    if name not in TaskHeads.TASKS:
        raise InputError(f"unknown task '{name}'{closest(name, TaskHeads.TASKS)}; tasks: "
                         f"{', '.join(TaskHeads.TASKS)}")
    return TaskHeads.TASKS.index(name)


@tasks.command("eval")
@click.argument("run_dir")
@click.option("--split", default="test", show_default=True, help="ShapesWorld split.")
def tasks_eval(run_dir: str, split: str) -> None:
    """Accuracy and expert load of every task of a run trained with `task_heads` (JSON).

    \b
    Example:
      tinyvlm train m3vit --out runs/m3vit && tinyvlm tasks eval runs/m3vit
    """
    import dataclasses

    from tinyvlm.eval.tasks import evaluate_task

    model, heads, recipe = _task_run(run_dir)
    stage = dataclasses.replace(recipe.stages[-1], train=f"{split}.json")
    source = heads.data(model, recipe.data, stage)
    results = [evaluate_task(model, heads, source, t) for t in range(len(heads.TASKS))]
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
    import dataclasses

    from tinyvlm.eval.tasks import evaluate_task, pathway, save_single_task

    model, heads, recipe = _task_run(run_dir)
    task = _task_id(task_name)
    val = heads.data(model, recipe.data, dataclasses.replace(recipe.stages[-1],
                                                             train="val.json"))
    keep = pathway(evaluate_task(model, heads, val, task)["load"], min_share)
    try:
        save_single_task(model, heads, task, keep, out)
    except ValueError as e:
        raise InputError(str(e), run_dir) from None
    kept = ", ".join(f"block {k}: {len(v)}" for k, v in keep.items())
    click.echo(f"{task_name}: kept experts ({kept}); written to {out}")


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--prompt-len", type=click.IntRange(min=1), default=None,
              help="Prompt tokens for the FLOP figures [default: one image + 32].")
def info(model: str, as_json: bool, prompt_len: int | None) -> None:
    """Parameters (total and activated per token), FLOPs per token and per image, and the
    configuration of MODEL (a model directory).

    \b
    Example:
      tinyvlm info runs/demo/model
    """
    from tinyvlm.config import to_dict
    from tinyvlm.eval.efficiency import efficiency

    m = load_model(model)
    counts = {name: sum(p.numel() for p in getattr(m, name).parameters())
              for name in ("vision", "connector", "language")}
    # Activated counts and FLOPs come from the config (eval/efficiency.py documents the rules).
    acct = efficiency(m.config, prompt_len)
    report = {"total_params": m.num_parameters(), "activated_params": acct["activated_params"],
              "params": counts, "image_tokens": m.image_tokens, "efficiency": acct,
              "config": to_dict(m.config)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{model}: {report['total_params']:,} parameters "
               f"({report['activated_params']:,} activated per token)")
    for name, n in counts.items():
        click.echo(f"  {name:<10} {n:>12,}  ({acct['params'][name]['activated']:,} activated)")
    click.echo(f"  image tokens per image: {m.image_tokens}")
    click.echo(f"  FLOPs per token: prefill {acct['prefill_flops_per_token']:,.0f} "
               f"(prompt of {acct['prompt_tokens']} tokens), decode "
               f"{acct['decode_flops_per_token']:,} (context {acct['decode_context']})")
    click.echo(f"  FLOPs per image: vision {acct['vision_flops_per_image']:,}, connector "
               f"{acct['connector_flops_per_image']:,}")
    click.echo(f"  KV cache: {acct['kv_cache_bytes']:,} bytes for {acct['kv_cache_tokens']} "
               f"tokens ({acct['kv_cache_dtype']})")
    click.echo(json.dumps(report["config"], indent=2))


# ----------------------------------------------------------------------------- demo


@cli.command()
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
    from tinyvlm.config import load_recipe
    from tinyvlm.eval.report import format_table
    from tinyvlm.eval.run import evaluate_models
    from tinyvlm.train.curves import plot_training
    from tinyvlm.train.pipeline import run_recipe

    tick = time.perf_counter()
    r = load_recipe(resolve_recipe(recipe))
    run_dir = Path(out)
    if not Path(r.data.path).is_absolute():
        r.data.path = str(run_dir / "data")  # the demo keeps everything under --out
    model = run_recipe(r, run_dir, resume=resume, progress=not quiet)
    data_dir = Path(r.data.path)
    results = evaluate_models({r.name: model}, [data_dir / f for f in r.data.eval], run_dir,
                              data_dir / r.data.train, r.eval.batch_size, r.eval.max_new_tokens,
                              progress=not quiet)
    plot_training(run_dir / "metrics.jsonl", run_dir / "training.png")
    minutes = (time.perf_counter() - tick) / 60
    click.echo(format_table(results))
    click.echo(f"\n{minutes:.1f} min end to end. In {run_dir}: report.md, results.json, "
               "capabilities.png, training.png, predictions/, model/")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except InputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(InputError.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
