"""Where distillation pays: accuracy against the labelled fraction of the training images.

For each labelled fraction, the student stages of recipes/llava_mod.yaml run again with that
fraction (data.labelled_fraction): the plain-SFT ablation, dense mimic and sparse mimic,
all from the teacher and the student encoder of a finished llava-mod run (both trained on
every image, so they are the same at every point of the curve). Each student is evaluated
on the test split. Prints JSON, writes curve.json and curve.png into --out (and with
--markdown the table for docs/distillation.md).

    tinyvlm demo --recipe llava-mod --out runs/llava-mod
    python benchmarks/distill_curve.py --run runs/llava-mod --out runs/curve \\
        [--fractions 0.02,0.05,0.1,0.25,1] [--markdown] [--plot docs/img/distill-curve.png]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from tinyvlm.config import Recipe, load_recipe
from tinyvlm.eval.harness import evaluate_models
from tinyvlm.io import write_json
from tinyvlm.rundir import RunDir
from tinyvlm.train.pipeline import report_models, run_recipe
from tinyvlm.train.stage_data import stage_conversations

ROWS = ("student-sft", "student-mimic-dense", "student-mimic-sparse")
TEACHER_STAGE, ENCODER_STAGE = "teacher-sft", "student-vision"


def student_recipe(base: Recipe, run: Path, fraction: float) -> Recipe:
    """The llava-mod recipe's student stages at `fraction`, with the finished run's teacher
    and student encoder; the preference stages are left out."""
    r = copy.deepcopy(base)
    done = RunDir(run)
    by_name = {s.name: s for s in base.stages}
    teacher = str(done.stage_model(by_name[TEACHER_STAGE]).resolve())
    encoder = str(done.stage_model(by_name[ENCODER_STAGE]).resolve())
    r.data.path = str((run / "data").resolve())
    r.data.labelled_fraction = fraction
    keep = []
    for stage in r.stages:
        if stage.model == "teacher" or stage.name == ENCODER_STAGE \
                or stage.action == "build_pairs" or stage.objective == "preference":
            continue
        if stage.mimic is not None:
            stage.mimic.teacher = teacher
            stage.mimic.unlabelled = stage.mimic.unlabelled and fraction < 1
        # Stages that started from the encoder stage start from its finished model.
        stage.init = {k: encoder if v == f"stage:{ENCODER_STAGE}" else v
                      for k, v in stage.init.items()}
        if stage.model == "model" and not any(s.model == "model" for s in keep):
            stage.init = {m: encoder for m in ("vision", "connector", "language")}
        keep.append(stage)
    r.stages = keep
    _fit_batches(r)
    r.eval.models = {k: v for k, v in base.eval.models.items() if k in ROWS}
    return r


def _fit_batches(recipe: Recipe) -> None:
    """At small fractions a stage that reads only labelled answers can have fewer items than
    its batch: its batch becomes the whole labelled set (steps unchanged), said on stderr.
    Stages that also read the unlabelled questions keep theirs."""
    for stage in recipe.stages:
        if stage.action != "train" or (stage.mimic is not None and stage.mimic.unlabelled):
            continue
        n = len(stage_conversations(recipe.data, stage)[1])
        if n < stage.batch_size:
            print(f"{stage.name}: {n} labelled items at fraction "
                  f"{recipe.data.labelled_fraction:g}, batch {stage.batch_size} -> {n}",
                  file=sys.stderr)
            stage.batch_size = n


def row_point(fraction: float, models: list[dict[str, Any]]) -> dict[str, Any]:
    rows = {m["name"]: m for m in models}
    return {"fraction": fraction,
            **{name: round(100 * rows[name]["accuracy"], 1) for name in ROWS},
            "per_capability": {name: rows[name]["per_capability"] for name in ROWS}}


def point(base: Recipe, run: Path, fraction: float, out: Path) -> dict[str, Any]:
    results = run / "results.json"
    if abs(fraction - base.data.labelled_fraction) < 1e-9 and results.is_file():
        # The run itself is this point: its rows were trained exactly so.
        return {**row_point(fraction, json.loads(results.read_text())["models"]),
                "from": str(run)}
    recipe = student_recipe(base, run, fraction)
    run_dir = out / f"labelled-{fraction:g}"
    final = run_recipe(recipe, run_dir, resume=True, progress=False)
    data = Path(recipe.data.path)
    results = evaluate_models(report_models(recipe, run_dir, final), [data / "test.json"],
                              run_dir, data / recipe.data.train, recipe.eval.batch_size,
                              recipe.eval.max_new_tokens, progress=False)
    return row_point(fraction, results["models"])


def plot(points: list[dict[str, Any]], teacher: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * p["fraction"] for p in points]
    for name, style in zip(ROWS, ("o-", "s--", "^-"), strict=True):
        ax.plot(xs, [p[name] for p in points], style, label=name)
    if teacher is not None:
        ax.axhline(teacher, color="grey", linestyle=":", label="teacher (all labels)")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}%" for x in xs])
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ShapesWorld: SFT vs mimic distillation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(points: list[dict[str, Any]], teacher: float | None) -> str:
    head = "| labelled images | " + " | ".join(ROWS) + " | sparse - sft |"
    lines = [head, "|" + "---:|" * (len(ROWS) + 2)]
    for p in points:
        cells = " | ".join(f"{p[n]:.1f}%" for n in ROWS)
        lines.append(f"| {100 * p['fraction']:g}% | {cells} | "
                     f"{p['student-mimic-sparse'] - p['student-sft']:+.1f} |")
    if teacher is not None:
        lines.append(f"\nTeacher (every label): {teacher:.1f}%.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished llava-mod run")
    ap.add_argument("--out", type=Path, default=Path("runs/curve"))
    ap.add_argument("--fractions", default="0.02,0.05,0.1,0.25,1")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--plot", type=Path, default=None, help="default: OUT/curve.png")
    args = ap.parse_args(argv)
    base = load_recipe(RunDir(args.run).recipe)
    results = args.run / "results.json"
    teacher = None
    if results.is_file():
        rows = {m["name"]: m for m in json.loads(results.read_text())["models"]}
        teacher = round(100 * rows["teacher"]["accuracy"], 1) if "teacher" in rows else None
    points: list[dict[str, Any]] = []
    for f in args.fractions.split(","):
        points.append(point(base, args.run, float(f), args.out))
        out = {"teacher": teacher, "points": points}
        write_json(args.out / "curve.json", out)  # after every point: a long run keeps them
    plot(points, teacher, args.plot or args.out / "curve.png")
    print(json.dumps(out, indent=1))
    if args.markdown:
        print(markdown(points, teacher))
    return 0


if __name__ == "__main__":
    sys.exit(main())
