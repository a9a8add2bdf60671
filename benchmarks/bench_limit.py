"""The machine's limits: torch GEMM GFLOP/s (fp32 and bf16, at the shapes the models use)
and memory bandwidth (a large tensor copy). Every later figure of the suite is also given as
a share of these."""

from __future__ import annotations

import time
from typing import Any

import torch

from common import summarize

# (M, K, N) as the models meet them: tokens x width -> width, FFN up and down projections
# of the demo LM (192), the MoE benchmark layer (256 -> 512) and wider models (512, 1024).
SHAPES = [(2048, 192, 192), (2048, 192, 512), (2048, 256, 512), (2048, 512, 256),
          (2048, 512, 1536), (2048, 1024, 1024), (4096, 1024, 2816)]
QUICK_SHAPES = [(512, 256, 512), (1024, 512, 512)]


def gemm(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> dict[str, Any]:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t)
    s = summarize(times)
    return {"m": m, "k": k, "n": n, "dtype": str(dtype).removeprefix("torch."),
            "gflops": 2 * m * k * n / (s["min_ms"] / 1e3) / 1e9,
            "gflops_median": 2 * m * k * n / (s["median_ms"] / 1e3) / 1e9, "runs": s["runs"]}


def copy_bandwidth(megabytes: int, seconds: float) -> dict[str, Any]:
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    s = summarize(times)
    moved = 2 * src.numel() * 4  # read + write
    return {"megabytes": megabytes, "gb_per_s": moved / (s["min_ms"] / 1e3) / 1e9,
            "gb_per_s_median": moved / (s["median_ms"] / 1e3) / 1e9, "runs": s["runs"]}


def run(quick: bool = False) -> dict[str, Any]:
    seconds = 0.3 if quick else 1.5
    shapes = QUICK_SHAPES if quick else SHAPES
    rows = [gemm(m, k, n, dtype, seconds) for m, k, n in shapes
            for dtype in (torch.float32, torch.bfloat16)]
    peak = {d: max(r["gflops"] for r in rows if r["dtype"] == d) for d in ("float32",
                                                                           "bfloat16")}
    return {"gemm": rows, "peak_gflops": peak,
            "copy": copy_bandwidth(64 if quick else 512, seconds),
            "threads": torch.get_num_threads()}
