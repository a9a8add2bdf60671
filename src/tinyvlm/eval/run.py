"""Evaluate one or more models on benchmark files and write results.json, report.md, chart."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.eval import metrics, report
from tinyvlm.eval.harness import evaluate, training_pairs
from tinyvlm.models.vlm import TinyVLM


def evaluate_models(models: Mapping[str, TinyVLM], files: Sequence[Path], out_dir: Path,
                    train_file: Path | None, batch_size: int = 128, max_new_tokens: int = 8,
                    progress: bool = True) -> dict[str, Any]:
    """Every model on every file, beside the majority-answer baseline; writes the report."""
    rows, samples = [], []
    for name, model in models.items():
        summary, samples = evaluate(model, files, out_dir, name, batch_size, max_new_tokens,
                                    progress)
        n = model.num_parameters()
        rows.append(report.model_row(name, n, n, summary))
    baseline = None
    if train_file is not None and samples:
        prior = metrics.majority_baseline(training_pairs(train_file), samples)
        with warnings.catch_warnings():
            # A prior that never answers "yes" has no POPE precision; that is expected here.
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            baseline = metrics.summarize(prior)
    results = report.build_results(rows, baseline)
    report.write_report(results, out_dir)
    return results
