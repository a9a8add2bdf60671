"""The MoE layer across the suite's grid: E in {4, 8, 16}, top-1 and top-2, training shapes
(forward + backward, 128-8192 tokens: `moe.bench_shape`, against transformers' Mixtral block
with identical weights and a dense SwiGLU of the same activated width) and decode shapes
(forward only, no grad, 1-64 tokens, where dispatch overhead dominates)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch
import transformers

from common import LoadMeter, log, ratio, summarize
from moe import (
    ATOL,
    RTOL,
    bench_shape,
    build_dense,
    build_mixtral,
    build_ours,
    default_experts_implementation,
)
from tinyvlm.models.context import ForwardContext

DIM, HIDDEN = 256, 512
IMPLS = ["eager", "grouped_mm"]


def decode_shape(tokens: int, experts: int, top_k: int, repeats: int,
                 default_impl: str) -> dict[str, Any]:
    """Forward only, eval mode, no grad: what one decoding step of a batch of `tokens`
    sequences costs in one MoE layer."""
    meter = LoadMeter()
    ours = build_ours(DIM, HIDDEN, experts, top_k, 0).eval()
    layers = {"ours": lambda x: ours(x, ForwardContext())}
    for impl in IMPLS:
        block = build_mixtral(ours, DIM, HIDDEN, impl).eval()
        layers[impl] = block
    dense = build_dense(DIM, top_k * HIDDEN, 0).eval()
    layers["dense"] = dense
    x = torch.randn(1, tokens, DIM, generator=torch.Generator().manual_seed(tokens))
    times: dict[str, list[float]] = {k: [] for k in layers}
    with torch.no_grad():
        ref = layers["ours"](x)
        for impl in IMPLS:
            torch.testing.assert_close(layers[impl](x), ref, atol=ATOL, rtol=RTOL)
        for i in range(repeats + 5):
            for name, layer in layers.items():
                t = time.perf_counter()
                layer(x)
                if i >= 5:
                    times[name].append(time.perf_counter() - t)
    ms = {k: summarize(v)["median_ms"] for k, v in times.items()}
    best = min(IMPLS, key=ms.__getitem__)
    return {"tokens": tokens, "experts": experts, "top_k": top_k, "mode": "decode",
            "ours_ms": ms["ours"], "dense_ms": ms["dense"],
            "mixtral_ms": ms[default_impl], "mixtral_impl": default_impl,
            "mixtral_best_ms": ms[best], "mixtral_best_impl": best,
            "mixtral_ms_by_impl": {i: ms[i] for i in IMPLS},
            "ours_over_dense": ratio(ms["ours"], ms["dense"]),
            "mixtral_best_over_ours": ratio(ms[best], ms["ours"]),
            "other_processes_cores": meter.report().get("other_processes_cores")}


def profile_shape(tokens: int, experts: int, top_k: int) -> dict[str, Any]:
    """Where a training step of our layer and of the dense FFN goes, by kind of op."""
    from bench_train_mfu import op_shares

    ours = build_ours(DIM, HIDDEN, experts, top_k, 0)
    dense = build_dense(DIM, top_k * HIDDEN, 0)
    x = torch.randn(1, tokens, DIM).requires_grad_(True)
    grad = torch.randn(1, tokens, DIM)

    def step(layer: Any) -> None:
        for _ in range(3):
            layer(x).backward(grad)

    step(lambda h: ours(h, ForwardContext()))
    return {"tokens": tokens, "experts": experts, "top_k": top_k,
            "ours": op_shares(lambda: step(lambda h: ours(h, ForwardContext()))),
            "dense": op_shares(lambda: step(dense))}


def run(quick: bool = False) -> dict[str, Any]:
    transformers.logging.set_verbosity_error()
    default_impl = default_experts_implementation()
    experts = [4] if quick else [4, 8, 16]
    top_ks = [2] if quick else [1, 2]
    train_tokens = [512] if quick else [128, 512, 2048, 8192]
    decode_tokens = [1, 16] if quick else [1, 8, 64]
    args = SimpleNamespace(dim=DIM, hidden=HIDDEN, seed=0, warmup=1 if quick else 2,
                           repeats=3 if quick else 5)
    rows = []
    for e in experts:
        for k in top_ks:
            for n in decode_tokens:
                rows.append(decode_shape(n, e, k, 10 if quick else 40, default_impl))
            for n in train_tokens:
                row = bench_shape(n, e, k, args, IMPLS, default_impl)
                row["mode"] = "train"
                rows.append(row)
            log(f"moe E={e} k={k}: " + ", ".join(
                f"{r['tokens']}:{r['ours_over_dense']:.2f}/{r['mixtral_best_over_ours']:.2f}"
                for r in rows[-len(decode_tokens) - len(train_tokens):]))
    return {"dim": DIM, "expert_hidden": HIDDEN, "rows": rows, "mixtral_default": default_impl,
            "profile": profile_shape(512, 4 if quick else 16, 1),
            "transformers": transformers.__version__, "threads": torch.get_num_threads()}
