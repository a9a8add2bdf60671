"""MOAT records in MOAT's own layout (index, question, choices, ground_truth, capability, the
model's answer, the judge's verdict) for five runs over 150 questions tagged with one to
three capabilities each; on these, adding the run accuracies left to right and as Python
3.12's sum does differ in the last bit. Deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPS = ("CNT", "OCR", "RLA", "3DTF", "3DQNT", "GNDT", "GNDV", "UCV", "RET", "MTIMG", "MTLIN")


def moat_case(seed: int = 0, n: int = 150, runs: int = 5) -> tuple[list[dict], list[list[dict]]]:
    """(questions with their capabilities, one list of answer records per run)."""
    rng = random.Random(seed)
    questions = [{"index": i, "question": f"question {i}", "choices": [],
                  "ground_truth": f"answer {i}", "capability": rng.sample(CAPS, rng.randint(1, 3))}
                 for i in range(n)]
    out = []
    for r in range(runs):
        p = 0.3 + 0.2 * r
        out.append([{**q, "answer": f"answer {i}" if rng.random() < p else "other",
                     "verdict": int(rng.random() < p)} for i, q in enumerate(questions)])
    return questions, out


def write_moat_case(directory: Path) -> list[Path]:
    """One JSONL file of records per run."""
    paths = []
    for r, records in enumerate(moat_case()[1]):
        path = directory / f"run{r}.jsonl"
        path.write_text("".join(json.dumps(rec) + "\n" for rec in records))
        paths.append(path)
    return paths
