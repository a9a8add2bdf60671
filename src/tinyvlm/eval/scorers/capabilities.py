"""The scorer of LLaVA-format files (ShapesWorld): exact match per capability and per
capability combination, POPE probes among them, and the majority-answer baseline.

Built on the MOAT scorer (capabilities and combinations) and the POPE scorer (splits, pooled,
mean F1), so each rule exists once. A sample is one evaluated question:
``{"id", "question", "answer", "prediction", "type", "capabilities", "pope"}`` where ``pope``
is None for ordinary questions and the split name ("random", "popular", "adversarial") for
POPE probes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from tinyvlm.data.answers import normalize_answer
from tinyvlm.data.pope import SPLITS as POPE_SPLITS
from tinyvlm.data.shapes import CAPABILITIES as CAPABILITY_ORDER
from tinyvlm.eval.scorers import moat, pope
from tinyvlm.eval.scorers.pope import UndefinedMetricWarning as UndefinedMetricWarning
from tinyvlm.eval.scorers.pope import pope_answer as pope_answer

Sample = Mapping[str, Any]


def capability_key(cap: str) -> tuple[int, str]:
    """Sort key: the known codes in CAPABILITY_ORDER, then any other code alphabetically."""
    rank = CAPABILITY_ORDER.index(cap) if cap in CAPABILITY_ORDER else len(CAPABILITY_ORDER)
    return rank, cap


def _split_key(split: str) -> tuple[int, str]:
    return (POPE_SPLITS.index(split) if split in POPE_SPLITS else len(POPE_SPLITS)), split


def is_correct(sample: Sample) -> bool:
    """Exact match of prediction and ground truth after normalize_answer on both sides."""
    return normalize_answer(str(sample["prediction"])) == normalize_answer(str(sample["answer"]))


def score_samples(samples: Iterable[Sample]) -> dict[str, Any]:
    """Exact-match accuracy overall, per capability and per capability combination.

    POPE probes (``pope`` not None) are left out: pope_metrics scores them. A sample counts
    towards every capability it lists and towards exactly one combination, the sorted codes
    joined with '+' ("ATTR+CNT"); samples without capabilities count only overall. With no
    samples, ``accuracy`` is None. Keys are ordered for display (see capability_key).
    """
    plain = [s for s in samples if s.get("pope") is None]
    if not plain:
        return {"n": 0, "accuracy": None, "per_capability": {}, "per_combination": {},
                "counts": {"per_capability": {}, "per_combination": {}}}
    records = [{"id": str(i), "capabilities": sorted(set(s.get("capabilities") or [])),
                "verdict": int(is_correct(s)), "prediction": "", "answer": ""}
               for i, s in enumerate(plain)]
    result = moat.score([records])
    caps = sorted(result["per_capability"], key=capability_key)
    return {
        "n": len(plain),
        "accuracy": result["overall"],
        "per_capability": {c: result["per_capability"][c] for c in caps},
        "per_combination": result["per_combination"],
        "counts": {"per_capability": {c: result["counts"]["per_capability"][c] for c in caps},
                   "per_combination": result["counts"]["per_combination"]},
    }


def pope_metrics(samples: Iterable[Sample]) -> dict[str, Any]:
    """POPE scores of the probes among `samples` (``pope`` not None), positives = label 'yes'.

    Returns ``{"splits": {split: m}, "all": m, "mean_f1": float | None}`` where each ``m`` has
    accuracy, precision, recall, f1, yes_ratio, tp, fp, tn, fn, n; ``splits`` holds only the
    splits present (random, popular, adversarial first, then others alphabetically); ``all``
    pools every probe; ``mean_f1`` is the mean of the split F1s, the number LLaVA-style papers
    print (None if any split's F1 is undefined). Predictions are parsed with pope_answer,
    labels with normalize_answer; a label other than yes/no raises ValueError. A zero
    denominator gives None, and one UndefinedMetricWarning per call names every such metric.
    Without any probe every metric is None and nothing is warned: POPE simply was not run.
    """
    by_split: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for s in samples:
        if s.get("pope") is None:
            continue
        label = normalize_answer(str(s["answer"]))
        if label not in ("yes", "no"):
            raise ValueError(f"POPE sample {s.get('id')!r}: label {s['answer']!r} is not yes/no")
        labels, predictions = by_split[str(s["pope"])]
        labels.append(label)
        predictions.append(str(s["prediction"]))
    if not by_split:
        empty = dict.fromkeys(("accuracy", "precision", "recall", "f1", "yes_ratio"))
        return {"splits": {}, "all": {"n": 0, **empty, "tp": 0, "fp": 0, "tn": 0, "fn": 0},
                "mean_f1": None}
    result = pope.score_splits({k: by_split[k] for k in sorted(by_split, key=_split_key)})
    return {"splits": result["splits"], "all": result["all"], "mean_f1": result["mean_f1"]}


def _most_common(counts: Counter[str]) -> str:
    # Highest count first, then the smallest string: independent of the training-file order.
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def majority_baseline(train_pairs: Iterable[tuple[str, str]],
                      samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """Copies of `samples` predicting the most frequent training answer of their type.

    `train_pairs` are (question type, answer) from the training set. Answers are counted after
    normalize_answer, so 'Yes' and 'yes.' are one answer; ties go to the smallest string. A type
    never seen in training gets the most frequent answer overall. Raises ValueError when
    `train_pairs` is empty.
    """
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    overall: Counter[str] = Counter()
    for qtype, answer in train_pairs:
        norm = normalize_answer(str(answer))
        per_type[qtype][norm] += 1
        overall[norm] += 1
    if not overall:
        raise ValueError("majority baseline: no training answers")
    majority = {t: _most_common(c) for t, c in per_type.items()}
    fallback = _most_common(overall)
    return [{**s, "prediction": majority.get(s.get("type"), fallback)} for s in samples]


def summarize(samples: Iterable[Sample]) -> dict[str, Any]:
    """score_samples plus ``"pope"``: the pooled POPE metrics with "splits" and "mean_f1".

    ``{"n", "accuracy", "per_capability", "per_combination", "counts",
    "pope": {"n", "accuracy", "precision", "recall", "f1", "yes_ratio", "tp", "fp", "tn",
    "fn", "splits": {split: {...}}, "mean_f1"}}``
    """
    samples = list(samples)
    probes = pope_metrics(samples)
    return {**score_samples(samples),
            "pope": {**probes["all"], "splits": probes["splits"], "mean_f1": probes["mean_f1"]}}
