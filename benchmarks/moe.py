"""Sparse MoE layer: forward+backward time of tinyvlm's MoE against transformers' Mixtral block.

For every number of tokens, experts E and top-k, three layers get the same input (tokens x H,
fp32, requiring grad) and the same output gradient, and each step is one forward and one
backward (the gradients of the input and of every weight):

- `ours`: `tinyvlm.models.moe.MoE` (dropless routing; it also computes its auxiliary losses
  and router record, as it does in training);
- `mixtral`: transformers' `MixtralSparseMoeBlock` with identical weights (router, stacked
  `gate_up_proj` and `down_proj`), once per experts implementation in `--impls`; `mixtral_ms`
  is the implementation transformers picks by default for a Mixtral model (`mixtral_impl`),
  `mixtral_best_ms` the fastest of those measured;
- `dense`: a SwiGLU FFN with the same activated parameters per token (hidden width
  top_k x I), the cost the sparse layer is meant to match.

Before timing, ours and every Mixtral implementation must give the same outputs on the shape
(atol = rtol = 1e-5), so the comparison is of equal work. Timed steps alternate between the
layers (ours, Mixtral..., dense, ours, ...) so they share the machine's load; the figure is
the median of `--repeats` steps after `--warmup` untimed ones. Ratios: `mixtral_over_ours`
(above 1: ours is faster) and `ours_over_dense` (above 1: the sparse layer costs more than
the dense FFN it replaces).

Prints a JSON list of rows (one per shape) to stdout; progress and a table go to stderr.

    .venv/bin/python benchmarks/moe.py                        # 20 shapes, a few minutes
    .venv/bin/python benchmarks/moe.py --quick --threads 1    # one small shape, seconds
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralModel, MixtralSparseMoeBlock

from common import LoadMeter, base_parser, environment, log, ratio, setup_threads, summarize
from tinyvlm.config import MoEConfig
from tinyvlm.models.context import ForwardContext
from tinyvlm.models.layers import SwiGLU
from tinyvlm.models.moe import MoE

IMPLS = ("eager", "batched_mm", "grouped_mm")
# batched_mm gathers a copy of the expert weights for every (token, choice) pair: meant for
# decoding a few tokens, it needs gigabytes and seconds at these sizes. Shapes whose gathered
# weights exceed this are skipped (null in the JSON).
BATCHED_MM_MAX_BYTES = 2 << 30
ATOL = RTOL = 1e-5


def default_experts_implementation() -> str:
    """What transformers sets `config._experts_implementation` to when it builds a Mixtral
    model without being told (a standalone block built from a bare config runs eager)."""
    cfg = MixtralConfig(
        vocab_size=8,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        num_local_experts=2,
        num_experts_per_tok=1,
    )
    return str(MixtralModel(cfg).config._experts_implementation)


def build_ours(dim: int, hidden: int, experts: int, top_k: int, seed: int) -> MoE:
    """Our layer with weights drawn so that the outputs are O(1) and the router has real
    preferences (logits with standard deviation about 1) but no collapse."""
    torch.manual_seed(seed)
    moe = MoE(dim, hidden, MoEConfig(experts=experts, top_k=top_k), name="bench")
    with torch.no_grad():
        moe.router.weight.normal_(std=dim**-0.5)
        moe.gate_up_proj.normal_(std=dim**-0.5)
        moe.down_proj.normal_(std=hidden**-0.5)
    return moe.train()


def build_mixtral(ours: MoE, dim: int, hidden: int, impl: str) -> MixtralSparseMoeBlock:
    cfg = MixtralConfig(
        hidden_size=dim,
        intermediate_size=hidden,
        num_local_experts=ours.num_experts,
        num_experts_per_tok=ours.top_k,
        router_jitter_noise=0.0,
        experts_implementation=impl,
    )
    block = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():
        block.gate.weight.copy_(ours.router.weight[0])
        block.experts.gate_up_proj.copy_(ours.gate_up_proj)
        block.experts.down_proj.copy_(ours.down_proj)
    return block.train()


def build_dense(dim: int, hidden: int, seed: int) -> SwiGLU:
    torch.manual_seed(seed + 1)
    dense = SwiGLU(dim, hidden)
    with torch.no_grad():
        for layer in (dense.gate, dense.up):
            layer.weight.normal_(std=dim**-0.5)
        dense.down.weight.normal_(std=hidden**-0.5)
    return dense.train()


class Timed:
    """One layer's training step (forward + backward) on a fixed input and output gradient."""

    def __init__(self, forward: Callable[[Tensor], Tensor], module: nn.Module):
        self.forward, self.module = forward, module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.times: list[float] = []

    def step(self, x: Tensor, grad: Tensor, record: bool) -> Tensor:
        start = time.perf_counter()
        y = self.forward(x)
        y.backward(grad)
        elapsed = time.perf_counter() - start
        for p in self.params:
            p.grad = None
        x.grad = None
        if record:
            self.times.append(elapsed)
        return y.detach()

    @property
    def median_ms(self) -> float:
        return summarize(self.times)["median_ms"]


