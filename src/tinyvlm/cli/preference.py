"""`tinyvlm preference`: build preference pairs."""

from __future__ import annotations

from pathlib import Path

import click

from tinyvlm.cli.common import load_model
from tinyvlm.errors import InputError


@click.group()
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
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the sampling.")
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
@click.option("--balance-yes-no", is_flag=True,
              help="Keep as many yes-over-no as no-over-yes pairs (a seeded subset of the "
                   "larger side).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def preference_build(model: str, data_files: tuple[str, ...], out: str, teacher: str | None,
                     teacher_dtype: str, samples: int, temperature: float, top_p: float,
                     seed: int, max_new_tokens: int, batch_size: int, all_turns: bool,
                     no_ground_truth: bool, pope_files: tuple[str, ...],
                     image_root: str | None, balance_yes_no: bool, quiet: bool) -> None:
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
    from tinyvlm.data.llava import load_llava
    from tinyvlm.data.pairs import SOURCES, write_pairs
    from tinyvlm.train.pairs import load_probes, make_pairs
    from tinyvlm.train.teacher import FrozenModel

    if not data_files and not pope_files:
        raise InputError("give at least one DATA_FILE or --pope file")
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    inputs = {Path(f).resolve() for f in (*data_files, *pope_files)}
    if Path(out).resolve() in inputs:
        raise InputError("--out is one of the input files; choose another file", out)
    conversations = [c for f in data_files for c in load_llava(f)]
    probes = [c for f in pope_files for c in load_probes(f, image_root)]
    student = load_model(model)
    ranker = FrozenModel.from_pretrained(teacher, teacher_dtype) if teacher else None
    records = make_pairs(student, conversations, probes, samples=samples,
                         temperature=temperature, top_p=top_p, seed=seed, teacher=ranker,
                         batch_size=batch_size, max_new_tokens=max_new_tokens,
                         all_turns=all_turns, use_ground_truth=not no_ground_truth,
                         balance_yes_no=balance_yes_no, progress=not quiet)
    write_pairs(out, records)
    prompts = sum(len(c.turns) if all_turns else 1 for c in conversations)
    by_source = {s: sum(r["source"] == s for r in records) for s in SOURCES}
    built = by_source["ground_truth"] + by_source["teacher"]
    click.echo(f"{len(records)} pairs written to {out} ({by_source['ground_truth']} ground "
               f"truth, {by_source['teacher']} teacher-ranked, {by_source['pope']} pope); "
               f"{prompts - built} of {prompts} prompts gave no pair (every sample right, or "
               "all alike)")
