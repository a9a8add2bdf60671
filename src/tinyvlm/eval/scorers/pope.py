"""POPE: yes/no object-probing questions; accuracy, precision, recall, F1 and yes-ratio.

Conventions:

- ``official`` (POPE's evaluate.py, also LLaVA's eval_pope.py): `pope_answer` parses each
  prediction; positives are label "yes"; precision = TP/(TP+FP), recall = TP/(TP+FN),
  F1 = 2*P*R/(P+R) in that float order, yes-ratio = share of predictions parsed as yes.
  Where the script would divide by zero we report None and warn (F1 is 0.0 when there is no
  true positive but something to miss or over-claim: its limit and 2TP/(2TP+FP+FN)).
- ``lmms-eval``: the prediction is only lowercased and stripped, so "yes." and "Yes, there
  is" are neither yes nor no: wrong for accuracy, and in none of TP/FP/FN/TN. Zero
  denominators give 0. The yes-ratio is that of the *labels*, not of the predictions.
- ``vlmevalkit``: `vlmevalkit_answer` (yes iff the word "yes" and not the word "no", after
  VQA punctuation handling); "unknown" counts as wrong and as a "no" for F1. Accuracy,
  precision, recall and F1 are percentages; zero denominators give 0.

Several splits (random, popular, adversarial) give per-split results plus the mean of their
F1s, the number LLaVA-style papers print, and the pooled "all" (VLMEvalKit's "Overall").
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.data.pope import read_questions, split_name
from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import (
    check_convention,
    require_same_ids,
    rows_by_id,
    sum_left,
    text_field,
)
from tinyvlm.eval.scorers.vqa import PERIOD_VLMEVALKIT, process_punctuation

CONVENTIONS = ("official", "lmms-eval", "vlmevalkit")
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "tp", "fp", "tn", "fn", "n")


class UndefinedMetricWarning(UserWarning):
    """A metric had a zero denominator and is reported as None."""


def pope_answer(text: str) -> str:
    """'yes' or 'no' by the rule of the official POPE evaluation script.

    Keep the text before the first '.', delete commas, split on single spaces; the answer is
    'no' iff one of the words is exactly 'No', 'not' or 'no', otherwise 'yes'. The rule is
    case-sensitive and whole-word, so 'NO', 'Not sure', 'Nope', '"no"' and '' all count as
    'yes', while 'There is no dog. Yes' counts as 'no'. We keep it because published POPE
    numbers were computed with it; a smarter parser would make them incomparable.
    """
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "not", "no"} & set(words) else "yes"


def lmms_eval_answer(text: str) -> str:
    """lmms-eval's POPE parsing: lowercase and strip, nothing else ('yes.' stays 'yes.')."""
    return text.lower().strip()


def vlmevalkit_answer(text: str) -> str:
    """VLMEvalKit's YOrN extraction: 'yes', 'no' or 'unknown'.

    Lowercase, apply VLMEvalKit's copy of the VQA punctuation rule, split on whitespace:
    'yes' iff the word 'yes' is there and the word 'no' is not, 'no' for the converse,
    'unknown' otherwise; so
    'yes, the output is "no"' is 'unknown' (its quotes are removed, leaving both words).
    """
    words = process_punctuation(text.lower(), period=PERIOD_VLMEVALKIT).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return "unknown"


def confusion(labels_yes: Sequence[bool], said_yes: Sequence[bool]) -> tuple[int, int, int, int]:
    """(TP, FP, TN, FN) with positives = label yes."""
    tp = fp = tn = fn = 0
    for label, said in zip(labels_yes, said_yes, strict=True):
        if label and said:
            tp += 1
        elif label:
            fn += 1
        elif said:
            fp += 1
        else:
            tn += 1
    return tp, fp, tn, fn


