"""Cheaper perception on ShapesWorld: the table of docs/perception.md.

Reads a run of `tinyvlm demo --recipe perception` (its results.json: accuracy per capability,
POPE F1, analytic FLOPs and KV bytes), loads every row's model (training-free rows through the
recipe's eval.overrides) and measures, side by side in one process, prefill latency (one test
image and its question, batch 1: vision, connector and the LM's prompt pass) and decode
tokens/s (batch 1, greedy, 16 new tokens with the KV cache). Prints JSON with each row's
ratios against the `mlp` row; --markdown prints the table; --plot writes accuracy against
prefill FLOPs as a PNG.

    python benchmarks/perception.py runs/perception --markdown --plot docs/img/perception.png
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LoadMeter, base_parser, emit, environment, log, ratio, setup_threads, summarize
from tinyvlm.config import load_recipe
from tinyvlm.data.images import ImageStore
from tinyvlm.data.llava import load_llava
from tinyvlm.train.pipeline import report_models

CAPABILITIES = ("CNT", "OCR", "RLA", "ATTR", "EXIST")


def trained_params(recipe: Any, row: str, model: Any) -> int:
    """Parameters the row's own last stage trained (0 for a training-free variant)."""
    if row in recipe.eval.overrides:
        return 0
    ref = recipe.eval.models[row].removeprefix("stage:")
    stage = next(s for s in recipe.stages if s.name == ref)
    return sum(p.numel() for name in stage.trainable
               for p in getattr(model, name).parameters())


def measure(model: Any, ids: torch.Tensor, pixels: torch.Tensor, repeats: int, warmup: int,
            new_tokens: int) -> dict[str, Any]:
    """Prefill: generate one token; decode: (generate 1 + new_tokens) minus that, per token.
    The end token is switched off while timing, so every call decodes all its tokens."""
    rows = torch.tensor([0])
    eos, stops = model.config.eos_token_id, model.config.stop_token_ids
    model.config.eos_token_id, model.config.stop_token_ids = -1, []
    short, long = [], []
    try:
        for i in range(warmup + repeats):
            with torch.inference_mode():
                tick = time.perf_counter()
                model.generate(ids, pixel_values=pixels, image_rows=rows, max_new_tokens=1)
                mid = time.perf_counter()
                model.generate(ids, pixel_values=pixels, image_rows=rows,
                               max_new_tokens=1 + new_tokens)
                end = time.perf_counter()
            if i >= warmup:
                short.append(mid - tick)
                long.append(end - mid)
    finally:
        model.config.eos_token_id, model.config.stop_token_ids = eos, stops
    p, q = summarize(short), summarize(long)
    per_token = (q["median_ms"] - p["median_ms"]) / new_tokens
    return {"prefill_ms": p["median_ms"], "prefill": p, "generate_ms": q,
            "decode_tokens_per_s": 1e3 / per_token if per_token > 0 else None}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run of tinyvlm demo --recipe perception")
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    parser.add_argument("--plot", type=Path, default=None, help="write accuracy vs FLOPs")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    setup_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    meter = LoadMeter()
    recipe = load_recipe(args.run / "recipe.yaml")
    recipe.data.path = str(args.run / "data") if not Path(recipe.data.path).is_absolute() \
        else recipe.data.path
    results = {m["name"]: m for m in json.loads((args.run / "results.json").read_text())
               ["models"]}
    models = report_models(recipe, args.run, None)  # type: ignore[arg-type]
    item = load_llava(Path(recipe.data.path) / "test.json")[0]
    rows: dict[str, Any] = {}
    for name, model in models.items():
        log(f"{name}: timing")
        tok = model.tokenizer
        ids = torch.tensor([tok.encode_prompt([], item.turns[0][0], model.image_tokens)])
        pixels = ImageStore.for_model(model.config.vision).pixels(item.images[:1])
        r = results[name]
        lm = r["prefill_flops"]
        total = lm + r["vision_flops_per_image"] + r["connector_flops_per_image"]
        rows[name] = {
            "overall": r["accuracy"], "per_capability": {c: r["per_capability"].get(c)
                                                         for c in CAPABILITIES},
            "pope_f1": (r.get("pope") or {}).get("f1"),
            "visual_tokens_per_image": r["visual_tokens_per_image"],
            "lm_sequence_length": r["prompt_tokens"], "lm_prefill_flops": lm,
            "total_prefill_flops": total, "kv_cache_bytes": r["kv_cache_bytes"],
            "total_params": r["total_params"],
            "trained_params": trained_params(recipe, name, model),
            **measure(model, ids, pixels, repeats, warmup, args.new_tokens),
        }
    base = rows["mlp"]
    for row in rows.values():
        row["vs_mlp"] = {"overall": ratio(row["overall"], base["overall"]),
                         "lm_prefill_flops": ratio(row["lm_prefill_flops"],
                                                   base["lm_prefill_flops"]),
                         "prefill_ms": ratio(row["prefill_ms"], base["prefill_ms"])}
    emit({"benchmark": "perception", "run": str(args.run), "environment": environment(),
          "machine_load": meter.report(), "rows": rows}, args.output)
    if args.markdown:
        print(markdown(rows), file=sys.stderr)
    if args.plot is not None:
        plot(rows, args.plot)


def markdown(rows: dict[str, Any]) -> str:
    head = ("| row | overall | " + " | ".join(CAPABILITIES) + " | POPE F1 | visual tokens | "
            "LM seq | LM prefill MFLOPs | total prefill MFLOPs | prefill ms | decode tok/s | "
            "KV cache KB | trained params | total params |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    for name, r in rows.items():
        caps = " | ".join(pct(r["per_capability"][c]) for c in CAPABILITIES)
        lines.append(
            f"| {name} | {pct(r['overall'])} | {caps} | {pct(r['pope_f1'])} | "
            f"{r['visual_tokens_per_image']} | {r['lm_sequence_length']} | "
            f"{r['lm_prefill_flops'] / 1e6:.1f} | {r['total_prefill_flops'] / 1e6:.1f} | "
            f"{r['prefill_ms']:.2f} | {r['decode_tokens_per_s'] or 0:.0f} | "
            f"{r['kv_cache_bytes'] / 1024:.0f} | {r['trained_params'] / 1e6:.2f}M | "
            f"{r['total_params'] / 1e6:.2f}M |")
    return "\n".join(lines)


def plot(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, r) in enumerate(rows.items()):
        x, y = r["lm_prefill_flops"] / 1e6, 100 * r["overall"]
        ax.scatter(x, y, s=40)
        # Alternate the labels above and below: neighbours (fastv, vlora) stay readable.
        ax.annotate(name, (x, y), textcoords="offset points", fontsize=8,
                    xytext=(4, 5 if i % 2 else -11))
    ax.set_xlabel("LM prefill MFLOPs (one image + its question)")
    ax.set_ylabel("overall accuracy (%)")
    ax.set_title("ShapesWorld: accuracy against the language model's prefill cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    log(f"plot: {path}")


if __name__ == "__main__":
    main()
