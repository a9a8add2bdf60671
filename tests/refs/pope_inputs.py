"""POPE probes and answers of every shape the parsers branch on ("Yes.", "No, there is
not", "NO", "Not sure", 'yes, the output is "no"', commas, a no after the first sentence,
empty answers), for three splits. Deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path

ANSWERS = ["Yes", "yes", "Yes.", "No", "no", "No.", "NO", "YES", "Yes, there is a {o}.",
           "No, there is not a {o}.", "There is no {o}.", "Not sure", "not sure", "Nope",
           'yes, the output is "no"', "I do not see a {o}.", "There is no {o}. Yes", "",
           " yes", "no,", "No,there is", "Yes, no doubt.", "The {o} is not there.",
           "yes\nno", "Absolutely not", "Sure, yes!", "unknown", "n/a"]
SPLITS = ("random", "popular", "adversarial")


def pope_case(seed: int = 4, per_split: int = 120) -> dict[str, tuple[list, list]]:
    """split -> (question lines with labels, answer lines {question_id, text}), in one
    question-id space so the three files can be scored together."""
    rng = random.Random(seed)
    out = {}
    qid = 0
    for split in SPLITS:
        questions, answers = [], []
        for _ in range(per_split):
            qid += 1
            obj = rng.choice(["dog", "cat", "car", "chair", "person"])
            questions.append({"question_id": qid, "image": f"COCO_val2014_{qid:012d}.jpg",
                              "text": f"Is there a {obj} in the image?",
                              "label": rng.choice(["yes", "no"]), "category": split})
            answers.append({"question_id": qid, "text": rng.choice(ANSWERS).format(o=obj)})
        out[split] = (questions, answers)
    return out


def write_pope_case(directory: Path) -> dict[str, tuple[Path, Path]]:
    """coco_pope_<split>.json (one JSON object per line, as the release has them) and the
    answers of each split: split -> (annotations, answers)."""
    paths = {}
    for split, (questions, answers) in pope_case().items():
        ann, ans = directory / f"coco_pope_{split}.json", directory / f"answers_{split}.jsonl"
        ann.write_text("".join(json.dumps(q) + "\n" for q in questions))
        ans.write_text("".join(json.dumps(a) + "\n" for a in answers))
        paths[split] = (ann, ans)
    return paths
