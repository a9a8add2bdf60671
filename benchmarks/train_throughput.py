"""Training throughput of the demo model: fp32 vs bf16 autocast, side by side.

Two objectives of the demo recipe (src/tinyvlm/recipes/demo.yaml), on real ShapesWorld batches
generated into a temporary directory:

- `sft`: next-token cross-entropy on whole conversations (vision + connector + language
  trainable, as the recipe's sft stage), reported as real tokens/s (attention_mask.sum(), so
  image tokens count and padding does not) and ms/step;
- `patch_labels`: vision pretraining on the dense per-patch labels (vision trainable), reported
  as images/s and ms/step.

One step is what `tinyvlm.train.loop.train_stage` does per optimizer step with grad_accum 1:
forward under autocast, backward, gradient scaling, clipping, AdamW, the LR schedule and
zero_grad, with the loop's own parameter groups (`configure_trainable`). Collation is timed
separately (`collate_ms`): the loop pays it too, but it is data work, not model work.

For every batch size the fp32 and bf16 runs use identical initial weights and the same batch,
and their timed steps alternate (fp32, bf16, fp32, ...) so that both see the same machine load.
The figure reported is the median step; `bf16_speedup` = fp32 median ms / bf16 median ms.

    .venv/bin/python benchmarks/train_throughput.py            # defaults (~1-3 min, 2 cores)
    .venv/bin/python benchmarks/train_throughput.py --quick    # a few seconds
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import (
    LoadMeter,
    base_parser,
    build_model,
    emit,
    environment,
    log,
    make_demo,
    ratio,
    setup_threads,
    summarize,
)
from tinyvlm.config import Recipe, StageConfig
from tinyvlm.train.loop import BatchSampler, configure_trainable, lr_lambda
from tinyvlm.train.objectives import TrainData, build_objective

PRECISIONS = ("fp32", "bf16")


class Runner:
    """One model + objective + optimizer at one precision: the loop's step, timed in parts."""

    def __init__(self, demo: Any, stage: StageConfig, batch: Any, seed: int):
        self.model = build_model(demo, seed)
        self.objective = build_objective(stage.objective, self.model)
        self.stage, self.batch = stage, batch
        groups = configure_trainable(self.model, self.objective, stage)
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=tuple(stage.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(stage))
        self.autocast = torch.autocast(
            "cpu", dtype=torch.bfloat16, enabled=stage.precision == "bf16"
        )
        self.model.train()
        self.objective.train()
        self.times: dict[str, list[float]] = {
            "step": [],
            "forward": [],
            "backward": [],
            "optimizer": [],
        }
        self.losses: list[float] = []

    def step(self, record: bool) -> None:
        t0 = time.perf_counter()
        with self.autocast:
            out = self.objective(self.model, self.batch)
        t1 = time.perf_counter()
        out.loss.mul(out.units).backward()
        t2 = time.perf_counter()
        weight = out.units or 1.0
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(weight)
        if self.stage.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.stage.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        t3 = time.perf_counter()
        self.losses.append(loss)
        if record:
            for key, value in (
                ("step", t3 - t0),
                ("forward", t1 - t0),
                ("backward", t2 - t1),
                ("optimizer", t3 - t2),
            ):
                self.times[key].append(value)


def measure_collate(source: TrainData, batch_size: int, seed: int, n: int) -> dict[str, float]:
    """Collation of fresh batches (images already decoded once: the loop's store caches)."""
    sampler = BatchSampler(len(source.items), batch_size, seed)
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        source.collate([source.items[j] for j in sampler(i)])
        if i:  # the first call decodes the images
            times.append(time.perf_counter() - start)
    return summarize(times)


def bench_objective(
    demo: Any, stage: StageConfig, batch_sizes: list[int], args: Any, unit: str
) -> list[dict[str, Any]]:
    rows = []
    probe = build_model(demo, args.seed)
    source = build_objective(stage.objective, probe).data(probe, demo.recipe.data, stage)
    for bs in batch_sizes:
        sampler = BatchSampler(len(source.items), bs, args.seed)
        batch = source.collate([source.items[i] for i in sampler(0)])
        runners = {
            p: Runner(
                demo, dataclasses.replace(stage, batch_size=bs, precision=p), batch, args.seed
            )
            for p in PRECISIONS
        }
        log(f"[{stage.objective}] batch {bs}: warmup {args.warmup}, repeats {args.repeats}")
        for runner in runners.values():
            for _ in range(args.warmup):
                runner.step(record=False)
        for _ in range(args.repeats):  # alternate, so both precisions share the machine's load
            for runner in runners.values():
                runner.step(record=True)
        row: dict[str, Any] = {"batch_size": bs}
        if unit == "tokens":
            row.update(
                tokens=batch.num_tokens,
                padded_tokens=int(batch.input_ids.numel()),
                seq_len=int(batch.input_ids.shape[1]),
                loss_tokens=int(batch.loss_mask.sum()),
                images=0 if batch.pixel_values is None else len(batch.pixel_values),
            )
            units = batch.num_tokens
        else:
            units = int(batch.pixel_values.shape[0])
            row.update(images=units, patches=batch.num_tokens)
        row["collate"] = measure_collate(source, bs, args.seed + 1, args.collate_repeats)
        for p, runner in runners.items():
            step = summarize(runner.times["step"])
            row[p] = {
                "ms_per_step": step["median_ms"],
                f"{unit}_per_s": units / (step["median_ms"] / 1e3),
                "step": step,
                "forward_ms": summarize(runner.times["forward"])["median_ms"],
                "backward_ms": summarize(runner.times["backward"])["median_ms"],
                "optimizer_ms": summarize(runner.times["optimizer"])["median_ms"],
                # The first step's loss: fp32 and bf16 start from the same weights and batch,
                # so these should agree to about 2-3 significant digits.
                "first_loss": runner.losses[0],
            }
        row["bf16_speedup"] = ratio(row["fp32"]["ms_per_step"], row["bf16"]["ms_per_step"])
        log(
            f"  fp32 {row['fp32']['ms_per_step']:8.1f} ms/step {row['fp32'][f'{unit}_per_s']:9.0f}"
            f" {unit}/s | bf16 {row['bf16']['ms_per_step']:8.1f} ms/step "
            f"{row['bf16'][f'{unit}_per_s']:9.0f} {unit}/s | bf16 speedup "
            f"{row['bf16_speedup']:.2f}x"
        )
        rows.append(row)
    return rows


