"""`tinyvlm eval` and `tinyvlm report`: evaluate models, compare runs."""

from __future__ import annotations

from pathlib import Path

import click

from tinyvlm.cli.common import load_model
from tinyvlm.errors import InputError


@click.command("eval")
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
@click.option("--backend", type=click.Choice(["auto", "tinyvlm", "transformers"]),
              default="auto", show_default=True,
              help="Who runs MODEL: tinyvlm (its own and LLaVA directories, imported) or "
                   "transformers (any AutoModelForImageTextToText directory; the hf extra). "
                   "auto: tinyvlm where it can.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(model: str, data_files: tuple[str, ...], out: str, name: str | None,
             train_file: str | None, image_root: str | None, templates: str | None,
             batch_size: int, max_new_tokens: int | None, backend: str, quiet: bool) -> None:
    """Evaluate MODEL on benchmark files: predictions, results.json, report, chart.

    DATA_FILES are LLaVA JSON/JSONL (ShapesWorld), POPE question JSONL, MME subtask .txt
    files (or their directory), MMBench TSV, SEED-Bench JSON, ScienceQA problems.json,
    VQAv2/TextVQA questions, VizWiz annotations, GQA questions JSON, MMHal-Bench's
    response_template.json, Object HalBench JSONL (CHAIR) or MOAT JSON; the format is
    detected, or forced with a prefix (pope:FILE). Finished items are cached in --out:
    rerunning resumes where it stopped.

    \b
    Example:
      tinyvlm eval runs/demo/model data/shapes/test.json data/shapes/pope.json --out runs/eval
      tinyvlm eval runs/demo/model data/shapes/pope_random.jsonl mmbench_dev.tsv --out runs/e2
      tinyvlm eval ~/models/llava-1.5-7b-hf pope_random.jsonl --backend transformers
    """
    from tinyvlm.eval.harness import evaluate_models
    from tinyvlm.eval.report import format_benchmarks, format_table

    for flag, given, kind in (("--train", train_file, "file"), ("--templates", templates, "dir"),
                              ("--image-root", image_root, "dir")):
        if given is not None and not (Path(given).is_file() if kind == "file"
                                      else Path(given).is_dir()):
            raise InputError(f"{flag}: no such {'file' if kind == 'file' else 'directory'}",
                             given)
    if name == "":
        raise InputError("--name is empty")
    from tinyvlm.train.distributed import launched

    train_path = Path(train_file) if train_file else Path(data_files[0]).parent / "train.json"
    with launched() as runtime:  # under torchrun each process decodes a share of the items
        results = evaluate_models({name or Path(model).resolve().name:
                                   load_eval_model(model, backend)},
                                  list(data_files), Path(out),
                                  train_path if train_path.is_file() else None,
                                  batch_size, max_new_tokens, progress=not quiet,
                                  image_root=None if image_root is None else Path(image_root),
                                  templates=None if templates is None else Path(templates),
                                  runtime=runtime)
    if not runtime.is_main:
        return
    click.echo(format_table(results))
    if benchmarks := format_benchmarks(results):
        click.echo(f"\n{benchmarks}")
    click.echo(f"\nreport: {Path(out) / 'report.md'}")


def load_eval_model(path: str, backend: str) -> object:
    """The model `tinyvlm eval` runs: tinyvlm's (its directories, and LLaVA ones imported)
    or transformers' own for any other Hugging Face directory."""
    from tinyvlm.models.hf import is_hf_directory

    if backend == "auto" and is_hf_directory(path):
        import json

        kind = json.loads((Path(path) / "config.json").read_text()).get("model_type")
        backend = "tinyvlm" if kind == "llava" else "transformers"
    if backend == "transformers":
        from tinyvlm.hf_adapter import TransformersVLM

        return TransformersVLM(path)
    return load_model(path)


@click.command("report")
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
    from tinyvlm.eval.report import load_runs, write_comparison

    paths = write_comparison(load_runs(run_dirs), out, chart)
    click.echo(paths["markdown"].read_text())
    click.echo(f"written: {', '.join(str(p) for p in paths.values())}")
