"""The one training loop: every stage of every recipe runs through `train_stage`.

AdamW with a warmup + cosine schedule, gradient clipping and accumulation, fp32 or bf16
autocast, seeded sampling, atomic checkpoints and bit-exact resume. The model and the
objective are stepped as one module (`TrainStep`), and everything that depends on the device
or the process comes from a `Runtime`.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyvlm.config import MODEL_MODULES, StageConfig
from tinyvlm.cpu_share import CpuShare, share_restored
from tinyvlm.errors import InputError, TrainingInterrupted, closest
from tinyvlm.models.moe import router_losses
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.progress import Progress
from tinyvlm.rundir import RunDir
from tinyvlm.schema import to_dict
from tinyvlm.train.checkpoints import CheckpointContent, Checkpoints, train_state
from tinyvlm.train.objectives import LossOutput, Objective, TrainData
from tinyvlm.train.runtime import PRECISIONS, Runtime


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


def check_modules(stage: StageConfig) -> None:
    """The modules a stage trains or rescales exist, and its precision is known."""
    for name in [*stage.trainable, *stage.lr_scale]:
        if name not in MODEL_MODULES:
            raise InputError(f"stage '{stage.name}': unknown module '{name}'"
                             f"{closest(name, MODEL_MODULES)}; modules: "
                             f"{', '.join(MODEL_MODULES)}")
    if stage.precision not in PRECISIONS:
        raise InputError(f"stage '{stage.name}': precision must be fp32, bf16 or auto")


def configure_trainable(model: TinyVLM, objective: Objective, stage: StageConfig
                        ) -> list[dict[str, Any]]:
    """Freeze everything but the stage's modules; AdamW groups with per-module lr scales.

    Weight decay applies to matrices only: decaying norms, biases and positions hurts.
    """
    check_modules(stage)
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


class TrainStep(nn.Module):
    """The model and the objective as one module: a data-parallel wrapper around it sees
    every parameter that trains, the objective's heads included."""

    def __init__(self, model: TinyVLM, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Any) -> LossOutput:
        return self.objective(self.model, batch)


