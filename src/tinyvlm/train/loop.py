"""The one training loop: every stage of every recipe runs through `train_stage`.

AdamW with a warmup + cosine schedule, gradient clipping and accumulation, fp32 or bf16
autocast, seeded sampling, atomic checkpoints and bit-exact resume.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from tinyvlm.config import StageConfig, to_dict
from tinyvlm.errors import InputError, closest
from tinyvlm.io import atomic_dir, read_jsonl, write_jsonl
from tinyvlm.models.moe import router_losses
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.objectives import DataSource, Objective

MODULES = ("vision", "connector", "language")


class BatchSampler:
    """Batch number i -> dataset indices, a pure function of (seed, i).

    Each epoch is a seeded permutation, so resuming at step s needs only s, not an iterator's
    state. An epoch's tail that does not fill a batch is dropped.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < batch_size:
            raise InputError(f"the dataset has {size} items, fewer than batch_size {batch_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.per_epoch = size // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, i: int) -> list[int]:
        epoch, j = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=g)
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size].tolist()


def lr_lambda(stage: StageConfig) -> Any:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at the last step."""

    def f(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        span = max(1, stage.steps - stage.warmup_steps)
        progress = min(1.0, (step - stage.warmup_steps) / span)
        return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi *
                                                                               progress))

    return f


def configure_trainable(model: TinyVLM, objective: Objective, stage: StageConfig
                        ) -> list[dict[str, Any]]:
    """Freeze everything but the stage's modules; AdamW groups with per-module lr scales.

    Weight decay applies to matrices only: decaying norms, biases and positions hurts.
    """
    for name in [*stage.trainable, *stage.lr_scale]:
        if name not in MODULES:
            raise InputError(f"stage '{stage.name}': unknown module '{name}'"
                             f"{closest(name, MODULES)}; modules: {', '.join(MODULES)}")
    model.requires_grad_(False)
    groups = []
    named = [(m, getattr(model, m)) for m in stage.trainable] + [("objective", objective)]
    for module_name, module in named:
        module.requires_grad_(True)
        scale = stage.lr_scale.get(module_name, 1.0)
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        for ps, wd in ((decay, stage.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": stage.lr * scale, "weight_decay": wd,
                               "name": module_name})
    # Tied weights appear in two modules' parameters; give each tensor to one group only.
    seen: set[int] = set()
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in seen and not seen.add(id(p))]
    return [g for g in groups if g["params"]]


class Checkpoints:
    """`<dir>/step-000100/` holds model/ (a model directory) and trainer.pt."""

    def __init__(self, directory: Path, keep: int):
        self.dir, self.keep = directory, keep

    def steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        found = (re.fullmatch(r"step-(\d+)", p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        return self.dir / f"step-{step:06d}"

    def save(self, step: int, model: TinyVLM, state: dict[str, Any]) -> Path:
        with atomic_dir(self.path(step)) as tmp:
            model.save_pretrained(tmp / "model")
            torch.save(state, tmp / "trainer.pt")
        old = [s for s in self.steps() if s != step]
        for s in old[: max(0, len(old) - (self.keep - 1))] if self.keep > 0 else []:
            shutil.rmtree(self.path(s), ignore_errors=True)
        return self.path(step)

    def load(self, step: int, model: TinyVLM) -> dict[str, Any]:
        path = self.path(step)
        model.load_tensors(load_file(str(path / "model" / "model.safetensors")), path)
        return torch.load(path / "trainer.pt", weights_only=True)


def train_stage(
    model: TinyVLM,
    stage: StageConfig,
    objective: Objective,
    source: DataSource,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run one stage for `stage.steps` optimizer steps; return its logged metrics."""
    run_dir = Path(run_dir)
    ckpts = Checkpoints(run_dir / "checkpoints" / stage.name, stage.keep_checkpoints)
    metrics_file = run_dir / "metrics.jsonl"
    torch.manual_seed(stage.seed)
    groups = configure_trainable(model, objective, stage)
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=tuple(stage.betas))
    schedule = lr_lambda(stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    sampler = BatchSampler(len(source.items), stage.batch_size, stage.seed)
    params = [p for g in groups for p in g["params"]]

    start = 0
    if resume and ckpts.steps():
        start = ckpts.steps()[-1]
        state = ckpts.load(start, model)
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        _truncate_metrics(metrics_file, stage.name, start)
    elif not resume:
        # A fresh start: checkpoints of an earlier run of this stage must not survive to be
        # mistaken for this run's on a later resume.
        shutil.rmtree(ckpts.dir, ignore_errors=True)
        _truncate_metrics(metrics_file, stage.name, 0)

    def trainer_state(step: int) -> dict[str, Any]:
        return {"step": step, "stage": to_dict(stage), "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state()}

    model.train()
    objective.train()
    logged: list[dict[str, Any]] = []
    window = _Window()
    bar = tqdm(total=stage.steps, initial=start, desc=stage.name, unit="step",
               disable=not progress, dynamic_ncols=True, leave=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=stage.precision == "bf16")
    if stage.precision not in ("fp32", "bf16"):
        raise InputError(f"stage '{stage.name}': precision must be fp32 or bf16")
    for step in range(start, stage.steps):
        tick = time.perf_counter()
        micro = [source.collate([source.items[i] for i in sampler(step * stage.grad_accum + k)])
                 for k in range(stage.grad_accum)]
        outputs = []
        for batch in micro:
            with autocast:
                out = objective(model, batch)
            outputs.append(out)
            # MoE auxiliary losses enter here and only here: counted once, logged apart.
            aux, router_metrics = router_losses(out.records)
            out.metrics.update(router_metrics)
            total = out.loss if aux is None else out.loss + aux
            # Scale so the accumulated gradient is the mean over all units of the step.
            total.mul(out.weight).backward()
        total_weight = sum(o.weight for o in outputs) or 1.0
        for p in params:
            if p.grad is not None:
                p.grad.div_(total_weight)
        grad_norm = (torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
                     if stage.grad_clip else _grad_norm(params))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = sum(float(o.loss.detach()) * o.weight for o in outputs) / total_weight
        window.add(loss, sum(b.num_tokens for b in micro), time.perf_counter() - tick,
                   _mean_metrics(outputs))
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{window.tokens_per_s:,.0f}")
        if done % stage.log_every == 0 or done == stage.steps:
            row = {"stage": stage.name, "step": done, "loss": window.loss,
                   "lr": stage.lr * schedule(step), "grad_norm": float(grad_norm),
                   "tokens_per_s": window.tokens_per_s, **window.metrics()}
            logged.append(row)
            _append_metrics(metrics_file, row)
            window = _Window()
        if done == stage.steps or (stage.checkpoint_every and done % stage.checkpoint_every == 0):
            ckpts.save(done, model, trainer_state(done))
    bar.close()
    model.eval()
    model.requires_grad_(True)
    return logged


def completed(run_dir: str | Path, stage: StageConfig) -> bool:
    ckpts = Checkpoints(Path(run_dir) / "checkpoints" / stage.name, stage.keep_checkpoints)
    return stage.steps in ckpts.steps()


def load_final(run_dir: str | Path, stage: StageConfig, model: TinyVLM) -> None:
    Checkpoints(Path(run_dir) / "checkpoints" / stage.name, stage.keep_checkpoints).load(
        stage.steps, model)


class _Window:
    """Running sums between two log lines."""

    def __init__(self) -> None:
        self.n, self.loss_sum, self.tokens, self.seconds = 0, 0.0, 0, 0.0
        self.sums: dict[str, float] = {}

    def add(self, loss: float, tokens: int, seconds: float, metrics: dict[str, float]) -> None:
        self.n += 1
        self.loss_sum += loss
        self.tokens += tokens
        self.seconds += seconds
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.n)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float]:
        return {k: v / max(1, self.n) for k, v in self.sums.items()}


def _mean_metrics(outputs: list[Any]) -> dict[str, float]:
    """Mean of each metric over the micro-batches that report it (some, e.g. RDist, need
    images a micro-batch may lack)."""
    keys = dict.fromkeys(k for o in outputs for k in o.metrics)
    means = {}
    for k in keys:
        values = [o.metrics[k] for o in outputs if k in o.metrics]
        means[k] = sum(values) / len(values)
    return means


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    grads = [p.grad.norm() for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, stage: str, step: int) -> None:
    """Forget a stage's lines past `step` (they belong to a run that is being redone)."""
    if not path.is_file():
        return
    rows = read_jsonl(path)
    kept = [r for r in rows if r.get("stage") != stage or r.get("step", 0) <= step]
    if len(kept) != len(rows):
        write_jsonl(path, kept)
