"""Generation throughput of `TinyVLM.generate`: with the KV cache vs without it, side by side.

The model is randomly initialised from the demo recipe's model config (the tokenizer is trained
on a small ShapesWorld written to a temporary directory); the prompts are real ShapesWorld test
questions with their images, left-padded by the evaluation collator, so every call also
encodes the images and prefills the prompt, as evaluation does.

For each batch size and number of new tokens, the cached path (`use_cache=True`) and its peer,
the uncached path (`use_cache=False`: every step recomputes the whole sequence), run
alternately on the same inputs. Reported: new tokens/s (batch * new tokens / median wall time
of one generate call), ms per call, and `cached_speedup` = uncached ms / cached ms. The script
also checks that both paths return identical tokens (greedy decoding): `identical`.

A configuration stops repeating once its timed runs have used `--budget-s` seconds (at least
one run each): the uncached path at batch 64 and 128 new tokens takes tens of seconds a call.
`runs` in the JSON says how many runs each median has.

    .venv/bin/python benchmarks/generate_throughput.py            # defaults (~1-3 min, 2 cores)
    .venv/bin/python benchmarks/generate_throughput.py --quick    # a few seconds
"""

from __future__ import annotations

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
from tinyvlm.data.collate import PromptCollator
from tinyvlm.data.images import ImageStore
from tinyvlm.data.llava import load_llava
from tinyvlm.models.vlm import TinyVLM

PATHS = {"cached": True, "uncached": False}


def make_eos_unreachable(model: TinyVLM) -> int:
    """Make every call generate exactly max_new_tokens; return the real EOS id.

    generate() stops a row at its first EOS. Random weights rarely emit it early, but rarely is
    not never, and a row that stops early would make the two paths do different work. Pushing
    the EOS logit down through the weights is awkward here: the head is tied to the embedding
    (its EOS row is also the input embedding of `<|end|>`, which every prompt contains) and has
    no bias to offset. Instead, eos_token_id points at -1, an id that argmax over the
    vocabulary can never return. The network computes exactly what it did before, and each
    step still runs the end-of-sequence bookkeeping (the `finished` mask and its `all()`
    check), so the timing is that of a model that simply has not finished yet.
    """
    eos = model.config.eos_token_id
    model.config.eos_token_id = -1
    return eos


def spread_weights(model: TinyVLM, seed: int) -> None:
    """Make greedy decoding of the random model wander over the vocabulary.

    At the library's initialisation (std 0.02, shrunk residual branches) the residual stream
    is nearly the input embedding, and the head is tied to the embedding, so greedy decoding
    repeats the prompt's last token forever: the cached and uncached paths would then agree
    trivially. Redrawing every linear layer except the tied head with std 1/sqrt(fan_in)
    lets the blocks dominate the stream, and the outputs become varied sequences (the JSON
    reports `distinct_tokens`). The amount of computation does not depend on the values.
    """
    generator = torch.Generator().manual_seed(seed)
    head = model.language.lm_head
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                std = module.in_features**-0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)


def generate(model: TinyVLM, batch: Any, new_tokens: int, use_cache: bool) -> torch.Tensor:
    return model.generate(
        batch.input_ids,
        batch.attention_mask,
        batch.pixel_values,
        max_new_tokens=new_tokens,
        use_cache=use_cache,
    )


def bench_config(model: TinyVLM, batch: Any, bs: int, n: int, args: Any) -> dict[str, Any]:
    times: dict[str, list[float]] = {k: [] for k in PATHS}
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in PATHS}
    spent = 0.0
    for i in range(args.repeats):
        if i and spent + spent / i > args.budget_s:  # the next run would pass the budget
            break
        for name, use_cache in PATHS.items():  # alternate: both share the machine's load
            start = time.perf_counter()
            out = generate(model, batch, n, use_cache)
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            outputs[name].append(out)
            spent += elapsed
    row: dict[str, Any] = {"batch_size": bs, "new_tokens": n}
    for name in PATHS:
        shapes = {tuple(o.shape) for o in outputs[name]}
        if shapes != {(bs, n)}:
            raise RuntimeError(f"{name} generate returned shapes {shapes}, expected {(bs, n)}")
        stats = summarize(times[name])
        row[name] = {
            "ms": stats["median_ms"],
            "new_tokens_per_s": bs * n / (stats["median_ms"] / 1e3),
            "time": stats,
        }
    ref = outputs["uncached"][0]
    same = [torch.equal(o, ref) for name in PATHS for o in outputs[name]]
    row["identical"] = all(same)
    row["distinct_tokens"] = len(set(ref.flatten().tolist()))
    if not row["identical"]:
        diff = outputs["cached"][0] != ref
        row["mismatch"] = {
            "tokens": int(diff.sum()),
            "rows": int(diff.any(1).sum()),
            "first_step": int(diff.any(0).nonzero()[0]) if diff.any() else None,
        }
    row["cached_speedup"] = ratio(row["uncached"]["ms"], row["cached"]["ms"])
    return row


