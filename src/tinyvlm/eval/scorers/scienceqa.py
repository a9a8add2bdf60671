"""ScienceQA: multiple choice with 2 to 5 options; accuracy overall and on image questions.

Conventions:

- ``official``: LLaVA's eval_science_qa.py, the number LLaVA-style papers print. The
  answer must be exactly a letter ("B"), or start with a letter, a period and a space
  ("B. the moon"), or contain "The answer is X" followed by any one character, exactly once
  ("The answer is C." works, "The answer is C" at the very end does not). Anything else, a
  letter beyond the question's options, or a missing prediction is wrong. Percentages:
  accuracy, and IMG accuracy over the questions whose prompt holds "<image>" (or, without a
  prompt, whose problem has an image).
- ``lmms-eval``: the prediction is stripped and compared case-insensitively with the target
  letter (" B", "B\n" and "b" are B); otherwise any text whose first character is an
  upper-case letter followed by '.' ("B." and "B.ok" count as B). Fractions.
- ``vlmevalkit``: `choice.vlmevalkit_choice` on the options. Fractions.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import (
    check_convention,
    key_of,
    ratio,
    reject_unknown,
    rows_by_id,
)
from tinyvlm.eval.scorers.choice import vlmevalkit_choice
from tinyvlm.io import read_json

CONVENTIONS = ("official", "lmms-eval", "vlmevalkit")
LLAVA_OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def llava_answer(text: str) -> str:
    """The letter LLaVA's rule reads from `text`, or 'FAILED'."""
    if text in LLAVA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in LLAVA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def extract(text: str, choices: Sequence[str], convention: str = "official") -> str | None:
    """The option letter `text` names under `convention`, or None."""
    letters = string.ascii_uppercase[:len(choices)]
    if convention == "official":
        answer = llava_answer(text)
        return answer if answer in LLAVA_OPTIONS[:len(choices)] else None
    if convention == "lmms-eval":
        text = text.strip()
        same = [c for c in letters if text.lower() == c.lower()]
        if same:
            return same[0]
        return text[0] if len(text) >= 2 and text[0].isupper() and text[1] == "." else None
    return vlmevalkit_choice(text, dict(zip(letters, map(str, choices), strict=True)))


def score(problems: Mapping[str, Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]],
          convention: str = "official") -> dict[str, Any]:
    """Accuracy over `problems` ({pid: {"choices", "answer" (index), "image"?}}).

    `predictions` maps pid to ``{"text", "prompt"?}``. Returns ``{"accuracy", "img_accuracy",
    "correct", "total", "img_correct", "img_total", "failed", "missing", "convention",
    "unit"}``; ``failed`` counts predictions naming no valid option.
    """
    check_convention("scienceqa", convention, CONVENTIONS)
    if not problems:
        raise InputError("scienceqa: no problems to score")
    correct = img_correct = img_total = failed = missing = 0
    for pid, prob in problems.items():
        pred = predictions.get(pid)
        if pred is None:
            missing += 1
            text, prompt = "FAILED", "Unknown"
        else:
            text, prompt = str(pred["text"]), pred.get("prompt")
        letter = extract(text, prob["choices"], convention)
        failed += letter is None
        right = letter is not None and letter == string.ascii_uppercase[int(prob["answer"])]
        correct += right
        multimodal = "<image>" in prompt if isinstance(prompt, str) else bool(prob.get("image"))
        img_total += multimodal
        img_correct += right and multimodal
    total = len(problems)
    scale = 100 if convention == "official" else 1
    img = ratio(img_correct, img_total)
    return {"convention": convention, "unit": "percent" if scale == 100 else "fraction",
            "accuracy": correct / total * scale,
            "img_accuracy": None if img is None else img * scale,
            "correct": correct, "total": total, "img_correct": img_correct,
            "img_total": img_total, "failed": failed, "missing": missing}


def load_problems(problems: str | Path, split: str | None = "test",
                  pid_splits: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The problems of `split`: listed in `pid_splits` (``{split: [pid, ...]}``) when given,
    else those whose ``split`` field equals `split` (all of them when `split` is None)."""
    data = read_json(problems)
    if not isinstance(data, dict):
        raise InputError("expected a JSON object {problem id: problem}", problems)
    for pid, prob in data.items():
        if not isinstance(prob, dict) or not {"choices", "answer"} <= set(prob):
            raise InputError(f"problem {pid} lacks 'choices' or 'answer'", problems)
        if not 0 <= int(prob["answer"]) < len(prob["choices"]):
            raise InputError(f"problem {pid}: answer {prob['answer']} is not an option index",
                             problems)
    if pid_splits is not None:
        splits = read_json(pid_splits)
        if not isinstance(splits, dict) or split not in splits:
            raise InputError(f"no split '{split}' in the split file", pid_splits)
        absent = [p for p in splits[split] if key_of(p) not in data]
        if absent:
            raise InputError(f"{len(absent)} ids of split '{split}' are not in {problems} "
                             f"(first: {absent[0]})", pid_splits)
        return {key_of(p): data[key_of(p)] for p in splits[split]}
    chosen = {key_of(k): v for k, v in data.items() if split is None or v.get("split") == split}
    if not chosen:
        raise InputError(f"no problem has split '{split}'", problems)
    return chosen


def score_files(problems: str | Path, predictions: str | Path, split: str | None = "test",
                pid_splits: str | Path | None = None,
                convention: str = "official") -> dict[str, Any]:
    """Score a LLaVA answer file (JSONL: question_id, text, prompt) on ScienceQA's
    problems.json; predictions for ids outside the split raise InputError."""
    check_convention("scienceqa", convention, CONVENTIONS)
    probs = load_problems(problems, split, pid_splits)
    preds = {qid: row for qid, (_, row) in rows_by_id(predictions, required=("text",)).items()}
    reject_unknown(preds, probs, "predictions for ids", f"split '{split}' of {problems}",
                   predictions)
    return score(probs, preds, convention)
