"""Training steps against the machine's limit: tokens/s and model FLOPs utilisation (model
FLOPs / the GEMM peak `bench_limit` measured, per precision) of an SFT step of the demo
teacher, a sparse student (4 experts top-2 in every other block) and wider models (dim 512
and 1024), fp32 and bf16 autocast, on real ShapesWorld batches; where a step's time goes (a
profile of the widest model); a mimic step with the teacher running against one reading its
cached top-k; evaluation samples/s.

Model FLOPs of a step: 3x the forward (backward costs two forwards) over the padded batch:
the ViT per image, the connector, and every LM position's weight matmuls, attention and
logits (`tinyvlm.analysis.cost`)."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import Demo, build_model, log, make_demo, summarize
from tinyvlm.analysis import cost
from tinyvlm.config import MimicConfig, MoEConfig, StageConfig
from tinyvlm.train.loop import configure_trainable
from tinyvlm.train.objectives import build_objective
from tinyvlm.train.runtime import Runtime

BATCH = 16


def step_flops(model: Any, batch: Any) -> int:
    """Model FLOPs of one training step (forward + backward) on `batch`."""
    cfg = model.config
    lang = cfg.language
    b, t = batch.input_ids.shape
    images = 0 if batch.pixel_values is None else int(batch.pixel_values.shape[0])
    vision = cost.vision_flops_per_image(cfg.vision) * images
    connector = cost._connector(cfg)[1] * images
    per_seq = cost.prefill_flops(lang, t) + (t - 1) * cost._logits_flops(lang)
    return 3 * (vision + connector + b * per_seq)


def variant(demo: Demo, name: str) -> Demo:
    recipe = copy.deepcopy(demo.recipe)
    lang = recipe.model.language
    if name == "moe-student":
        lang.moe = MoEConfig(experts=4, top_k=2, layers="every-other")
    elif name.startswith("wide-"):
        lang.dim = int(name.removeprefix("wide-"))
        lang.heads, lang.kv_heads = lang.dim // 64, max(1, lang.dim // 128)
    return Demo(recipe, demo.data_dir, demo.tokenizer)


class Stepper:
    """The loop's step: forward (autocast as configured), backward, clip, AdamW, zero_grad."""

    def __init__(self, demo: Demo, precision: str, objective: str = "sft",
                 stage_kw: dict | None = None):
        self.model = build_model(demo, 0).train()
        self.stage = StageConfig(name="b", objective=objective, batch_size=BATCH,
                                 precision=precision, **(stage_kw or {}))
        self.objective = build_objective(objective, self.model, self.stage)
        self.data = self.objective.data(self.model, demo.recipe.data, self.stage)
        self.batch = self.data.collate(self.data.items[:BATCH])
        groups = configure_trainable(self.model, self.objective, self.stage)
        self.opt = torch.optim.AdamW(groups, lr=1e-4)
        self.params = [p for g in groups for p in g["params"]]
        self.runtime = Runtime()
        self.times: list[float] = []

    def step(self, record: bool = True) -> None:
        t = time.perf_counter()
        with self.runtime.autocast(self.stage.precision):
            out = self.objective(self.model, self.batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if record:
            self.times.append(time.perf_counter() - t)

    @property
    def inner(self) -> Any:
        b = self.batch
        return getattr(b, "student", None) or getattr(b, "batch", None) or b


def alternate(steppers: dict[str, Stepper], warmup: int, repeats: int) -> dict[str, float]:
    for s in steppers.values():
        for _ in range(warmup):
            s.step(record=False)
    for _ in range(repeats):
        for s in steppers.values():
            s.step()
    return {k: summarize(s.times)["median_ms"] for k, s in steppers.items()}


def profile_step(stepper: Stepper) -> dict[str, float]:
    """Shares of a step's CPU time by kind of op."""
    return op_shares(lambda: stepper.step(record=False))


def op_shares(fn: Any) -> dict[str, float]:
    """Shares of `fn`'s CPU time by kind of op (torch.profiler, self time)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    kinds = {"matmul": ("mm", "addmm", "bmm", "baddbmm", "linear", "matmul"),
             "attention": ("scaled_dot_product", "flash_attention"),
             "optimizer": ("_fused_adamw", "adamw", "_foreach", "lerp", "addcdiv"),
             "norm+activation": ("rms_norm", "layer_norm", "silu", "gelu", "softmax")}
    totals = dict.fromkeys([*kinds, "other"], 0.0)
    for ev in prof.key_averages():
        name = ev.key.removeprefix("aten::")
        kind = next((k for k, keys in kinds.items() if any(x in name for x in keys)), "other")
        totals[kind] += ev.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


def run(peak: dict[str, float], quick: bool = False) -> dict[str, Any]:
    repeats, warmup = (2, 1) if quick else (4, 1)
    names = ["demo", "moe-student"] + ([] if quick else ["wide-512", "wide-1024"])
    rows, prof = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo(Path(tmp) / "data", 64, 32)
        for name in names:
            steppers = {p: Stepper(variant(demo, name), p) for p in ("fp32", "bf16")}
            ms = alternate(steppers, warmup, repeats)
            s = steppers["fp32"]
            flops = step_flops(s.model, s.inner)
            tokens = int(s.inner.attention_mask.sum())
            for p, t in ms.items():
                achieved = flops / (t / 1e3) / 1e9
                rows.append({"model": name, "precision": p, "ms_per_step": t,
                             "tokens_per_s": tokens / (t / 1e3), "gflops": achieved,
                             "mfu": achieved / peak["float32" if p == "fp32" else "bfloat16"],
                             "step_gflop": flops / 1e9, "padded_tokens":
                             int(s.inner.input_ids.numel()),
                             "parameters": sum(x.numel() for x in s.model.parameters())})
                log(f"train {name} {p}: {t:.0f} ms/step, {achieved:.0f} GFLOP/s, "
                    f"MFU {rows[-1]['mfu']:.0%}")
            if name == names[-1]:
                prof = {p: profile_step(st) for p, st in steppers.items()}
        distill = distill_rows(demo, Path(tmp), warmup, repeats)
        evals = eval_rate(demo, quick)
    return {"rows": rows, "profile": {"model": names[-1], **prof}, "distill": distill,
            "eval": evals, "batch": BATCH, "threads": torch.get_num_threads()}


def distill_rows(demo: Demo, tmp: Path, warmup: int, repeats: int) -> dict[str, Any]:
    """A mimic step with the teacher running vs reading its cached top-64 logits."""
    from tinyvlm.train.teacher_cache import cache_teacher

    teacher = build_model(variant(demo, "wide-512"), 1)
    teacher.save_pretrained(tmp / "teacher")
    student = build_model(demo, 0)
    stage = StageConfig(name="m", objective="mimic", batch_size=BATCH,
                        mimic=MimicConfig(teacher=str(tmp / "teacher")))
    data = copy.deepcopy(demo.recipe.data)
    cache = cache_teacher(tmp / "teacher", student, data, stage, tmp / "cache", top_k=64,
                          progress=False)
    steppers = {
        "online": Stepper(demo, "fp32", "mimic", {"mimic": MimicConfig(
            teacher=str(tmp / "teacher"))}),
        "cached": Stepper(demo, "fp32", "mimic", {"mimic": MimicConfig(cache=str(cache))}),
    }
    ms = alternate(steppers, warmup, repeats)
    log(f"distill: online {ms['online']:.0f} ms/step, cached {ms['cached']:.0f} ms/step")
    return {"online_ms": ms["online"], "cached_ms": ms["cached"],
            "cached_speedup": ms["online"] / ms["cached"], "teacher": "wide-512"}


def eval_rate(demo: Demo, quick: bool) -> dict[str, Any]:
    """Evaluation throughput: the engine answering test questions (6 new tokens, batch 64)."""
    from tinyvlm.data.llava import load_llava
    from tinyvlm.infer import Engine, Sampling

    model = build_model(demo, 0).eval()
    engine = Engine(model, batch_size=64)
    convs = load_llava(Path(demo.data_dir) / "test.json")
    n = 64 if quick else 256
    prompts = [engine.encode_conversation(c) for c in (convs * 10)[:n]]
    engine.generate(prompts[:64], Sampling(max_new_tokens=6))  # warm-up
    t = time.perf_counter()
    engine.generate(prompts, Sampling(max_new_tokens=6))
    seconds = time.perf_counter() - t
    log(f"eval: {n / seconds:.0f} samples/s")
    return {"samples": n, "samples_per_s": n / seconds, "max_new_tokens": 6, "batch": 64}
