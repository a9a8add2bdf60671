"""POPE's official question files: the one reader, the split names and their order.

A line is ``{"question_id", "image", "text", "label"}`` (label "yes" or "no"); LLaVA's copies
may leave out the label and carry a ``category`` (the split) instead. The harness loads
questions from it, the scorer reads labels from it, and preference building reads probes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.io import read_jsonl_numbered

SPLITS = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class PopeQuestion:
    line: int
    question_id: Any  # as the file writes it (an int or a string)
    image: str | None
    text: str | None
    label: str | None  # "yes" / "no" as written (case and spaces kept), None when absent
    category: str | None

    @property
    def label_yes(self) -> bool:
        assert self.label is not None
        return self.label.strip().lower() == "yes"


def split_name(path: str | Path, category: str | None = None) -> str:
    """The split of a POPE file: its rows' category when that is a split name, else the file
    name after its last 'pope_' ('coco_pope_adversarial.json' -> 'adversarial'), else the
    file's stem."""
    if category in SPLITS:
        return str(category)
    stem = Path(path).stem
    return stem.rsplit("pope_", 1)[1] if "pope_" in stem else stem


def read_questions(path: str | Path, require: Sequence[str] = ("image", "text"),
                   need_label: bool = False) -> list[PopeQuestion]:
    """Every line of a POPE file, checked: an object with question_id and the `require`d
    keys (strings), a label that is yes or no where given (`need_label`: on every line), and
    no question id twice. Errors name the file and the line."""
    out: list[PopeQuestion] = []
    seen: dict[str, int] = {}
    for line, row in read_jsonl_numbered(path):
        if not isinstance(row, dict) or "question_id" not in row:
            raise InputError("a POPE line must be an object with a question_id", path, line)
        for key in require:
            if not isinstance(row.get(key), str):
                raise InputError(f"a POPE line needs '{key}' (a string)", path, line)
        label = row.get("label")
        if label is None and need_label:
            raise InputError("missing key 'label'", path, line)
        if label is not None and (not isinstance(label, str)
                                  or label.strip().lower() not in ("yes", "no")):
            raise InputError(f"label {label!r} is not yes/no", path, line)
        qid = str(row["question_id"])
        if qid in seen:
            raise InputError(f"question_id {row['question_id']!r} repeats line {seen[qid]}",
                             path, line)
        seen[qid] = line
        out.append(PopeQuestion(line, row["question_id"], row.get("image"), row.get("text"),
                                label, row.get("category")))
    return out
