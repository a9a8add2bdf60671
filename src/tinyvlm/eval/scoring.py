"""From samples to scores: write each benchmark's predictions in its official answer layout,
call that benchmark's scorer (tinyvlm.eval.scorers, looked up by name) on those files, and
mark every sample with its parsed answer and score for the log.

LLaVA-format files (ShapesWorld) are scored from the samples by eval.metrics. A benchmark
whose scorer module is missing, or whose file hides the ground truth, gets ``result: None``
and a note saying why; its predictions are still written for the official tool.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from tinyvlm.eval import metrics
from tinyvlm.eval.benchmarks import FORMATS, Benchmark

Samples = list[dict[str, Any]]


def scorer(kind: str) -> ModuleType | None:
    """The scorer module for `kind`, or None if it is not installed."""
    from tinyvlm.eval import scorers

    if kind not in scorers.SCORERS:
        return None
    try:
        return scorers.get(kind)
    except ModuleNotFoundError as e:
        if e.name == scorers.SCORERS[kind]:
            return None
        raise


def score(bench: Benchmark, samples: Samples, answer_dir: Path
          ) -> tuple[dict[str, Any] | None, Path | None]:
    """(the scorer's result or None, the official-layout answer file or directory)."""
    if bench.kind == "llava":
        _mark_llava(samples)
        return metrics.summarize(samples), None
    answers = FORMATS[bench.kind].write_answers(bench, samples, answer_dir)
    module = scorer(bench.kind)
    if module is None:
        bench.notes.append(f"no scorer module for '{bench.kind}' yet: predictions written to "
                           f"{answers}, not scored")
        for s in samples:
            s.update(parsed=None, score=None)
        return None, answers
    if any(s["answer"] is None for s in samples) and bench.kind != "vqa":
        bench.notes.append("the file has no ground truth: predictions written, not scored")
        for s in samples:
            s.update(parsed=None, score=None)
        return None, answers
    return _ADAPTERS[bench.kind](module, bench, samples, answers), answers


# --------------------------------------------------------------------------- per benchmark


def _mark_llava(samples: Samples) -> None:
    for s in samples:
        if s.get("pope") is not None:
            parsed = metrics.pope_answer(s["prediction"])
            s.update(parsed=parsed, score=float(parsed == metrics.normalize_answer(s["answer"])))
        else:
            s.update(parsed=metrics.normalize_answer(s["prediction"]),
                     score=float(metrics.is_correct(s)))


def _pope(module: ModuleType, bench: Benchmark, samples: Samples, answers: Path
          ) -> dict[str, Any]:
    for s in samples:
        parsed = module.pope_answer(s["prediction"])
        s.update(parsed=parsed, score=float(parsed == s["answer"].strip().lower()))
    return dict(module.score_files([bench.path], [answers]))


def _vqa(module: ModuleType, bench: Benchmark, samples: Samples, answers: Path
         ) -> dict[str, Any] | None:
    variant = bench.extra["variant"]
    for s in samples:
        gts = s["meta"].get("answers")
        s.update(parsed=module.normalize_vqa(s["prediction"]),
                 score=None if not gts else module.question_accuracy(s["prediction"], gts,
                                                                     variant))
    if bench.extra.get("annotations") is None:
        bench.notes.append("no annotations beside the questions file: not scored")
        return None
    return dict(module.score_files(bench.extra["annotations"], answers,
                                   bench.extra.get("questions"), variant=variant))


def pope_splits(pairs: list[tuple[Path, Path]]) -> dict[str, Any] | None:
    """Several POPE files (random, popular, adversarial) scored together: per split, pooled,
    and the mean of the split F1s that papers print. None without a POPE scorer."""
    module = scorer("pope")
    if module is None:
        return None
    return dict(module.score_files([a for a, _ in pairs], [p for _, p in pairs]))


def _mme(module: ModuleType, bench: Benchmark, samples: Samples, answers: Path
         ) -> dict[str, Any]:
    from tinyvlm.eval.benchmarks.mme import answer_cell

    for s in samples:
        # Parsed as the tool reads the answer file: the cell plus its line's newline.
        parsed = module.parse(answer_cell(s["prediction"]) + "\n")
        s.update(parsed=parsed, score=float(parsed == s["answer"].strip().lower()))
    return dict(module.score_files(answers))


def _mmbench(module: ModuleType, bench: Benchmark, samples: Samples, answers: Path
             ) -> dict[str, Any]:
    from tinyvlm.eval.scorers.choice import vlmevalkit_choice

    for s in samples:  # per row; the result is circular (every rotation must be right)
        parsed = vlmevalkit_choice(s["prediction"], dict(s["options"]))
        s.update(parsed=parsed, score=float(parsed == s["answer"]))
    return dict(module.score_files(answers))


def _seed(module: ModuleType, bench: Benchmark, samples: Samples, answers: Path
          ) -> dict[str, Any]:
    questions, names = module.load(bench.path)
    asked = {s["id"] for s in samples}  # video questions were skipped, not failed
    questions = [q for q in questions if str(q["question_id"]) in asked]
    by_id = {str(q["question_id"]): q for q in questions}
    for s in samples:
        parsed = module.extract(s["prediction"], by_id[s["id"]])
        s.update(parsed=parsed, score=float(parsed == s["answer"]))
    return dict(module.score(questions, {s["id"]: s["prediction"] for s in samples},
                             dimension_names=names))


def _scienceqa(module: ModuleType, bench: Benchmark, samples: Samples, answers: Path
               ) -> dict[str, Any]:
    for s in samples:
        parsed = module.extract(s["prediction"], [text for _, text in s["options"]])
        s.update(parsed=parsed, score=float(parsed == s["answer"]))
    return dict(module.score_files(bench.path, answers))


def _moat(module: ModuleType, bench: Benchmark, samples: Samples, answers: Path
          ) -> dict[str, Any]:
    for s in samples:  # exact match after normalisation, the scorer's default verdict
        parsed = metrics.normalize_answer(s["prediction"])
        s.update(parsed=parsed, score=float(parsed == metrics.normalize_answer(s["answer"])))
    return dict(module.score_files([answers]))


_ADAPTERS: dict[str, Callable[[ModuleType, Benchmark, Samples, Path], dict[str, Any] | None]] = {
    "pope": _pope,
    "mme": _mme,
    "mmbench": _mmbench,
    "seed": _seed,
    "scienceqa": _scienceqa,
    "vqa": _vqa,
    "moat": _moat,
}