def main() -> None:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="[default: 1 8 64; quick: 1 4]"
    )
    parser.add_argument(
        "--new-tokens", type=int, nargs="+", default=None, help="[default: 8 32 128; quick: 4 16]"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop repeating a configuration after this many seconds of timed "
        "runs (at least one run) [default: 30; quick: 5]",
    )
    args = parser.parse_args()
    quick = args.quick
    args.batch_sizes = args.batch_sizes or ([1, 4] if quick else [1, 8, 64])
    args.new_tokens = args.new_tokens or ([4, 16] if quick else [8, 32, 128])
    args.repeats = args.repeats or (2 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.budget_s = args.budget_s or (5.0 if quick else 30.0)
    if min(args.batch_sizes + args.new_tokens) < 1 or args.repeats < 1:
        parser.error("batch sizes, new-token counts and --repeats must be >= 1")
    setup_threads(args.threads)
    env = environment()
    start, meter = time.perf_counter(), LoadMeter()

    with tempfile.TemporaryDirectory(prefix="tinyvlm-bench-") as tmp:
        # The test split has one record per question (about 12 per image): enough prompts.
        num_test = max(2, -(-max(args.batch_sizes) // 6))
        log(f"generating ShapesWorld in {tmp} ...")
        demo = make_demo(
            Path(tmp), num_train=32 if quick else 200, num_test=num_test, seed=args.seed
        )
        model = build_model(demo, args.seed).eval()
        spread_weights(model, args.seed)
        eos = make_eos_unreachable(model)
        convs = load_llava(Path(tmp) / "test.json")
        if len(convs) < max(args.batch_sizes):
            raise SystemExit(f"only {len(convs)} prompts for batch {max(args.batch_sizes)}")
        collate = PromptCollator(
            demo.tokenizer, ImageStore(model.config.vision.image_size), model.image_tokens
        )
        batches = {bs: collate(convs[:bs]) for bs in args.batch_sizes}

    max_prompt = max(int(b.input_ids.shape[1]) for b in batches.values())
    limit = model.config.language.max_seq_len
    if max_prompt + max(args.new_tokens) > limit:
        raise SystemExit(
            f"prompt ({max_prompt}) + new tokens ({max(args.new_tokens)}) exceed "
            f"the model's max_seq_len {limit}"
        )
    for batch in batches.values():  # warm up every batch shape on both paths
        for _ in range(args.warmup):
            for use_cache in PATHS.values():
                generate(model, batch, min(args.new_tokens), use_cache)

    rows = []
    for bs in args.batch_sizes:
        for n in args.new_tokens:
            row = bench_config(model, batches[bs], bs, n, args)
            batch = batches[bs]
            row["prompt_len"] = int(batch.input_ids.shape[1])
            row["prompt_tokens"] = int(batch.attention_mask.sum())
            rows.append(row)
            log(
                f"batch {bs:3d} new {n:4d}: cached {row['cached']['new_tokens_per_s']:9.1f} tok/s"
                f" ({row['cached']['ms']:8.1f} ms) | uncached "
                f"{row['uncached']['new_tokens_per_s']:9.1f} tok/s "
                f"({row['uncached']['ms']:8.1f} ms) | {row['cached_speedup']:5.2f}x | "
                f"runs {row['cached']['time']['runs']} | identical {row['identical']} "
                f"({row['distinct_tokens']} distinct ids)"
            )

    emit(
        {
            "benchmark": "generate_throughput",
            "quick": quick,
            "settings": {
                "repeats": args.repeats,
                "warmup": args.warmup,
                "budget_s": args.budget_s,
                "seed": args.seed,
                "batch_sizes": args.batch_sizes,
                "new_tokens": args.new_tokens,
                "decoding": "greedy (temperature 0)",
                "precision": "fp32",
                "eos": f"unreachable (real id {eos} replaced by -1): exactly N new tokens",
                "statistic": "median over runs; cached_speedup = uncached ms / cached ms",
            },
            "environment": env,
            "model": {
                "recipe": "demo",
                "weights": "random",
                "parameters": model.num_parameters(),
                "vocab_size": model.config.language.vocab_size,
                "image_tokens": model.image_tokens,
            },
            "results": rows,
            "identical": all(r["identical"] for r in rows),
            "summary": {
                f"b{r['batch_size']}_n{r['new_tokens']}": {
                    "cached_tok_s": round(r["cached"]["new_tokens_per_s"], 1),
                    "uncached_tok_s": round(r["uncached"]["new_tokens_per_s"], 1),
                    "cached_speedup": round(r["cached_speedup"], 2),
                    "identical": r["identical"],
                }
                for r in rows
            },
            "machine_load": meter.report(),
            "wall_s": round(time.perf_counter() - start, 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
