"""GQA: exact-match accuracy over the balanced questions, with the official breakdowns.

The rule of GQA's eval.py (v1.4, as LLaVA-style papers run it on testdev-balanced, with the
scene graphs and choices files optional): a balanced question scores 1 when the prediction
equals its answer exactly; the figures are percentages of the balanced questions:

- ``accuracy``; ``binary`` (structural type other than "query") and ``open`` ("query");
- per structural type, per semantic type, per number of reasoning steps (the operations of
  the question's program, less those whose "operation: argument" contains "exist",
  "query: name" or "choose name") and per number of words (``question.split()``), each as
  ``{"accuracy", "n"}``;
- ``distribution``: the chi-square statistic between gold and predicted answer counts per
  global group, weighted by group size, divided by 100 (lower is better);
- ``validity`` / ``plausibility``: the share of predictions in the question's valid /
  plausible answers (every question with a "Common" detailed type accepts "color",
  "material" and "shape"). They need the choices file; without it the script prints 0, we
  report None;
- ``consistency`` (on request, with predictions for every question): over the balanced
  questions answered right that entail others, the mean accuracy on the entailed ones.

LLaVA's converter (convert_gqa_for_eval.py) lowercases each answer and strips trailing
periods before the script sees it; an answer file in LLaVA's layout (JSONL question_id,
text) gets the same treatment, the official predictions JSON ([{questionId, prediction}]) is
taken as it is. The script sums with Python's ``sum``; we add left to right, as Python up to
3.11 does (it matters only for consistency, a mean of means).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import (
    check_convention,
    key_of,
    reject_unknown,
    rows_by_id,
    sum_left,
    text_field,
)
from tinyvlm.io import read_json

CONVENTIONS = ("official",)
_NOT_STEPS = ("exist", "query: name", "choose name")


def llava_prediction(text: str) -> str:
    """What LLaVA's convert_gqa_for_eval.py makes of a generated answer."""
    return text.rstrip(".").lower()


def steps(question: Mapping[str, Any]) -> int:
    """The number of reasoning steps of a question's program, as eval.py counts them."""
    return sum(1 for op in question["semantic"]
               if not any(o in f"{op['operation']}: {op['argument']}" for o in _NOT_STEPS))


def _mean(values: Sequence[float]) -> float | None:
    return sum_left(values) / len(values) * 100 if values else None


def _breakdown(groups: Mapping[Any, list[float]]) -> dict[str, dict[str, Any]]:
    return {str(k): {"accuracy": _mean(v), "n": len(v)} for k, v in sorted(groups.items())}


def _chi_square(gold: Mapping[str, Mapping[str, int]],
                predicted: Mapping[str, Mapping[str, int]]) -> float | None:
    total_score = total = 0.0
    for group, answers in gold.items():
        score = overall = 0.0
        for ans, e in answers.items():
            o = predicted.get(group, {}).get(ans, 0)
            score += float(o - e) ** 2 / e
            overall += e
        total_score += score * overall
        total += overall
    return total_score / total if total else None


def _belongs(answer: str, group: Sequence[str], question: Mapping[str, Any]) -> bool:
    if "Common" in str(question.get("types", {}).get("detailed", "")):
        group = ["color", "material", "shape"]
    return answer in group


def score(questions: Mapping[str, Mapping[str, Any]], predictions: Mapping[str, str],
          choices: Mapping[str, Mapping[str, Any]] | None = None,
          consistency: bool = False) -> dict[str, Any]:
    """Scores of `predictions` ({question id: answer}) on GQA `questions` (the questions JSON,
    {id: question}); see the module docstring for the keys."""
    balanced = [(qid, q) for qid, q in questions.items() if q.get("isBalanced", True)]
    if not balanced:
        raise InputError("gqa: no balanced question to score")
    needed = questions if consistency else dict(balanced)
    missing = [qid for qid in needed if qid not in predictions]
    if missing:
        raise InputError(f"gqa: {len(missing)} questions have no prediction (first: "
                         f"{missing[0]}); eval.py needs one for every "
                         f"{'question' if consistency else 'balanced question'}")
    acc: list[float] = []
    by_answer_type: dict[str, list[float]] = {"binary": [], "open": []}
    valid: list[float] = []
    plausible: list[float] = []
    consistent: list[float] = []
    per: dict[str, dict[Any, list[float]]] = {k: {} for k in
                                               ("structural", "semantic", "steps", "length")}
    gold: dict[str, dict[str, int]] = {}
    predicted: dict[str, dict[str, int]] = {}
    for qid, q in balanced:
        answer, pred = q["answer"], predictions[qid]
        right = pred == answer
        s = float(right)
        acc.append(s)
        for key, value in (("length", len(q["question"].split())), ("steps", steps(q)),
                           ("structural", q["types"]["structural"]),
                           ("semantic", q["types"]["semantic"])):
            per[key].setdefault(value, []).append(s)
        by_answer_type["open" if q["types"]["structural"] == "query" else "binary"].append(s)
        if choices is not None:
            c = choices.get(qid)
            if c is None:
                raise InputError(f"gqa: question {qid} is not in the choices file")
            valid.append(float(_belongs(pred, c["valid"], q)))
            plausible.append(float(_belongs(pred, c["plausible"], q)))
        group = (q.get("groups") or {}).get("global")
        if group is not None:
            gold.setdefault(group, {}).setdefault(answer, 0)
            gold[group][answer] += 1
            predicted.setdefault(group, {}).setdefault(pred, 0)
            predicted[group][pred] += 1
        if consistency and right:
            entailed = [key_of(e) for e in q.get("entailed", []) if key_of(e) != qid]
            if entailed:
                unknown = [e for e in entailed if e not in questions]
                if unknown:
                    raise InputError(f"gqa: question {qid} entails {unknown[0]}, which is not "
                                     "in the questions file (use the all-questions file)")
                consistent.append(sum_left([float(predictions[e] == questions[e]["answer"])
                                            for e in entailed]) / len(entailed))
    chi = _chi_square(gold, predicted)
    return {
        "convention": "official", "unit": "percent", "n": len(balanced),
        "accuracy": _mean(acc), "binary": _mean(by_answer_type["binary"]),
        "open": _mean(by_answer_type["open"]),
        "validity": _mean(valid) if choices is not None else None,
        "plausibility": _mean(plausible) if choices is not None else None,
        "consistency": _mean(consistent) if consistency else None,
        "distribution": None if chi is None else chi / 100,
        "per_structural_type": _breakdown(per["structural"]),
        "per_semantic_type": _breakdown(per["semantic"]),
        "per_steps": _breakdown(per["steps"]),
        "per_length": _breakdown(per["length"]),
    }