def pick_stage(recipe: Recipe, objective: str) -> StageConfig:
    """The recipe's stage to measure for `objective`: the last one that trains on all the data
    (the demo's final `sft` stage, not `bind`, which keeps one question type), else the last
    one with that objective, else the defaults."""
    candidates = [s for s in recipe.stages if s.objective == objective]
    broad = [s for s in candidates if not s.question_types and not s.train]
    if broad or candidates:
        return (broad or candidates)[-1]
    return StageConfig(name=objective, objective=objective)


def main() -> None:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sft-batch-sizes", type=int, nargs="+", default=None, help="[default: 8 32 64; quick: 4]"
    )
    parser.add_argument(
        "--patch-batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help="[default: 16 64 256; quick: 8]",
    )
    parser.add_argument(
        "--objectives", nargs="+", default=["sft", "patch_labels"], choices=["sft", "patch_labels"]
    )
    parser.add_argument("--collate-repeats", type=int, default=None)
    args = parser.parse_args()
    quick = args.quick
    args.sft_batch_sizes = args.sft_batch_sizes or ([4] if quick else [8, 32, 64])
    args.patch_batch_sizes = args.patch_batch_sizes or ([8] if quick else [16, 64, 256])
    args.repeats = args.repeats or (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.collate_repeats = args.collate_repeats or (2 if quick else 5)
    if min(args.sft_batch_sizes + args.patch_batch_sizes) < 1 or args.repeats < 1:
        parser.error("batch sizes and --repeats must be >= 1")
    setup_threads(args.threads)
    env = environment()
    start, meter = time.perf_counter(), LoadMeter()

    # Enough images for the largest batch; SFT records are one multi-turn conversation per
    # training image, patch_labels items one scene per training image.
    num_train = max(args.sft_batch_sizes + args.patch_batch_sizes)
    with tempfile.TemporaryDirectory(prefix="tinyvlm-bench-") as tmp:
        log(f"generating ShapesWorld ({num_train} training images) in {tmp} ...")
        demo = make_demo(Path(tmp), num_train=num_train, num_test=0, seed=args.seed)
        stages = {name: pick_stage(demo.recipe, name) for name in args.objectives}
        model = build_model(demo, args.seed)
        results: dict[str, Any] = {}
        if "sft" in args.objectives:
            results["sft"] = bench_objective(
                demo, stages["sft"], args.sft_batch_sizes, args, "tokens"
            )
        if "patch_labels" in args.objectives:
            results["patch_labels"] = bench_objective(
                demo, stages["patch_labels"], args.patch_batch_sizes, args, "images"
            )

    summary = {
        name: {
            str(r["batch_size"]): {
                "fp32_ms_per_step": round(r["fp32"]["ms_per_step"], 2),
                "bf16_ms_per_step": round(r["bf16"]["ms_per_step"], 2),
                "bf16_speedup": round(r["bf16_speedup"], 3),
            }
            for r in rows
        }
        for name, rows in results.items()
    }
    emit(
        {
            "benchmark": "train_throughput",
            "quick": quick,
            "settings": {
                "repeats": args.repeats,
                "warmup": args.warmup,
                "seed": args.seed,
                "sft_batch_sizes": args.sft_batch_sizes if "sft" in results else [],
                "patch_batch_sizes": (args.patch_batch_sizes if "patch_labels" in results else []),
                "dataset": {"num_train": num_train, "image_size": 64},
                "statistic": "median over repeats; bf16_speedup = fp32 ms / bf16 ms",
            },
            "environment": env,
            "model": {
                "recipe": "demo",
                "parameters": model.num_parameters(),
                "vocab_size": model.config.language.vocab_size,
                "image_tokens": model.image_tokens,
                "stages": {
                    k: {
                        "name": s.name,
                        "trainable": s.trainable,
                        "lr_scale": s.lr_scale,
                        "grad_clip": s.grad_clip,
                        "lr": s.lr,
                    }
                    for k, s in stages.items()
                },
            },
            "results": results,
            "summary": summary,
            "machine_load": meter.report(),
            "wall_s": round(time.perf_counter() - start, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
