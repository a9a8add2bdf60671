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
    from collections.abc import Callable

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
@click.option("--image-root", default=None,
              help="Directory the benchmark's image paths are relative to "
                   "[default: the benchmark file's directory].")
@click.option("--templates", default=None,
              help="Directory of <benchmark>.yaml prompt templates overriding the built-in ones.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--max-new-tokens", type=int, default=None,
              help="Tokens to generate [default: each benchmark template's].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(model: str, data_files: tuple[str, ...], out: str, name: str | None,
             train_file: str | None, image_root: str | None, templates: str | None,
             batch_size: int, max_new_tokens: int | None, quiet: bool) -> None:
    """Evaluate MODEL on benchmark files: predictions, results.json, report, chart.

    DATA_FILES are LLaVA JSON/JSONL (ShapesWorld), POPE question JSONL, MME subtask .txt
    files (or their directory), MMBench TSV, SEED-Bench JSON, ScienceQA problems.json,
    VQAv2/TextVQA questions or MOAT JSON; the format is detected, or forced with a prefix
    (pope:FILE). Finished items are cached in --out: rerunning resumes where it stopped.

    \b
    Example:
      tinyvlm eval runs/demo/model data/shapes/test.json data/shapes/pope.json --out runs/eval
      tinyvlm eval runs/demo/model data/shapes/pope_random.jsonl mmbench_dev.tsv --out runs/e2
    """
    from tinyvlm.eval.run import evaluate_models

    train_path = Path(train_file) if train_file else Path(data_files[0]).parent / "train.json"
    results = evaluate_models({name or Path(model).name: load_model(model)},
                              list(data_files), Path(out),
                              train_path if train_path.is_file() else None,
                              batch_size, max_new_tokens, progress=not quiet,
                              image_root=None if image_root is None else Path(image_root),
                              templates=None if templates is None else Path(templates))
    from tinyvlm.eval.report import format_benchmarks, format_table

    click.echo(format_table(results))
    if benchmarks := format_benchmarks(results):
        click.echo(f"\n{benchmarks}")
    click.echo(f"\nreport: {Path(out) / 'report.md'}")


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--out", default="runs/report", show_default=True, help="Output directory.")
@click.option("--chart", type=click.Choice(["bars", "radar"]), default="bars",
              show_default=True, help="Per-capability chart style.")
def report_cmd(run_dirs: tuple[str, ...], out: str, chart: str) -> None:
    """Compare the models of several eval runs: comparison.md, .html and .png.

    RUN_DIRS are directories holding results.json (from `tinyvlm eval` or `tinyvlm demo`).

    \b
    Example:
      tinyvlm report runs/eval-teacher runs/eval-student --out runs/report
    """
    from tinyvlm.eval.compare import load_runs, write_comparison

    paths = write_comparison(load_runs(run_dirs), out, chart)
    click.echo(paths["markdown"].read_text())
    click.echo(f"written: {', '.join(str(p) for p in paths.values())}")


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

    At initialisation the sparse model computes exactly what the dense one did (with
    dropless routing; a capacity factor may drop choices); training (e.g. mimic
    distillation) then moves the experts apart.

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
def distill() -> None:
    """Knowledge distillation helpers (the training itself runs as recipe stages)."""


@distill.command("cache-teacher")
@click.argument("teacher_dir")
@click.argument("student_dir")
@click.argument("data_file")
@click.option("--out", required=True, help="Cache directory (resumes if it exists).")
@click.option("--top-k", default=64, show_default=True, help="Logits kept per position.")
@click.option("--shard-size", default=512, show_default=True, help="Conversations per shard.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--values-dtype", type=click.Choice(["fp16", "fp32"]), default="fp16",
              show_default=True, help="Storage of the logits.")