def binary_metrics(tp: int, fp: int, tn: int, fn: int, name: str,
                   undefined: list[str]) -> dict[str, Any]:
    """The official script's metrics from the confusion counts, in its float order.

    A zero denominator gives None and appends f"{name} {metric}" to `undefined`.
    """
    n = tp + fp + tn + fn

    def div(num: float, den: float, metric: str) -> float | None:
        if den == 0:
            undefined.append(f"{name} {metric}")
            return None
        return num / den

    precision = div(float(tp), float(tp + fp), "precision")
    recall = div(float(tp), float(tp + fn), "recall")
    if tp:
        assert precision is not None and recall is not None
        f1: float | None = 2 * precision * recall / (precision + recall)
    else:
        f1 = div(0.0, float(fp + fn), "f1")
    return {"accuracy": div(tp + tn, n, "accuracy"), "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": div(tp + fp, n, "yes_ratio"),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n}


def _label_yes(label: str, where: str) -> bool:
    norm = label.strip().lower()
    if norm not in ("yes", "no"):
        raise InputError(f"{where}: label {label!r} is not yes/no")
    return norm == "yes"


def score(labels: Sequence[str], predictions: Sequence[str], convention: str = "official",
          name: str = "all", undefined: list[str] | None = None) -> dict[str, Any]:
    """Metrics of one split: `labels` are "yes"/"no", `predictions` the raw model answers.

    Keys: accuracy, precision, recall, f1, yes_ratio, tp, fp, tn, fn, n (plus ``unparsed``
    for lmms-eval, ``unknown`` for vlmevalkit). When `undefined` is None, a zero denominator
    is warned about here; otherwise its name is appended for the caller to warn once.
    """
    check_convention("pope", convention, CONVENTIONS)
    if len(labels) != len(predictions):
        raise ValueError("pope.score: labels and predictions differ in length")
    if not labels:
        raise InputError(f"pope {name}: no questions to score")
    yes = [_label_yes(lab, f"pope {name}") for lab in labels]
    local: list[str] = [] if undefined is None else undefined
    if convention == "official":
        said = [pope_answer(p) == "yes" for p in predictions]
        out = binary_metrics(*confusion(yes, said), name, local)
    elif convention == "lmms-eval":
        out = _lmms_eval_metrics(yes, [lmms_eval_answer(p) for p in predictions], name, local)
    else:
        out = _vlmevalkit_metrics(yes, [vlmevalkit_answer(p) for p in predictions], name, local)
    if undefined is None:
        warn_undefined(local)
    return out


def _prf_or_zero(tp: int, fp: int, fn: int, name: str,
                 undefined: list[str]) -> tuple[float, float, float]:
    """lmms-eval's and VLMEvalKit's precision, recall and F1: 0 where a denominator is 0."""
    for metric, den in (("precision", tp + fp), ("recall", tp + fn)):
        if not den:
            undefined.append(f"{name} {metric}")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * (precision * recall) / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _lmms_eval_metrics(yes: Sequence[bool], preds: Sequence[str], name: str,
                       undefined: list[str]) -> dict[str, Any]:
    pairs = list(zip(yes, preds, strict=True))
    tp = sum(1 for y, p in pairs if y and p == "yes")
    fp = sum(1 for y, p in pairs if not y and p == "yes")
    fn = sum(1 for y, p in pairs if y and p == "no")
    tn = sum(1 for y, p in pairs if not y and p == "no")
    precision, recall, f1 = _prf_or_zero(tp, fp, fn, name, undefined)
    scores = [1.0 if p == ("yes" if y else "no") else 0.0 for y, p in pairs]
    return {"accuracy": sum_left(scores) / len(pairs), "precision": precision,
            "recall": recall, "f1": f1, "yes_ratio": sum(yes) / len(pairs),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(pairs),
            "unparsed": sum(1 for p in preds if p not in ("yes", "no"))}


