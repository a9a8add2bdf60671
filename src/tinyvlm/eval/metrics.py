"""Answer matching and scores: exact match per capability and combination, POPE, baselines.

Every function is pure and deterministic. A sample is one evaluated question:
``{"id", "question", "answer", "prediction", "type", "capabilities", "pope"}`` where ``pope``
is None for ordinary questions and the split name ("random", "popular", "adversarial") for
POPE probes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from tinyvlm.eval.scorers._common import sum_left
from tinyvlm.eval.scorers.pope import UndefinedMetricWarning as UndefinedMetricWarning
from tinyvlm.eval.scorers.pope import binary_metrics, confusion, pope_answer, warn_undefined

Sample = Mapping[str, Any]

# Display order of the capability codes we know; unknown codes follow alphabetically.
CAPABILITY_ORDER = ("CNT", "OCR", "RLA", "ATTR", "EXIST")
POPE_SPLITS = ("random", "popular", "adversarial")
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}


def capability_key(cap: str) -> tuple[int, str]:
    """Sort key: the known codes in CAPABILITY_ORDER, then any other code alphabetically."""
    rank = CAPABILITY_ORDER.index(cap) if cap in CAPABILITY_ORDER else len(CAPABILITY_ORDER)
    return rank, cap


def _split_key(split: str) -> tuple[int, str]:
    return (POPE_SPLITS.index(split) if split in POPE_SPLITS else len(POPE_SPLITS)), split


def normalize_answer(text: str) -> str:
    """Lowercase, collapse whitespace, drop trailing '.', '!', '?' and surrounding quotes.

    Repeated until nothing changes, so '"Yes."', '"yes".' and ' Yes! ' all become 'yes'.
    Only a matching pair of quotes is removed: a lone apostrophe is part of the answer.
    """
    text = " ".join(text.lower().split())
    while True:
        before = text
        text = text.rstrip(".!? ").strip()
        if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            return text


def is_correct(sample: Sample) -> bool:
    """Exact match of prediction and ground truth after normalize_answer on both sides."""
    return normalize_answer(str(sample["prediction"])) == normalize_answer(str(sample["answer"]))


def _accuracy(samples: list[Sample]) -> float | None:
    return sum(map(is_correct, samples)) / len(samples) if samples else None


def score_samples(samples: Iterable[Sample]) -> dict[str, Any]:
    """Exact-match accuracy overall, per capability and per capability combination.

    POPE probes (``pope`` not None) are left out: pope_metrics scores them. A sample counts
    towards every capability it lists and towards exactly one combination, the sorted codes
    joined with '+' ("ATTR+CNT"); samples without capabilities count only overall. With no
    samples, ``accuracy`` is None. Keys are ordered for display (see capability_key).
    """
    plain = [s for s in samples if s.get("pope") is None]
    by_cap: dict[str, list[Sample]] = defaultdict(list)
    by_combo: dict[str, list[Sample]] = defaultdict(list)
    for s in plain:
        caps = sorted(set(s.get("capabilities") or []))
        for cap in caps:
            by_cap[cap].append(s)
        if caps:
            by_combo["+".join(caps)].append(s)
    cap_keys = sorted(by_cap, key=capability_key)
    combo_keys = sorted(by_combo, key=lambda k: (k.count("+"), k))
    return {
        "n": len(plain),
        "accuracy": _accuracy(plain),
        "per_capability": {c: _accuracy(by_cap[c]) for c in cap_keys},
        "per_combination": {c: _accuracy(by_combo[c]) for c in combo_keys},
        "counts": {
            "per_capability": {c: len(by_cap[c]) for c in cap_keys},
            "per_combination": {c: len(by_combo[c]) for c in combo_keys},
        },
    }


def _binary_metrics(probes: list[Sample], name: str, undefined: list[str]) -> dict[str, Any]:
    """The official POPE metrics (scorers.pope) of `probes`; labels via normalize_answer."""
    labels = []
    for s in probes:
        label = normalize_answer(str(s["answer"]))
        if label not in ("yes", "no"):
            raise ValueError(f"POPE sample {s.get('id')!r}: label {s['answer']!r} is not yes/no")
        labels.append(label == "yes")
    said_yes = [pope_answer(str(s["prediction"])) == "yes" for s in probes]
    return binary_metrics(*confusion(labels, said_yes), name, undefined)


def pope_metrics(samples: Iterable[Sample]) -> dict[str, Any]:
    """POPE scores of the probes among `samples` (``pope`` not None), positives = label 'yes'.

    Returns ``{"splits": {split: m}, "all": m, "mean_f1": float | None}`` where each ``m`` has
    n, accuracy, precision, recall, f1, yes_ratio, tp, fp, tn, fn; ``splits`` holds only the
    splits present (random, popular, adversarial first, then others alphabetically); ``all``
    pools every probe; ``mean_f1`` is the mean of the split F1s, the number LLaVA-style papers
    print (None if any split's F1 is undefined). Predictions are parsed with pope_answer,
    labels with normalize_answer; a label other than yes/no raises ValueError. A zero
    denominator gives None, and one UndefinedMetricWarning per call names every such metric.
    Without any probe every metric is None and nothing is warned: POPE simply was not run.
    """
    probes = [s for s in samples if s.get("pope") is not None]
    by_split: dict[str, list[Sample]] = defaultdict(list)
    for s in probes:
        by_split[str(s["pope"])].append(s)
    if not probes:
        empty = dict.fromkeys(("accuracy", "precision", "recall", "f1", "yes_ratio"))
        return {"splits": {}, "all": {"n": 0, **empty, "tp": 0, "fp": 0, "tn": 0, "fn": 0},
                "mean_f1": None}
    undefined: list[str] = []
    splits = {k: _binary_metrics(by_split[k], k, undefined)
              for k in sorted(by_split, key=_split_key)}
    pooled = _binary_metrics(probes, "all", undefined)
    warn_undefined(undefined)
    f1s = [m["f1"] for m in splits.values()]
    return {"splits": splits, "all": pooled,
            "mean_f1": None if None in f1s else sum_left(f1s) / len(f1s)}


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
    pope = pope_metrics(samples)
    return {**score_samples(samples),
            "pope": {**pope["all"], "splits": pope["splits"], "mean_f1": pope["mean_f1"]}}
