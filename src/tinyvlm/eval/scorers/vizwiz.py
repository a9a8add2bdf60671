"""VizWiz-VQA: VQA accuracy over ten human answers, with "unanswerable" as an answer, and how
well unanswerable questions are recognised.

Conventions:

- ``official`` (the VizWiz API's vqaEval.py, which the VizWiz server runs): only the
  prediction is normalised -- newlines and tabs to spaces, stripped, the VQA punctuation rule,
  then number words, articles and contractions, whose table writes most apostrophes as
  "’" (U+2019), so "dont" becomes "don’t" and does not match a human "don't". The human
  answers are compared as they are. A question scores the mean over its ten answers of
  min(1, matches among the other nine / 3), added in order; overall and per answer type are
  ``round(100 * sum / n, 2)``. ``unanswerable`` holds scikit-learn's average precision and F1
  (x 100, rounded to 2) of the answers' "unanswerable" class, taking the prediction's
  ``answerable`` from the results when they have it (a probability or 0/1), else 0 for a
  prediction that normalises to "unanswerable" and 1 otherwise.
- ``lmms-eval``: the EvalAI processor on the prediction and on every human answer, the same
  leave-one-out accuracy averaged with ``statistics.mean``; overall = sum / n as a fraction.

LLaVA's converter (convert_vizwiz_for_submission.py) runs the EvalAI processor over each
generated answer before the server sees it; the harness writes its results file that way.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import check_convention, reject_unknown, sum_left
from tinyvlm.eval.scorers.vqa import (
    CONTRACTIONS,
    NUMBER_WORDS,
    normalize_evalai,
    process_punctuation,
)
from tinyvlm.io import read_json

CONVENTIONS = ("official", "lmms-eval")
UNANSWERABLE = "unanswerable"
CURLY = "\u2019"
# The VizWiz table is the VQA one with "’" for "'", except these values and keys.
_ASCII_VALUES = {"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"}
_ASCII_KEYS = {"couldn'tve", "hadn'tve"}
VIZWIZ_CONTRACTIONS = {
    (k if k in _ASCII_KEYS else k.replace("'", CURLY)):
        (v if k in _ASCII_VALUES else v.replace("'", CURLY))
    for k, v in CONTRACTIONS.items()}
_ARTICLES = frozenset({"a", "an", "the"})


def normalize_prediction(text: str) -> str:
    """The official VizWiz normalisation of a prediction."""
    text = process_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(VIZWIZ_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def question_accuracy(prediction: str, answers: Sequence[str],
                      convention: str = "official") -> float:
    """One prediction against its human answers (strings)."""
    if convention == "official":
        pred, gts = normalize_prediction(prediction), list(answers)
    else:
        pred, gts = normalize_evalai(prediction), [normalize_evalai(a) for a in answers]
    accs = [min(1, sum(1 for j, other in enumerate(gts) if j != i and other == pred) / 3)
            for i in range(len(gts))]
    if convention == "official":
        return sum_left(accs) / len(accs)
    return float(statistics.mean(accs))


def average_precision(y_true: Sequence[int], y_score: Sequence[float]) -> float:
    """scikit-learn's average_precision_score for binary labels, step for step."""
    score = np.asarray(y_score, dtype=np.float64)
    true = np.asarray(y_true, dtype=np.float64)
    order = np.argsort(score, kind="stable")[::-1]
    score, true = score[order], true[order]
    idx = np.r_[np.where(np.diff(score))[0], true.size - 1]
    tps = np.cumsum(true, dtype=np.float64)[idx]
    fps = 1 + idx.astype(np.float64) - tps
    ps = tps + fps
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(ps != 0, np.divide(tps, ps), 0.0)
    recall = np.full(tps.shape, 1.0) if tps[-1] == 0 else tps / tps[-1]
    precision = np.concatenate((precision[::-1], [1.0]))
    recall = np.concatenate((recall[::-1], [0.0]))
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def f1(y_true: Sequence[int], y_pred: Sequence[bool]) -> float:
    """scikit-learn's f1_score of the positive class (0 when undefined, as it warns)."""
    tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t and p)
    denom = sum(1 for t in y_true if t) + sum(1 for p in y_pred if p)
    return 2 * tp / denom if denom else 0.0