@click.option("--teacher-dtype", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def distill_cache_teacher(teacher_dir: str, student_dir: str, data_file: str, out: str,
                          top_k: int, shard_size: int, batch_size: int, values_dtype: str,
                          teacher_dtype: str, quiet: bool) -> None:
    """Write the teacher's top-k logits for every response token of DATA_FILE.

    The student (its tokenizer and image-token layout) defines the positions, so a `mimic`
    stage with `distill.cache: DIR` reads exactly what it would have computed. Interrupted
    runs resume at the first missing shard.

    \b
    Example:
      tinyvlm distill cache-teacher runs/teacher/model runs/student/model \\
          data/shapes/train.json --out runs/teacher-cache --top-k 64
    """
    from tinyvlm.config import DataConfig, StageConfig
    from tinyvlm.train.distill import cache_teacher

    path = Path(data_file)
    if not path.is_file():
        raise InputError("data file not found", path)
    student = load_model(student_dir)
    data = DataConfig(path=str(path.parent), shapes=None, train=path.name, eval=[])
    stage = StageConfig(name="cache", train=path.name)
    cache = cache_teacher(teacher_dir, student, data, stage, out, top_k, shard_size,
                          batch_size, teacher_dtype, values_dtype, progress=not quiet)
    click.echo(f"teacher top-{top_k} logits written to {cache}")


@cli.group()
def tasks() -> None:
    """Multi-task vision models with task-routed experts (M3ViT)."""


def _task_run(run_dir: str) -> tuple[TinyVLM, Any, Any, Any]:
    from tinyvlm.config import load_recipe
    from tinyvlm.eval.tasks import load_heads

    recipe = load_recipe(Path(run_dir) / "recipe.yaml")
    stages = [s for s in recipe.stages if s.objective == "task_heads"]
    if not stages:
        raise InputError("this run has no task_heads stage", run_dir)
    model = load_model(str(Path(run_dir) / "model"))
    return model, load_heads(run_dir, stages[-1], model), recipe, stages[-1]


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

    model, heads, recipe, stage = _task_run(run_dir)
    stage = dataclasses.replace(stage, train=f"{split}.json")
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

    model, heads, recipe, stage = _task_run(run_dir)
    task = _task_id(task_name)
    val = heads.data(model, recipe.data, dataclasses.replace(stage, train="val.json"))
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
    from tinyvlm.train.pipeline import report_models, run_recipe

    tick = time.perf_counter()
    r = load_recipe(resolve_recipe(recipe))
    run_dir = Path(out)
    if not Path(r.data.path).is_absolute():
        r.data.path = str(run_dir / "data")  # the demo keeps everything under --out
    model = run_recipe(r, run_dir, resume=resume, progress=not quiet)
    data_dir = Path(r.data.path)
    results = evaluate_models(report_models(r, run_dir, model),
                              [data_dir / f for f in r.data.eval], run_dir,
                              data_dir / r.data.train, r.eval.batch_size, r.eval.max_new_tokens,
                              progress=not quiet)
    plot_training(run_dir / "metrics.jsonl", run_dir / "training.png")
    minutes = (time.perf_counter() - tick) / 60
    click.echo(format_table(results))
    click.echo(f"\n{minutes:.1f} min end to end. In {run_dir}: report.md, results.json, "
               "capabilities.png, training.png, predictions/, model/")


# ----------------------------------------------------------------------------- score

def _score_options(f: Callable[..., None]) -> Callable[..., None]:
    """--convention and --table, shared by every `tinyvlm score` command."""
    f = click.option("--table", is_flag=True,
                     help="Print a human-readable table instead of JSON.")(f)
    return click.option(
        "--convention", default="official", show_default=True,
        help="Whose scoring rules: official, lmms-eval or vlmevalkit (where the benchmark "
             "has them).")(f)


def _print_scores(compute: Callable[[], dict], table: bool) -> None:
    """Run a scorer; its warnings become one 'warning: ...' line each on stderr."""
    import warnings

    from tinyvlm.eval.scorers import format_table as scores_table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compute()
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    click.echo(scores_table(result) if table else json.dumps(result, indent=2))


@cli.group("score")
def score_group() -> None:
    """Score benchmark predictions by the official scripts' rules, or another harness's.

    Each command prints one JSON object (or a table with --table). docs/evaluation.md lists
    every benchmark's rule and how the harnesses differ.

    \b
    Example:
      tinyvlm score pope --annotations coco_pope_random.json --predictions answers.jsonl
    """


@score_group.command("pope")
@click.option("--annotations", multiple=True, required=True,
              help="POPE question file (JSONL: question_id, image, text, label); repeat for "
                   "several splits.")
@click.option("--predictions", multiple=True, required=True,
              help="Answer file (JSONL: question_id and text or answer), one per --annotations, "
                   "in the same order.")
@_score_options
def score_pope(annotations: tuple[str, ...], predictions: tuple[str, ...], convention: str,
               table: bool) -> None:
    """POPE accuracy, precision, recall, F1 and yes-ratio; with several splits, also their
    mean F1 (the number LLaVA-style papers print).

    \b
    Example:
      tinyvlm score pope --annotations coco_pope_random.json --predictions random.jsonl
      tinyvlm score pope --annotations coco_pope_random.json --predictions random.jsonl \\
          --annotations coco_pope_popular.json --predictions popular.jsonl \\
          --annotations coco_pope_adversarial.json --predictions adversarial.jsonl
    """
    from tinyvlm.eval.scorers import pope

    _print_scores(lambda: pope.score_files(annotations, predictions, convention), table)


@score_group.command("mme")
@click.option("--predictions", required=True,
              help="Directory with one <subtask>.txt per subtask "
                   "(image<TAB>question<TAB>answer<TAB>prediction).")
@_score_options
def score_mme(predictions: str, convention: str, table: bool) -> None:
    """MME perception and cognition scores and every subtask's score.

    \b
    Example:
      tinyvlm score mme --predictions runs/eval/mme_answers
    """
    from tinyvlm.eval.scorers import mme

    _print_scores(lambda: mme.score_files(predictions, convention), table)


@score_group.command("mmbench")
@click.option("--predictions", required=True,
              help="MMBench TSV with a prediction column (index, question, A..D, answer, "
                   "category, l2-category, prediction).")
@_score_options
def score_mmbench(predictions: str, convention: str, table: bool) -> None:
    """MMBench circular accuracy overall, per category and per l2-category (rule-based
    answer extraction; no judge model).

    \b
    Example:
      tinyvlm score mmbench --predictions mmbench_dev_en_answers.tsv
    """
    from tinyvlm.eval.scorers import mmbench

    _print_scores(lambda: mmbench.score_files(predictions, convention), table)


@score_group.command("seed")
@click.option("--annotations", required=True, help="SEED-Bench.json.")
@click.option("--predictions", required=True,
              help="Answer file (JSONL: question_id, text).")
@_score_options
def score_seed(annotations: str, predictions: str, convention: str, table: bool) -> None:
    """SEED-Bench accuracy per dimension, per data type and overall.

    \b
    Example:
      tinyvlm score seed --annotations SEED-Bench.json --predictions seed_answers.jsonl
    """
    from tinyvlm.eval.scorers import seed

    _print_scores(lambda: seed.score_files(annotations, predictions, convention), table)


@score_group.command("scienceqa")
@click.option("--problems", required=True, help="ScienceQA problems.json.")
@click.option("--predictions", required=True,
              help="Answer file (JSONL: question_id, text, prompt).")
@click.option("--split", default="test", show_default=True, help="Split to score.")
@click.option("--pid-splits", default=None,
              help="pid_splits.json [default: the problems' own 'split' field].")
@_score_options
def score_scienceqa(problems: str, predictions: str, split: str, pid_splits: str | None,
                    convention: str, table: bool) -> None:
    """ScienceQA accuracy and accuracy on questions with an image.

    \b
    Example:
      tinyvlm score scienceqa --problems problems.json --predictions sqa_answers.jsonl
    """
    from tinyvlm.eval.scorers import scienceqa

    _print_scores(lambda: scienceqa.score_files(problems, predictions, split, pid_splits,
                                                convention), table)


@score_group.command("vqa")
@click.option("--annotations", required=True,
              help="VQAv2 annotations JSON, or a TextVQA JSON ({'data': [...]}).")
@click.option("--results", required=True,
              help="Results: JSON list [{question_id, answer}] or JSONL with text or answer.")
@click.option("--questions", default=None,
              help="VQAv2 questions JSON, to check the annotated ids against.")
@click.option("--variant", type=click.Choice(["vqav2", "textvqa"]), default="vqav2",
              show_default=True, help="VQAv2 script or the TextVQA (M4C) evaluator.")
@_score_options
def score_vqa(annotations: str, results: str, questions: str | None, variant: str,
              convention: str, table: bool) -> None:
    """VQA accuracy: min(1, matches/3) over leave-one-out subsets of the human answers.

    \b
    Example:
      tinyvlm score vqa --questions v2_OpenEnded_mscoco_val2014_questions.json \\
          --annotations v2_mscoco_val2014_annotations.json --results results.json
      tinyvlm score vqa --variant textvqa --annotations TextVQA_0.5.1_val.json \\
          --results textvqa_answers.jsonl
    """
    from tinyvlm.eval.scorers import vqa

    _print_scores(lambda: vqa.score_files(annotations, results, questions, variant,
                                          convention), table)


@score_group.command("moat")
@click.option("--predictions", multiple=True, required=True,
              help="JSONL of capability-tagged predictions (ours or MOAT's columns); repeat "
                   "once per run.")
@_score_options
def score_moat(predictions: tuple[str, ...], convention: str, table: bool) -> None:
    """MOAT-style accuracy overall, per capability and per capability combination,
    averaged over runs (exact match unless the records carry a verdict).

    \b
    Example:
      tinyvlm score moat --predictions run1.jsonl --predictions run2.jsonl
    """
    from tinyvlm.eval.scorers import moat

    _print_scores(lambda: moat.score_files(predictions, convention), table)


# ----------------------------------------------------------------------------- preference


@cli.group()
def preference() -> None:
    """Preference distillation: build chosen/rejected pairs for the `preference` objective.

    \b
    Example:
      tinyvlm preference build runs/student data/shapes/train.json --out pairs.jsonl
    """


@preference.command("build")
@click.argument("model")
@click.argument("data_files", nargs=-1)
@click.option("--out", required=True, help="Pairs JSONL to write.")
@click.option("--teacher", default=None,
              help="Model directory that ranks answers to prompts without a ground truth "
                   "(by its length-normalised log-likelihood).")
@click.option("--teacher-dtype", default="fp32", show_default=True, help="fp32 or bf16.")
@click.option("--samples", default=4, show_default=True, help="Answers sampled per prompt.")
@click.option("--temperature", default=1.0, show_default=True, help="Sampling temperature.")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sampling.")
@click.option("--max-new-tokens", default=16, show_default=True, help="Longest answer sampled.")
@click.option("--batch-size", default=16, show_default=True, help="Prompts per generate call.")
@click.option("--all-turns", is_flag=True,
              help="Every turn of a multi-turn conversation is a prompt, not only the last.")
@click.option("--no-ground-truth", is_flag=True,
              help="Rank every prompt with the teacher, even where an answer is given.")
@click.option("--pope", "pope_files", multiple=True,
              help="POPE-style yes/no existence probes (official JSONL or LLaVA JSON); each "
                   "gives a pair (correct answer vs the opposite). Repeatable.")
@click.option("--image-root", default=None,
              help="Directory the --pope files' image paths are relative to "
                   "[default: each file's directory].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def preference_build(model: str, data_files: tuple[str, ...], out: str, teacher: str | None,
                     teacher_dtype: str, samples: int, temperature: float, top_p: float,
                     seed: int, max_new_tokens: int, batch_size: int, all_turns: bool,
                     no_ground_truth: bool, pope_files: tuple[str, ...],
                     image_root: str | None, quiet: bool) -> None:
    """Sample answers from the student MODEL for the prompts of DATA_FILE (LLaVA JSON) and
    write chosen/rejected pairs (JSONL: id, prompt, image, chosen, rejected, source, meta).

    Ground truth ranks where it exists (chosen = the answer, rejected = the most frequent
    wrong sample); otherwise the teacher does. Training on probes of the evaluation images
    leaks the benchmark: take --pope probes from training data (e.g. train.json).

    \b
    Example:
      tinyvlm preference build runs/llava-mod/model data/shapes/train.json \\
          --out runs/pairs.jsonl --samples 4 --pope data/shapes/train.json
    """
    from tinyvlm.data.formats import load_llava
    from tinyvlm.train.preference import build_pairs, load_probes, pope_pairs, write_pairs
    from tinyvlm.train.teacher import FrozenTeacher

    if not data_files and not pope_files:
        raise InputError("give at least one DATA_FILE or --pope file")
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    conversations = [c for f in data_files for c in load_llava(f)]
    probes = [c for f in pope_files for c in load_probes(f, image_root)]
    student = load_model(model)
    ranker = FrozenTeacher.from_pretrained(teacher, teacher_dtype) if teacher else None
    records = build_pairs(student, conversations, samples, temperature, top_p, seed, ranker,
                          batch_size, max_new_tokens, all_turns=all_turns,
                          use_ground_truth=not no_ground_truth, progress=not quiet)
    prompts = sum(len(c.turns) if all_turns else 1 for c in conversations)
    built = len(records)
    records += pope_pairs(probes)
    write_pairs(out, records)
    by_source = {s: sum(r["source"] == s for r in records)
                 for s in ("ground_truth", "teacher", "pope")}
    click.echo(f"{len(records)} pairs written to {out} ({by_source['ground_truth']} ground "
               f"truth, {by_source['teacher']} teacher-ranked, {by_source['pope']} pope); "
               f"{prompts - built} of {prompts} prompts gave no pair (every sample right, or "
               "all alike)")


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