def batched_mm_bytes(tokens: int, top_k: int, dim: int, hidden: int) -> int:
    return tokens * top_k * 3 * dim * hidden * 4


def bench_shape(
    tokens: int, experts: int, top_k: int, args: Any, impls: list[str], default_impl: str
) -> dict[str, Any]:
    dim, hidden = args.dim, args.hidden
    meter = LoadMeter()
    ours = build_ours(dim, hidden, experts, top_k, args.seed)
    layers: dict[str, Timed] = {"ours": Timed(lambda x: ours(x, ForwardContext()), ours)}
    skipped = []
    for impl in impls:
        if impl == "batched_mm" and batched_mm_bytes(tokens, top_k, dim, hidden) > (
            BATCHED_MM_MAX_BYTES
        ):
            skipped.append(impl)
            continue
        block = build_mixtral(ours, dim, hidden, impl)
        layers[impl] = Timed(block, block)
    dense = build_dense(dim, top_k * hidden, args.seed)
    layers["dense"] = Timed(dense, dense)

    generator = torch.Generator().manual_seed(args.seed + tokens)
    x = torch.randn(1, tokens, dim, generator=generator).requires_grad_(True)
    grad = torch.randn(1, tokens, dim, generator=generator)

    # Equal work: the first (untimed) step of every Mixtral implementation must reproduce ours.
    ctx = ForwardContext()
    with torch.no_grad():
        reference = ours(x, ctx)
    record = ctx.records[0]
    diffs = {}
    for impl in impls:
        if impl in layers:
            out = layers[impl].step(x, grad, record=False)
            torch.testing.assert_close(out, reference, atol=ATOL, rtol=RTOL)
            diffs[impl] = float((out - reference).abs().max())

    for _ in range(args.warmup):
        for layer in layers.values():
            layer.step(x, grad, record=False)
    for _ in range(args.repeats):
        for layer in layers.values():
            layer.step(x, grad, record=True)

    measured = {impl: layers[impl].median_ms for impl in impls if impl in layers}
    ours_ms, dense_ms = layers["ours"].median_ms, layers["dense"].median_ms
    mixtral_ms = measured.get(default_impl)
    best_impl = min(measured, key=measured.__getitem__) if measured else None
    best_ms = measured[best_impl] if best_impl is not None else None
    ours_spread = summarize(layers["ours"].times)
    row: dict[str, Any] = {
        "tokens": tokens,
        "experts": experts,
        "top_k": top_k,
        "dim": dim,
        "expert_hidden": hidden,
        "dense_hidden": top_k * hidden,
        "ours_ms": ours_ms,
        "mixtral_ms": mixtral_ms,
        "mixtral_impl": default_impl,
        "dense_ms": dense_ms,
        "mixtral_over_ours": ratio(mixtral_ms, ours_ms) if mixtral_ms is not None else None,
        "ours_over_dense": ratio(ours_ms, dense_ms),
        "mixtral_best_ms": best_ms,
        "mixtral_best_impl": best_impl,
        "mixtral_best_over_ours": ratio(best_ms, ours_ms) if best_ms is not None else None,
        "mixtral_ms_by_impl": {impl: measured.get(impl) for impl in impls},
        "ours_p25_ms": ours_spread["p25_ms"],
        "ours_p75_ms": ours_spread["p75_ms"],
        "max_abs_diff": diffs,
        "load_imbalance": record.imbalance,
        "runs": args.repeats,
        "warmup": args.warmup,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "other_processes_cores": meter.report().get("other_processes_cores"),
    }
    if skipped:
        row["skipped_impls"] = skipped
    return row


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--tokens", type=int, nargs="+", default=None, help="[default: 512 1024 2048 4096 8192]"
    )
    parser.add_argument("--experts", type=int, nargs="+", default=None, help="[default: 4 8]")
    parser.add_argument("--top-k", type=int, nargs="+", default=None, help="[default: 1 2]")
    parser.add_argument("--dim", type=int, default=256, help="hidden size H [default: 256]")
    parser.add_argument(
        "--hidden", type=int, default=512, help="each expert's hidden width I [default: 512]"
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=None,
        help="transformers experts implementations to time [default: eager grouped_mm; "
        "batched_mm is ~100x slower at these sizes and skipped above 2 GiB of gathered weights]",
    )
    args = parser.parse_args()
    quick = args.quick
    args.tokens = args.tokens or ([512] if quick else [512, 1024, 2048, 4096, 8192])
    args.experts = args.experts or ([4] if quick else [4, 8])
    args.top_k = args.top_k or ([2] if quick else [1, 2])
    args.repeats = args.repeats or (3 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    if min(args.tokens + args.experts + args.top_k) < 1 or args.repeats < 1:
        parser.error("--tokens, --experts, --top-k and --repeats must be >= 1")
    if any(k > e for k in args.top_k for e in args.experts):
        parser.error("--top-k must not exceed --experts")
    setup_threads(args.threads)
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    default_impl = default_experts_implementation()
    impls = list(dict.fromkeys(args.impls or ["eager", "grouped_mm"]))
    if default_impl not in impls:
        impls.insert(0, default_impl)
    env = environment()
    log(
        f"torch {env['torch']}, transformers {transformers.__version__}, "
        f"{env['torch_threads']} threads, {env['processor']}; H={args.dim}, I={args.hidden}, "
        f"fp32; Mixtral default experts implementation: {default_impl}; timing {impls}"
    )
    log(
        f"{'tokens':>6} {'E':>2} {'k':>2} {'ours':>8} {'mixtral':>8} {'best':>8} "
        f"{'dense':>8} {'mix/ours':>8} {'ours/dense':>10}  (ms, fwd+bwd)"
    )
    rows = []
    start, meter = time.perf_counter(), LoadMeter()
    for experts in args.experts:
        for top_k in args.top_k:
            for tokens in args.tokens:
                row = bench_shape(tokens, experts, top_k, args, impls, default_impl)
                rows.append(row)
                log(
                    f"{tokens:>6} {experts:>2} {top_k:>2} {fmt(row['ours_ms']):>8} "
                    f"{fmt(row['mixtral_ms']):>8} {fmt(row['mixtral_best_ms']):>8} "
                    f"{fmt(row['dense_ms']):>8} {fmt(row['mixtral_over_ours'], 2):>8} "
                    f"{fmt(row['ours_over_dense'], 2):>10}"
                )
                gc.collect()
    load = meter.report()
    log(f"done in {time.perf_counter() - start:.0f} s; machine load: {load}")
    text = json.dumps(rows, indent=2)
    print(text, flush=True)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