def score(annotations: Sequence[Mapping[str, Any]], results: Mapping[str, Mapping[str, Any]],
          convention: str = "official") -> dict[str, Any]:
    """Accuracy of `results` ({image: {"answer", "answerable"?}}) on VizWiz `annotations`
    (``[{image, answers: [{answer}], answer_type, answerable}]``)."""
    check_convention("vizwiz", convention, CONVENTIONS)
    if not annotations:
        raise InputError("vizwiz: no annotated question to score")
    missing = [a["image"] for a in annotations if a["image"] not in results]
    if missing:
        raise InputError(f"vizwiz: {len(missing)} questions have no result (first: "
                         f"{missing[0]})")
    accs: list[float] = []
    by_type: dict[str, list[float]] = {}
    gt_unanswerable, pred_unanswerable, derived = [], [], 0
    for a in annotations:
        res = results[a["image"]]
        answers = [str(x["answer"]) for x in a["answers"]]
        acc = question_accuracy(str(res["answer"]), answers, convention)
        accs.append(acc)
        by_type.setdefault(str(a.get("answer_type")), []).append(acc)
        if "answerable" in a:
            gt_unanswerable.append(1 - int(a["answerable"]))
            if "answerable" in res:
                pred_unanswerable.append(1.0 - float(res["answerable"]))
            else:
                derived += 1
                pred_unanswerable.append(
                    float(normalize_prediction(str(res["answer"])) == UNANSWERABLE))
    n = len(accs)
    out: dict[str, Any] = {"convention": convention, "n": n}
    if convention == "official":
        out.update(
            unit="percent", overall=round(100 * sum_left(accs) / n, 2),
            accuracy=sum_left(accs) / n,
            per_answer_type={k: round(100 * sum_left(v) / len(v), 2) for k, v in by_type.items()})
    else:
        out.update(unit="fraction", overall=sum_left(accs) / n, accuracy=sum_left(accs) / n)
    if convention == "official" and gt_unanswerable:
        out["unanswerable"] = {
            "average_precision": round(100 * average_precision(gt_unanswerable,
                                                                pred_unanswerable), 2),
            "f1_score": round(100 * f1(gt_unanswerable, [p > 0.5 for p in pred_unanswerable]),
                              2),
            "answerable_from": "results" if not derived else
            "the answers" if derived == len(pred_unanswerable) else "both"}
    return out


def load_annotations(path: str | Path) -> list[dict[str, Any]]:
    """A VizWiz annotations JSON (val.json): a list of {image, question, answers, ...}."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise InputError("expected a VizWiz annotations JSON list [{image, question, "
                         "answers, answer_type, answerable}]", path)
    seen: set[str] = set()
    for i, a in enumerate(data):
        if not isinstance(a, dict) or not {"image", "question"} <= set(a):
            raise InputError(f"entry {i} lacks image or question", path)
        if not isinstance(a["image"], str) or not isinstance(a["question"], str):
            raise InputError(f"entry {i}: image and question must be strings", path)
        if a["image"] in seen:
            raise InputError(f"image {a['image']!r} repeats (entry {i})", path)
        seen.add(a["image"])
        answers = a.get("answers")
        if answers is not None and (not isinstance(answers, list) or not all(
                isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers)):
            raise InputError(f"entry {i}: answers must be a list of {{answer: string, ...}}",
                             path)
        if "answerable" in a and a["answerable"] not in (0, 1):
            raise InputError(f"entry {i}: answerable must be 0 or 1", path)
    return data


def read_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """The results JSON the server takes: [{image, answer, answerable?}]."""
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError("expected a JSON list [{image, answer}]", path)
    out: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(data):
        if not isinstance(r, dict) or not {"image", "answer"} <= set(r):
            raise InputError(f"entry {i} needs image and answer", path)
        if not isinstance(r["image"], str) or not isinstance(r["answer"], str):
            raise InputError(f"entry {i}: image and answer must be strings", path)
        if "answerable" in r:
            value = r["answerable"]
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not 0 <= value <= 1:
                raise InputError(f"entry {i}: answerable must be a number from 0 to 1", path)
        if r["image"] in out:
            raise InputError(f"image {r['image']!r} repeats (entry {i})", path)
        out[r["image"]] = r
    return out


def score_files(annotations: str | Path, results: str | Path,
                convention: str = "official") -> dict[str, Any]:
    """Score a results file against VizWiz annotations (questions without answers, as in
    the test split, cannot be scored here: the server holds them)."""
    check_convention("vizwiz", convention, CONVENTIONS)
    anns = load_annotations(annotations)
    unanswered = sum(1 for a in anns if not a.get("answers"))
    if unanswered:
        raise InputError(f"{unanswered} questions have no human answers (the test split?): "
                         "submit the results file to the VizWiz server", annotations)
    res = read_results(results)
    reject_unknown(res, (a["image"] for a in anns), "results for images", str(annotations),
                   results)
    return score(anns, res, convention)
