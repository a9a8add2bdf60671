"""MME: yes/no questions, two per image, scored per subtask; perception and cognition totals.

A subtask scores ``100 * accuracy + 100 * accuracy+`` where accuracy is over questions and
accuracy+ is the share of images with both answers right (so at most 200).

Conventions:

- ``official`` (MME's eval_tool/calculation.py): the prediction is lowercased as it stands
  (with the line's trailing newline); exactly "yes"/"no", else "yes" then "no" searched in its
  first 4 characters, else "other" (wrong). ``acc * 100 + acc_plus * 100`` per subtask, then
  the subtasks added left to right in the tool's order: existence, count, position, color,
  posters, celebrity, scene, landmark, artwork, OCR; commonsense_reasoning,
  numerical_calculation, text_translation, code_reasoning.
- ``lmms-eval``: the prediction is lowercased, stripped and loses every '.'; "y"/"n" alone
  count; then the same 4-character search. A subtask is the mean over images of
  (50 per right answer + 100 if both are right) -- one division instead of two, so the last
  bits can differ from the official score -- and totals are sums over subtasks.
- ``vlmevalkit``: VLMEvalKit's yes/no extraction (see pope.vlmevalkit_answer; "unknown" is
  wrong). Subtask scores are computed like the official ones, but the totals add the
  subtasks in VLMEvalKit's (alphabetical) order, which can change the last bits; it calls
  the cognition total "reasoning".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import check_convention, sum_left
from tinyvlm.eval.scorers.pope import vlmevalkit_answer

CONVENTIONS = ("official", "lmms-eval", "vlmevalkit")
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
             "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
# VLMEvalKit adds the subtasks in this order.
_VLMEVALKIT_ORDER = {
    "perception": ("OCR", "artwork", "celebrity", "color", "count", "existence", "landmark",
                   "position", "posters", "scene"),
    "cognition": ("code_reasoning", "commonsense_reasoning", "numerical_calculation",
                  "text_translation"),
}


class Item(NamedTuple):
    """One line of a subtask file: image, question, ground truth, prediction."""

    image: str
    question: str
    gt: str
    prediction: str


def parse_official(prediction: str) -> str:
    """'yes', 'no' or 'other' by the official rule (no stripping: keep the trailing newline)."""
    text = prediction.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def parse_lmms_eval(prediction: str) -> str:
    """'yes', 'no' or 'other' by lmms-eval's rule."""
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def parse(prediction: str, convention: str = "official") -> str:
    """'yes', 'no' or 'other' under `convention` (VLMEvalKit's 'unknown' becomes 'other')."""
    if convention == "official":
        return parse_official(prediction)
    if convention == "lmms-eval":
        return parse_lmms_eval(prediction)
    answer = vlmevalkit_answer(prediction)
    return "other" if answer == "unknown" else answer


def score_subtask(items: Sequence[Item], convention: str = "official",
                  name: str = "subtask") -> dict[str, Any]:
    """``{"score", "acc", "acc_plus", "images", "other"}`` of one subtask's items.

    Items come two per image, in order; the ground truth is yes/no in any case.
    """
    if not items or len(items) % 2:
        raise InputError(f"mme {name}: expected two lines per image, got {len(items)} lines")
    right = []
    other = 0
    for it in items:
        gt = it.gt.lower()
        if gt not in ("yes", "no"):
            raise InputError(f"mme {name}: ground truth {it.gt!r} is not yes/no")
        said = parse(it.prediction, convention)
        other += said == "other"
        right.append(said == gt)
    pairs = [right[i:i + 2] for i in range(0, len(right), 2)]
    n_images = len(pairs)
    both = sum(1 for a, b in pairs if a and b)
    acc = sum(right) / len(right)
    acc_plus = both / n_images
    if convention == "lmms-eval":
        total = 0.0
        for a, b in pairs:  # the per-image scores 0, 50 or 200, added in order
            total += (a + b) / 2 * 100.0 + (a and b) * 100.0
        subtask_score = total / n_images
    else:
        subtask_score = 0 + acc * 100 + acc_plus * 100
    return {"score": subtask_score, "acc": acc, "acc_plus": acc_plus, "images": n_images,
            "other": other}


def score(subtasks: Mapping[str, Sequence[Item]], convention: str = "official"
          ) -> dict[str, Any]:
    """Scores of the subtasks present; totals over the present ones of each group.

    Returns ``{"perception", "cognition", "subtasks": {name: score}, "details": {name:
    {...}}, "missing": [names], "convention", "unit": "points"}``; a total is None when none
    of its subtasks is present. Unknown subtask names raise InputError.
    """
    check_convention("mme", convention, CONVENTIONS)
    unknown = sorted(set(subtasks) - set(SUBTASKS))
    if unknown:
        raise InputError(f"mme: unknown subtask(s) {', '.join(unknown)} "
                         f"(known: {', '.join(SUBTASKS)})")
    details = {k: score_subtask(subtasks[k], convention, k) for k in SUBTASKS if k in subtasks}
    totals = {}
    for group, names in (("perception", PERCEPTION), ("cognition", COGNITION)):
        order = _VLMEVALKIT_ORDER[group] if convention == "vlmevalkit" else names
        present = [details[k]["score"] for k in order if k in details]
        totals[group] = sum_left(present) if present else None
    return {"convention": convention, "unit": "points", **totals,
            "subtasks": {k: d["score"] for k, d in details.items()}, "details": details,
            "missing": [k for k in SUBTASKS if k not in details]}


def read_subtask(path: str | Path) -> list[Item]:
    """The lines of one subtask file, ``image<TAB>question<TAB>gt<TAB>prediction``.

    The prediction keeps its line ending ('\\n'), as the official tool reads it. A line without
    exactly four tab-separated fields raises InputError naming the file and line.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", path) from None
    items = []
    for lineno, line in enumerate(lines, 1):
        fields = line.split("\t")
        if len(fields) != 4:
            raise InputError(f"expected 4 tab-separated fields (image, question, answer, "
                             f"prediction), got {len(fields)}", path, lineno)
        if fields[2].lower() not in ("yes", "no"):
            raise InputError(f"ground truth {fields[2]!r} is not yes/no", path, lineno)
        items.append(Item(*fields))
    if len(items) % 2:
        raise InputError(f"odd number of lines ({len(items)}): MME has two questions per "
                         "image", path)
    for i in range(0, len(items), 2):
        if items[i].image != items[i + 1].image:
            raise InputError(f"lines {i + 1} and {i + 2} should be the two questions of one "
                             f"image, but name {items[i].image!r} and {items[i + 1].image!r}",
                             path, i + 2)
    return items


def score_files(predictions: str | Path, convention: str = "official") -> dict[str, Any]:
    """Score a directory holding ``<subtask>.txt`` per subtask (missing ones are listed)."""
    check_convention("mme", convention, CONVENTIONS)
    root = Path(predictions)
    if not root.is_dir():
        raise InputError("not a directory (expected one <subtask>.txt file per subtask)", root)
    present = {k: read_subtask(root / f"{k}.txt") for k in SUBTASKS
               if (root / f"{k}.txt").is_file()}
    if not present:
        raise InputError(f"no subtask files (expected e.g. existence.txt, "
                         f"{', '.join(SUBTASKS[1:4])}.txt, ...)", root)
    return score(present, convention)
