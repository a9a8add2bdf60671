"""`tinyvlm distill`: knowledge-distillation helpers."""

from __future__ import annotations

from pathlib import Path

import click

from tinyvlm.cli.common import load_model
from tinyvlm.errors import InputError


@click.group()
def distill() -> None:
    """Knowledge distillation helpers (the training itself runs as recipe stages)."""


@distill.command("cache-teacher")
@click.argument("teacher_dir")
@click.argument("student_dir")
@click.argument("data_file")
@click.option("--out", required=True, help="Cache directory (resumes if it exists).")
@click.option("--top-k", type=click.IntRange(min=1), default=64, show_default=True,
              help="Logits kept per position (at most the vocabulary).")
@click.option("--shard-size", type=click.IntRange(min=1), default=512, show_default=True,
              help="Conversations per shard.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
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
    runs resume at the first missing shard; under torchrun each process writes a share of
    the shards (torchrun --nproc_per_node N -m tinyvlm distill cache-teacher ...).

    \b
    Example:
      tinyvlm distill cache-teacher runs/teacher/model runs/student/model \\
          data/shapes/train.json --out runs/teacher-cache --top-k 64
    """
    from tinyvlm.config import DataConfig, StageConfig
    from tinyvlm.train.distributed import launched
    from tinyvlm.train.teacher_cache import cache_teacher

    path = Path(data_file)
    if not path.is_file():
        raise InputError("data file not found", path)
    student = load_model(student_dir)
    data = DataConfig(path=str(path.parent), shapes=None, train=path.name, eval=[])
    stage = StageConfig(name="cache", train=path.name)
    with launched() as runtime:  # under torchrun each process writes a share of the shards
        cache = cache_teacher(teacher_dir, student.to(runtime.device), data, stage, out,
                              top_k, shard_size, batch_size, teacher_dtype, values_dtype,
                              progress=not quiet, runtime=runtime)
    if runtime.is_main:
        click.echo(f"teacher top-{top_k} logits written to {cache}")
