"""How a training step's time and peak memory grow with sequence length, batch size and the
number of experts, next to the analytic FLOPs `tinyvlm info` reports (time per GFLOP should
stay flat where the machine is compute-bound). The LM alone (the demo's 4x192 decoder, its
FFNs as MoE layers with top-2 routing for the expert sweep) on random tokens, fp32."""

from __future__ import annotations

import ctypes
import gc
import time
from typing import Any

import torch

from common import summarize
from tinyvlm.analysis import cost
from tinyvlm.config import LanguageConfig, MoEConfig
from tinyvlm.models.context import ForwardContext
from tinyvlm.models.language import LanguageModel


def lm(experts: int | None) -> LanguageModel:
    cfg = LanguageConfig(dim=192, depth=4, heads=6, kv_heads=2, max_seq_len=4096,
                         vocab_size=2048,
                         moe=None if experts is None else MoEConfig(experts=experts, top_k=2,
                                                                    layers="all"))
    torch.manual_seed(0)
    return LanguageModel(cfg).train()


def stepper(model: LanguageModel, batch: int, seq: int) -> Any:
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    pos = torch.arange(seq).expand(batch, seq)

    def step() -> None:
        h = model(model.embed(ids), pos, None, None, ForwardContext())
        model.lm_head(h).float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def timed(model: LanguageModel, batch: int, seq: int, repeats: int) -> dict[str, Any]:
    step = stepper(model, batch, seq)
    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    lang = model.config
    flops = 3 * batch * (cost.prefill_flops(lang, seq) + (seq - 1) * cost._logits_flops(lang))
    ms = summarize(times)["median_ms"]
    return {"batch": batch, "seq": seq, "experts": None if lang.moe is None
            else lang.moe.experts, "ms": ms, "gflop": flops / 1e9,
            "ms_per_gflop": ms / (flops / 1e9)}


def peak_mb(model: LanguageModel, batch: int, seq: int) -> float:
    """Peak memory of one step: torch's CPU allocator is malloc, so the resident
    high-water mark (VmHWM, reset just before with clear_refs 5) less what was resident.
    Call after every timing: it makes glibc return large blocks to the system at once,
    which slows what runs after it."""
    step = stepper(model, batch, seq)
    step()
    _LIBC.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD fixed: large blocks always mmap'd
    gc.collect()
    _LIBC.malloc_trim(0)
    before = _rss()
    _reset_peak()
    step()
    return (_rss_peak() - before) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


_LIBC = ctypes.CDLL("libc.so.6")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return 0


def run(quick: bool = False) -> dict[str, Any]:
    repeats = 2 if quick else 3
    dense = lm(None)
    sweeps = {"seq": [(dense, 4, s) for s in ([64, 256] if quick else
                                              [64, 128, 256, 512, 1024, 2048])],
              "batch": [(dense, b, 128) for b in ([1, 4] if quick else [1, 2, 4, 8, 16, 32])],
              "experts": [(lm(e), 8, 128) for e in ([2, 4] if quick else [2, 4, 8, 16])]}
    out: dict[str, Any] = {k: [timed(m, b, s, repeats) for m, b, s in v]
                           for k, v in sweeps.items()}
    for k, v in sweeps.items():  # after every timing (see peak_mb)
        for row, (m, b, s) in zip(out[k], v, strict=True):
            row["peak_mb"] = peak_mb(m, b, s)
    out["model"] = "LM 4x192, 6/2 heads, vocab 2048, fp32, forward+backward"
    out["peak_memory"] = ("resident high-water mark during one step, less the resident size "
                          "before it (activations, gradients, temporaries)")
    return out