def _vlmevalkit_metrics(yes: Sequence[bool], preds: Sequence[str], name: str,
                        undefined: list[str]) -> dict[str, Any]:
    tp, fp, tn, fn = confusion(yes, [p == "yes" for p in preds])
    n = len(preds)
    precision, recall, f1 = _prf_or_zero(tp, fp, fn, name, undefined)
    correct = sum(1 for y, p in zip(yes, preds, strict=True) if p == ("yes" if y else "no"))
    return {"accuracy": correct / n * 100, "precision": precision * 100,
            "recall": recall * 100, "f1": f1 * 100, "yes_ratio": (tp + fp) / n * 100,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n,
            "unknown": sum(1 for p in preds if p == "unknown")}


def warn_undefined(undefined: Sequence[str]) -> None:
    if undefined:
        # One warning per call, naming every metric, rather than one per metric and split.
        warnings.warn("POPE metrics with a zero denominator, reported as None (as 0 by the "
                      f"lmms-eval and vlmevalkit conventions): {', '.join(undefined)}",
                      UndefinedMetricWarning, stacklevel=3)


def score_splits(splits: Mapping[str, tuple[Sequence[str], Sequence[str]]],
                 convention: str = "official") -> dict[str, Any]:
    """Per-split metrics, the pooled "all", and mean_f1 = mean of the split F1s.

    `splits` maps a split name to (labels, predictions). mean_f1 is None if a split's F1 is.
    """
    check_convention("pope", convention, CONVENTIONS)
    undefined: list[str] = []
    per = {k: score(lab, pred, convention, k, undefined) for k, (lab, pred) in splits.items()}
    all_labels = [x for lab, _ in splits.values() for x in lab]
    all_preds = [x for _, pred in splits.values() for x in pred]
    pooled = score(all_labels, all_preds, convention, "all", undefined)
    warn_undefined(undefined)
    f1s = [m["f1"] for m in per.values()]
    mean_f1 = None if None in f1s or not f1s else sum_left(f1s) / len(f1s)
    return {"convention": convention, "unit": _unit(convention), "splits": per,
            "mean_f1": mean_f1, "all": pooled}


def _unit(convention: str) -> str:
    return "percent" if convention == "vlmevalkit" else "fraction"


def read_pair(annotations: str | Path, predictions: str | Path) -> tuple[list[str], list[str]]:
    """(labels, predictions) of one annotation file and its answer file, paired by question_id.

    Annotation lines: question_id, label (yes/no), and usually image and text (read by
    data.pope, the one reader of POPE files). Prediction lines: question_id and the answer in
    ``text`` (LLaVA) or ``answer`` (POPE). Every id must be on both sides.
    """
    ann = {str(q.question_id): q for q in read_questions(annotations, require=(),
                                                         need_label=True)}
    pred = rows_by_id(predictions)
    require_same_ids(ann, pred, annotations, predictions)
    labels, texts = [], []
    for qid, q in ann.items():
        assert q.label is not None
        labels.append(q.label)
        pline, prow = pred[qid]
        texts.append(text_field(prow, ("text", "answer"), predictions, pline))
    return labels, texts


def score_files(annotations: Sequence[str | Path], predictions: Sequence[str | Path],
                convention: str = "official") -> dict[str, Any]:
    """Score annotation/prediction file pairs (given in matching order).

    One pair: the flat metrics plus ``convention`` and ``unit``. Several: score_splits, with
    each split named after its annotation file (split_name).
    """
    check_convention("pope", convention, CONVENTIONS)
    if not annotations or len(annotations) != len(predictions):
        raise InputError(f"pope: give as many --annotations as --predictions "
                         f"(got {len(annotations)} and {len(predictions)})")
    pairs = {}
    for a, p in zip(annotations, predictions, strict=True):
        name = split_name(a)
        if name in pairs:
            name = Path(a).stem if Path(a).stem not in pairs else str(a)
        pairs[name] = read_pair(a, p)
    if len(pairs) == 1:
        (labels, preds), = pairs.values()
        return {"convention": convention, "unit": _unit(convention),
                **score(labels, preds, convention)}
    return score_splits(pairs, convention)
