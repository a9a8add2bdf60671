"""SEED-Bench: four-option questions; accuracy per evaluation dimension and overall.

SEED-Bench's own evaluator ranks the options by likelihood; generated answers are scored by
the harnesses, and they disagree:

- ``official``: the rule of LLaVA's convert_seed_for_submission.py, which LLaVA-style papers
  report: the answer text must equal the option letter exactly ("B." and "(B)" are wrong).
  Percent per dimension (``correct / count * 100``) and overall, plus per data type (image /
  video). A question without a prediction counts as wrong.
- ``lmms-eval``: strip the answer and keep its first character ("B." is B, "(B)" is "(",
  "The answer is C" is "T"), then compare it lower-cased and stripped with the answer ("b"
  is B); fractions per data type and overall.
- ``vlmevalkit``: `choice.vlmevalkit_choice` on the options; fractions.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import (
    check_convention,
    key_of,
    reject_unknown,
    rows_by_id,
    text_field,
)
from tinyvlm.eval.scorers.choice import vlmevalkit_choice
from tinyvlm.io import read_json

CONVENTIONS = ("official", "lmms-eval", "vlmevalkit")
_OPTION_KEYS = {"A": "choice_a", "B": "choice_b", "C": "choice_c", "D": "choice_d"}


def extract(prediction: str, question: Mapping[str, Any], convention: str = "official") -> str:
    """The letter `prediction` names under `convention` ('' when none)."""
    if convention == "official":
        return prediction
    if convention == "lmms-eval":
        text = prediction.strip()
        return text[:1]
    options = {k: str(question[v]) for k, v in _OPTION_KEYS.items() if v in question}
    return vlmevalkit_choice(prediction, options) or ""


def score(questions: Sequence[Mapping[str, Any]], predictions: Mapping[str, str],
          convention: str = "official", dimension_names: Mapping[int, str] | None = None
          ) -> dict[str, Any]:
    """Accuracy of `predictions` ({question_id: text}) on SEED-Bench `questions`.

    Each question has ``question_id``, ``answer`` (a letter), ``question_type_id``,
    ``data_type`` (image / video) and for vlmevalkit ``choice_a``..``choice_d``. Returns
    ``{"overall", "per_dimension", "per_data_type", "correct", "count", "missing",
    "convention", "unit"}``; dimensions are named through `dimension_names` when given.
    """
    check_convention("seed", convention, CONVENTIONS)
    if not questions:
        raise InputError("seed: no questions")
    names = dict(dimension_names or {})
    by_dim: dict[Any, list[bool]] = {}
    by_type: dict[str, list[bool]] = {}
    missing = 0
    for q in questions:
        qid = key_of(q["question_id"])
        if qid in predictions:
            picked = extract(predictions[qid], q, convention)
            right = (picked.lower().strip() == str(q["answer"]).lower().strip()
                     if convention == "lmms-eval" else picked == q["answer"])
        else:
            missing += 1
            right = False
        by_dim.setdefault(q.get("question_type_id"), []).append(right)
        by_type.setdefault(str(q.get("data_type", "image")), []).append(right)
    if missing:
        warnings.warn(f"seed: {missing} questions have no prediction and count as wrong",
                      stacklevel=2)
    scale = 100 if convention == "official" else 1
    correct = sum(sum(v) for v in by_dim.values())
    count = sum(len(v) for v in by_dim.values())
    return {
        "convention": convention, "unit": "percent" if scale == 100 else "fraction",
        "overall": _acc(correct, count, scale),
        "per_dimension": {names.get(k, str(k)): _acc(sum(v), len(v), scale)
                          for k, v in sorted(by_dim.items(), key=lambda kv: _dim_key(kv[0]))},
        "per_data_type": {k: _acc(sum(v), len(v), scale) for k, v in sorted(by_type.items())},
        "correct": correct, "count": count, "missing": missing,
    }


def _dim_key(dim: Any) -> tuple[int, Any]:
    return (0, dim) if isinstance(dim, int) else (1, str(dim))


def _acc(correct: int, count: int, scale: int) -> float:
    return correct / count * scale  # LLaVA's order: divide, then multiply by 100


def load(annotations: str | Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """(questions, {dimension id: name}) of a SEED-Bench JSON (``{"questions": [...],
    "question_type": {name: id}}``)."""
    data = read_json(annotations)
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise InputError("expected a JSON object with a 'questions' list", annotations)
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if not isinstance(q, dict) or not {"question_id", "answer"} <= set(q):
            raise InputError(f"question #{i} lacks 'question_id' or 'answer'", annotations)
        qid = key_of(q["question_id"])
        if qid in seen:
            raise InputError(f"question_id {q['question_id']!r} repeats", annotations)
        seen.add(qid)
    types = data.get("question_type") or {}
    names = {int(v): str(k) for k, v in types.items()} if isinstance(types, dict) else {}
    return questions, names


def read_predictions(path: str | Path, keys: Sequence[str] = ("text", "prediction")
                     ) -> dict[str, str]:
    """{question_id: answer text} of a JSONL answer file (``text`` as LLaVA writes it)."""
    return {qid: text_field(row, keys, path, line)
            for qid, (line, row) in rows_by_id(path).items()}


def score_files(annotations: str | Path, predictions: str | Path,
                convention: str = "official") -> dict[str, Any]:
    """Score a JSONL answer file against SEED-Bench.json; predictions for unknown question
    ids raise InputError, questions without a prediction count as wrong."""
    check_convention("seed", convention, CONVENTIONS)
    questions, names = load(annotations)
    preds = read_predictions(predictions)
    known = {key_of(q["question_id"]) for q in questions}
    reject_unknown(preds, known, "predictions for question ids", str(annotations), predictions)
    return score(questions, preds, convention, names)