@dataclass
class _Trainer:
    """One stage's optimisation state and the pieces a step needs."""

    stage: StageConfig
    step_module: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    params: list[nn.Parameter]
    runtime: Runtime

    @classmethod
    def build(cls, model: TinyVLM, objective: Objective, stage: StageConfig,
              schedule: Any, runtime: Runtime) -> _Trainer:
        configure_trainable(model, objective, stage)  # requires_grad first: wrappers read it
        for frozen in objective.frozen_models():
            runtime.prepare_frozen(frozen)
        step_module = runtime.wrap(TrainStep(model, objective))
        # The groups after wrapping: a sharding wrapper replaces the parameters.
        groups = configure_trainable(model, objective, stage)
        optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=tuple(stage.betas))
        return cls(stage, step_module, objective, optimizer,
                   torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                   [p for g in groups for p in g["params"]], runtime)

    def checkpoint(self, model: TinyVLM, step: int, final: bool) -> CheckpointContent:
        """What a checkpoint of `step` holds (every process calls this: a sharding runtime
        gathers or writes shards). Sharded checkpoints hold the whole model only when
        `final`: the next stage and stage references read it."""
        base = {"step": step, "stage": to_dict(self.stage),
                "scheduler": self.scheduler.state_dict()}
        rt = self.runtime
        if rt.sharded_checkpoints:
            whole = rt.gathered_model(model) if final else None
            return CheckpointContent(whole, base,  # type: ignore[arg-type]
                                     train_state(self.step_module, self.optimizer),
                                     rt.rng_state(), rt.rank)
        plain, optim, objective = rt.checkpoint_view(model, self.step_module, self.optimizer)
        return CheckpointContent(plain, {**base, "objective": objective,  # type: ignore
                                         "optimizer": optim, **rt.rng_state()})

    def load(self, model: TinyVLM, ckpts: Checkpoints, step: int) -> None:
        """Checkpoint `step` (either kind, made by any number of processes) into the model,
        objective, optimizer, scheduler and random state."""
        tensors, state = ckpts.read(step)
        if tensors is None:
            rng = ckpts.read_shards(step, self.step_module, self.optimizer, self.runtime.rank)
        else:
            self.runtime.load_checkpoint(model, self.step_module, tensors, self.optimizer,
                                         state["optimizer"], state["objective"],
                                         ckpts.path(step))
            rng = state
        self.scheduler.load_state_dict(state["scheduler"])
        self.runtime.set_rng_state(rng)

    def step(self, micro: Sequence[Any]) -> tuple[float, float, list[LossOutput]]:
        """One optimizer step over the micro-batches: (loss, grad norm, their outputs). A
        non-finite loss or gradient raises NonFiniteStep before the weights change."""
        outputs = []
        for i, batch in enumerate(micro):
            with self.runtime.accumulate(self.step_module, last=i == len(micro) - 1):
                with self.runtime.autocast(self.stage.precision):
                    out = self.step_module(batch.to(self.runtime.device))
                outputs.append(out)
                # MoE auxiliary losses enter here and only here: counted once, logged apart.
                aux, router_metrics = router_losses(out.records)
                out.metrics.update(router_metrics)
                total = out.loss if aux is None else out.loss + aux
                # Scale so the accumulated gradient is the mean over all units of the step.
                total.mul(out.units).backward()
        units = self.runtime.all_reduce_sum(sum(o.units for o in outputs)) or 1.0
        # A data-parallel wrapper averaged the summed gradients over processes: scale back
        # (one process divides exactly as it always has).
        average = self.runtime.gradient_average
        for p in self.params:
            if p.grad is not None:
                if average != 1:
                    p.grad.mul_(average)
                p.grad.div_(units)
        clip = self.stage.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip) if clip \
            else _grad_norm(self.params)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        loss = self.runtime.all_reduce_sum(
            sum(float(o.loss.detach()) * o.units for o in outputs)) / units
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()  # the schedule stays a function of the step
            raise NonFiniteStep(loss, grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, outputs


class NonFiniteStep(Exception):
    def __init__(self, loss: float, grad_norm: float):
        super().__init__(f"loss {loss}, gradient norm {grad_norm}")
        self.loss, self.grad_norm = loss, grad_norm


class TrainingDiverged(InputError):
    """A stage stopped at a step whose loss or gradient was not finite."""


class _StopRequest:
    """SIGINT and SIGTERM ask the loop to stop at the end of the current step (the step's
    update is never cut in half); a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.asked = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_stage(
    model: TinyVLM,
    stage: StageConfig,
    objective: Objective,
    data: TrainData,
    run_dir: str | Path | RunDir,
    resume: bool = False,
    progress: bool = True,
    runtime: Runtime | None = None,
    depends: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run one stage for `stage.steps` optimizer steps; return its logged metrics.
    `depends` (what the stage's checkpoints depend on) is stored with each checkpoint and
    compared on resume."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    runtime = runtime or Runtime()
    ckpts = Checkpoints(run, stage.name, stage.keep_checkpoints, depends, fresh=not resume)
    torch.manual_seed(stage.seed)
    schedule = lr_lambda(stage)
    trainer = _Trainer.build(model, objective, stage, schedule, runtime)
    sampler = BatchSampler(len(data.items), stage.batch_size, stage.seed)
    start = _restore_or_reset(run, ckpts, trainer, model, stage, resume)
    model.train()
    objective.train()
    logged: list[dict[str, Any]] = []
    window = _Window()
    bar = Progress(stage.steps, stage.name, "step", start,
                   enabled=progress and runtime.is_main)
    skipped = 0
    share = CpuShare(enabled=runtime.device.type == "cpu")
    with _StopRequest() as stop, share_restored(share):
        for step in range(start, stage.steps):
            share.tick()
            tick = time.perf_counter()
            micro = [data.collate([data.items[i] for i in
                                   runtime.shard(sampler(step * stage.grad_accum + k))])
                     for k in range(stage.grad_accum)]
            try:
                loss, grad_norm, outputs = trainer.step(micro)
                window.add(loss, sum(b.num_tokens for b in micro), time.perf_counter() - tick,
                           runtime.mean_metrics(_metric_sums(outputs)))
            except NonFiniteStep as e:
                if stage.on_nonfinite == "stop":
                    raise _diverged(stage, step, e, ckpts) from None
                skipped += 1  # no update and no loss in the log window
                loss, grad_norm = e.loss, e.grad_norm
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{window.tokens_per_s:,.0f}")
            if done % stage.log_every == 0 or done == stage.steps:
                logged.append(window.row(stage, done, stage.lr * schedule(step), grad_norm,
                                         skipped))
                run.append_metrics(logged[-1])
                window = _Window()
            at_checkpoint = done == stage.steps or (stage.checkpoint_every
                                                    and done % stage.checkpoint_every == 0)
            # A signal reaches the processes at different moments: they stop together, at
            # the step boundary any of them saw it by (a save is a collective).
            asked = runtime.all_reduce_sum(float(stop.asked)) > 0
            if at_checkpoint or asked:
                ckpts.save(done, trainer.checkpoint(model, done, done == stage.steps),
                           runtime.barrier)
            if asked and done < stage.steps:
                bar.close()
                raise TrainingInterrupted(stage.name, done, True)
    bar.close()
    model.eval()
    model.requires_grad_(True)
    return logged


def _diverged(stage: StageConfig, step: int, e: NonFiniteStep, ckpts: Checkpoints
              ) -> TrainingDiverged:
    steps = ckpts.steps()
    last = f"its last checkpoint is step {steps[-1]}" if steps else "it has no checkpoint yet"
    return TrainingDiverged(
        f"stage '{stage.name}' stopped at step {step + 1}: {e} (lr {stage.lr}); nothing of "
        f"this step was saved and {last}. Lower the lr, or set on_nonfinite: skip")


def _restore_or_reset(run: RunDir, ckpts: Checkpoints, trainer: _Trainer, model: TinyVLM,
                      stage: StageConfig, resume: bool) -> int:
    """The step to start from: the newest good checkpoint's on resume (0 without one); 0 on a
    fresh start (whose first checkpoint replaces an earlier run's). metrics.jsonl keeps no
    line of the stage past it."""
    run.clear_temporaries(stage.name)
    if not resume:
        run.truncate_metrics(stage.name, 0)
        return 0
    step = ckpts.latest_good()
    if step is None:
        run.truncate_metrics(stage.name, 0)
        return 0
    ckpts.check_settings(step)
    trainer.load(model, ckpts, step)
    run.truncate_metrics(stage.name, step)
    return step


def completed(run_dir: str | Path | RunDir, stage: StageConfig,
              depends: dict[str, Any] | None = None) -> bool:
    """Whether the stage finished: its final checkpoint is there and intact (an InputError
    when it was made with other settings)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    ckpts = Checkpoints(run, stage.name, stage.keep_checkpoints, depends)
    done = (stage.steps in ckpts.steps()
            and ckpts.problem(stage.steps, need_model=True) is None)
    if done:
        ckpts.check_settings(stage.steps)
    return done


def load_final(run_dir: str | Path | RunDir, stage: StageConfig, model: TinyVLM) -> None:
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    Checkpoints(run, stage.name, stage.keep_checkpoints).restore(stage.steps, model)


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

    def row(self, stage: StageConfig, step: int, lr: float, grad_norm: float, skipped: int
            ) -> dict[str, Any]:
        """The metrics.jsonl line for the steps since the last one."""
        row = {"stage": stage.name, "step": step, "loss": self.loss, "lr": lr,
               "grad_norm": grad_norm, "tokens_per_s": self.tokens_per_s, **self.metrics()}
        if stage.on_nonfinite == "skip":
            row["skipped_steps"] = skipped
        return row


def _metric_sums(outputs: list[LossOutput]) -> dict[str, tuple[float, float]]:
    """Each metric weighted by its micro-batch's units (tokens, patches, pairs), summed with
    the units, over the micro-batches that report it (some, e.g. RDist, need images a
    micro-batch may lack); the runtime turns them into means over every process's units,
    as the loss is."""
    sums: dict[str, tuple[float, float]] = {}
    for o in outputs:
        for k, v in o.metrics.items():
            total, n = sums.get(k, (0.0, 0.0))
            sums[k] = (total + v * o.units, n + o.units)
    return sums


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    grads = [p.grad.norm() for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
