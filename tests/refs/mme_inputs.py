"""MME subtask files with answers of every shape the parsers branch on ("Yes", "No.", "Y",
"n", "not sure", "yes, but no", an answer with "no" only after its fourth character, empty,
case and spaces), for all fourteen subtasks with different image counts. Deterministic."""

from __future__ import annotations

import random
from pathlib import Path

ANSWERS = ["Yes", "No", "yes", "no", "Yes.", "No.", "YES", "NO", "Y", "n", "y.", "N",
           "Yes, there is", "No, there is not", "Not sure", "not sure", "The answer is yes",
           "There is no", " yes", " no", "yes\t", "Nope", "Yeah", "noo", "I think no", "",
           "unknown", "yes, but no", "No way, yes", "Absolutely", "ye s", "n/a", "It is not"]
SUBTASKS = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
            "landmark", "artwork", "OCR", "commonsense_reasoning", "numerical_calculation",
            "text_translation", "code_reasoning")


def mme_case(seed: int = 5) -> dict[str, list[tuple[str, str, str, str]]]:
    """subtask -> lines (image, question, gt, prediction), two per image."""
    rng = random.Random(seed)
    out = {}
    for task in SUBTASKS:
        lines = []
        for i in range(rng.randint(3, 23)):
            image = f"{task}_{i:03d}.jpg"
            for gt in rng.sample(["Yes", "No"], 2):
                question = f"Is this {task} number {i}? Please answer yes or no."
                lines.append((image, question, gt, rng.choice(ANSWERS).replace("\t", " ")))
        out[task] = lines
    return out


def write_mme_case(directory: Path) -> Path:
    """One <subtask>.txt per subtask in `directory`, lines image\\tquestion\\tgt\\tprediction."""
    for task, lines in mme_case().items():
        (directory / f"{task}.txt").write_text("".join("\t".join(f) + "\n" for f in lines))
    return directory
