"""Generation against transformers' `generate()` on identical weights: a demo-sized model
(ViT 4x128 on 64 px images, LM 4x192 with 6/2 heads; dense, and a sparse student with 4
experts top-2 in every other block) exported with `export_model` and loaded by transformers
as a LLaVA. Greedy decoding of exactly N new tokens (end tokens unreachable on both sides)
on real ShapesWorld prompts with their images; batches of equal-length prompts, so neither
side pads. Reported: new tokens/s, time to first token (a call for one new token) and
whether the tokens are identical; ratios ours over transformers."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from common import build_model, log, make_demo, summarize
from generate_throughput import spread_weights
from tinyvlm.config import MoEConfig
from tinyvlm.data.collate import PromptCollator
from tinyvlm.data.images import ImageStore
from tinyvlm.data.llava import load_llava
from tinyvlm.models.hf import export_model
from tinyvlm.models.vlm import TinyVLM


def exportable(demo: Any, moe: MoEConfig | None) -> TinyVLM:
    """The demo model with a ViT transformers' CLIP can express (pre-norm, no final norm on
    the features), optionally sparse; weights spread so greedy outputs vary."""
    recipe = copy.deepcopy(demo.recipe)
    v = recipe.model.vision
    v.pre_norm, v.feature_norm, v.feature_layer = True, False, -1
    recipe.model.language.moe = moe
    model = build_model(type(demo)(recipe, demo.data_dir, demo.tokenizer), 0)
    spread_weights(model, 0)
    return model.eval()


def equal_length_batch(model: TinyVLM, demo: Any, size: int) -> Any:
    """`size` test prompts of one token length (no padding on either side)."""
    convs = load_llava(Path(demo.data_dir) / "test.json")
    collate = PromptCollator(model.tokenizer, ImageStore.for_model(model.config.vision),
                             model.image_tokens)
    by_len: dict[int, list[Any]] = {}
    for conv in convs:
        n = int(collate([conv]).input_ids.shape[1])
        by_len.setdefault(n, []).append(conv)
        if len(by_len[n]) == size:
            return collate(by_len[n])
    raise SystemExit(f"no {size} test prompts of equal length")


def timed(fn: Any, repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def compare(ours: TinyVLM, hf: Any, batch: Any, new_tokens: int, repeats: int
            ) -> dict[str, Any]:
    ids, mask, pixels = batch.input_ids, batch.attention_mask, batch.pixel_values

    def run_ours(n: int) -> torch.Tensor:
        return ours.generate(ids, mask, pixels, max_new_tokens=n)

    def run_hf(n: int) -> torch.Tensor:
        out = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                          max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
        return out[:, ids.shape[1]:]

    with torch.no_grad():
        for fn in (run_ours, run_hf):
            fn(new_tokens)  # warm-up
        times: dict[str, list[float]] = {"ours": [], "hf": [], "ours_ttft": [], "hf_ttft": []}
        outs = {}
        for _ in range(repeats):  # alternate: both share the machine's load
            for name, fn in (("ours", run_ours), ("hf", run_hf)):
                t, outs[name] = timed(lambda fn=fn: fn(new_tokens), 1)
                times[name] += t
                times[f"{name}_ttft"] += timed(lambda fn=fn: fn(1), 1)[0]
    ms = {k: summarize(v)["median_ms"] for k, v in times.items()}
    b = ids.shape[0]
    return {"batch": b, "prompt_tokens": int(ids.shape[1]), "new_tokens": new_tokens,
            "ours_tokens_per_s": b * new_tokens / ms["ours"] * 1e3,
            "hf_tokens_per_s": b * new_tokens / ms["hf"] * 1e3,
            "speedup": ms["hf"] / ms["ours"],
            "ours_ttft_ms": ms["ours_ttft"], "hf_ttft_ms": ms["hf_ttft"],
            "ttft_speedup": ms["hf_ttft"] / ms["ours_ttft"],
            "identical": bool(torch.equal(outs["ours"], outs["hf"])),
            "distinct_tokens": int(outs["ours"].unique().numel()), "runs": repeats}


def decode_profile(ours: TinyVLM, batch: Any) -> dict[str, float]:
    """Where our generate() call goes, by kind of op."""
    from bench_train_mfu import op_shares

    with torch.no_grad():
        return op_shares(lambda: ours.generate(batch.input_ids, batch.attention_mask,
                                               batch.pixel_values, max_new_tokens=32))


def run(quick: bool = False) -> dict[str, Any]:
    transformers.logging.set_verbosity_error()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo(Path(tmp) / "data", 64, 200)
        for kind, moe in (("dense", None),
                          ("moe", MoEConfig(experts=4, top_k=2, layers="every-other"))):
            ours = exportable(demo, moe)
            out = export_model(ours, Path(tmp) / kind)
            hf = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
            ours.config.eos_token_id = -1  # exactly N tokens, as min_new_tokens does there
            ours.config.stop_token_ids = []
            for size in (1, 4) if quick else (1, 16):
                batch = equal_length_batch(ours, demo, size)
                row = compare(ours, hf, batch, 8 if quick else 32, 2 if quick else 5)
                row["model"] = kind
                if size > 1 and kind == "dense":
                    row["profile"] = decode_profile(ours, batch)
                rows.append(row)
                log(f"generate {kind} batch {size}: ours {row['ours_tokens_per_s']:.0f} tok/s, "
                    f"transformers {row['hf_tokens_per_s']:.0f} ({row['speedup']:.2f}x), "
                    f"ttft {row['ours_ttft_ms']:.1f} vs {row['hf_ttft_ms']:.1f} ms, "
                    f"identical {row['identical']}")
    return {"rows": rows, "transformers": transformers.__version__,
            "threads": torch.get_num_threads()}
