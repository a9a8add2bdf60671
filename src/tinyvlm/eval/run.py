"""Evaluate one or more models on benchmark files and write results.json, report.md, chart."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.eval import efficiency, metrics, report
from tinyvlm.eval.harness import evaluate, training_pairs
from tinyvlm.eval.measure import PeakMemory
from tinyvlm.models.vlm import TinyVLM


def efficiency_keys(model: TinyVLM, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Analytic cost at this run's mean prompt length, and the mean latency per sample.

    The KV cache is one sample's: its prompt plus its max_new_tokens (means over samples), in
    the weights' dtype. Latency is each batch's generation time shared among its samples
    (cached samples keep the time measured when they were computed).
    """
    n = len(samples)
    if not n:
        return {}
    prompt = round(sum(s["prompt_tokens"] for s in samples) / n)
    kv_len = round(sum(s["prompt_tokens"] + s["max_new_tokens"] for s in samples) / n)
    dtype = next(model.parameters()).dtype
    acct = efficiency.efficiency(model.config, prompt, kv_len=kv_len, dtype=dtype)
    acct["params_by_module"] = acct.pop("params")
    for key in ("total_params", "activated_params"):  # the row has them already
        acct.pop(key)
    latency = sum(s["seconds"] for s in samples) / n
    return {**acct, "latency_ms_per_sample": 1000 * latency}


def evaluate_models(models: Mapping[str, TinyVLM], files: Sequence[Path | str], out_dir: Path,
                    train_file: Path | None, batch_size: int = 128,
                    max_new_tokens: int | None = None, progress: bool = True,
                    image_root: Path | None = None, templates: Path | None = None
                    ) -> dict[str, Any]:
    """Every model on every file, beside the majority-answer baseline; writes the report."""
    rows, samples = [], []
    for name, model in models.items():
        with PeakMemory(next(model.parameters()).device) as memory:
            summary, samples = evaluate(model, files, out_dir, name, batch_size, max_new_tokens,
                                        progress, image_root, templates)
        split = efficiency.parameter_split(model.config)
        extra = efficiency_keys(model, samples) | memory.result()
        rows.append(report.model_row(name, model.num_parameters(), split.activated,
                                     summary, **extra))
    baseline = None
    llava = [s for s in samples if s["format"] == "llava"]
    if train_file is not None and llava:
        prior = metrics.majority_baseline(training_pairs(train_file), llava)
        with warnings.catch_warnings():
            # A prior that never answers "yes" has no POPE precision; that is expected here.
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            baseline = metrics.summarize(prior)
    results = report.build_results(rows, baseline)
    report.write_report(results, out_dir)
    return results