def load_questions(path: str | Path) -> dict[str, dict[str, Any]]:
    """A GQA questions JSON ({id: {question, answer, types, semantic, isBalanced, groups,
    entailed, imageId, ...}}), checked for what scoring reads."""
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise InputError("expected a GQA questions JSON object {question id: question}", path)
    for qid, q in data.items():
        _check_question(qid, q, path)
    return {key_of(k): v for k, v in data.items()}


def _check_question(qid: str, q: Any, path: str | Path) -> None:
    def bad(what: str) -> InputError:
        return InputError(f"question {qid}: {what}", path)

    if not isinstance(q, dict) or not {"question", "answer", "types", "semantic"} <= set(q):
        raise bad("lacks question, answer, types or semantic")
    for key in ("question", "answer"):
        if not isinstance(q[key], str):
            raise bad(f"'{key}' must be a string")
    types = q["types"]
    if not isinstance(types, dict) or not all(isinstance(types.get(k), str)
                                              for k in ("structural", "semantic")):
        raise bad("types needs structural and semantic strings")
    if not isinstance(q["semantic"], list) or not all(
            isinstance(op, dict) and isinstance(op.get("operation"), str) and
            isinstance(op.get("argument"), str) for op in q["semantic"]):
        raise bad("semantic must be a list of {operation, argument} strings")
    groups = q.get("groups")
    if groups is not None and (not isinstance(groups, dict) or
                               not isinstance(groups.get("global"), str | None)):
        raise bad("groups must be an object whose 'global' is a string or null")
    entailed = q.get("entailed", [])
    if not isinstance(entailed, list) or not all(isinstance(e, str | int) for e in entailed):
        raise bad("entailed must be a list of question ids")
    if not isinstance(q.get("isBalanced", True), bool):
        raise bad("isBalanced must be true or false")


def read_predictions(path: str | Path) -> tuple[dict[str, str], str]:
    """({question id: prediction}, layout): the official JSON list [{questionId,
    prediction}] as it is, or LLaVA's JSONL answers (question_id, text) converted as LLaVA's
    convert_gqa_for_eval.py does."""
    p = Path(path)
    if p.suffix == ".jsonl":
        return ({qid: llava_prediction(text_field(row, ("text",), p, line))
                 for qid, (line, row) in rows_by_id(p).items()}, "llava")
    data = read_json(p)
    if not isinstance(data, list):
        raise InputError("expected a JSON list [{questionId, prediction}] (or LLaVA's JSONL "
                         "answers)", p)
    out: dict[str, str] = {}
    for i, row in enumerate(data):
        if not isinstance(row, dict) or not {"questionId", "prediction"} <= set(row):
            raise InputError(f"entry {i} needs questionId and prediction", p)
        qid = key_of(row["questionId"])
        if qid in out:
            raise InputError(f"questionId {qid} repeats (entry {i})", p)
        if not isinstance(row["prediction"], str):
            raise InputError(f"entry {i}: prediction must be a string, got "
                             f"{type(row['prediction']).__name__}", p)
        out[qid] = row["prediction"]
    return out, "official"


def score_files(questions: str | Path, predictions: str | Path,
                choices: str | Path | None = None, consistency: bool = False,
                convention: str = "official") -> dict[str, Any]:
    """Score a predictions file against a GQA questions JSON (e.g.
    testdev_balanced_questions.json); `choices` (e.g. val_choices.json) adds validity and
    plausibility."""
    check_convention("gqa", convention, CONVENTIONS)
    qs = load_questions(questions)
    preds, layout = read_predictions(predictions)
    reject_unknown(preds, qs, "predictions for ids", str(questions), predictions)
    ch = None
    if choices is not None:
        raw = read_json(choices)
        if not isinstance(raw, dict):
            raise InputError("expected a choices JSON object {question id: {valid, "
                             "plausible}}", choices)
        ch = {key_of(k): v for k, v in raw.items()}
        for k, v in ch.items():
            if not isinstance(v, dict) or not all(
                    isinstance(v.get(f), list) for f in ("valid", "plausible")):
                raise InputError(f"question {k}: expected {{valid: [...], plausible: [...]}}",
                                 choices)
    return {**score(qs, preds, ch, consistency), "predictions_layout": layout}
