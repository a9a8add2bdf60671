"""VizWiz annotations (ten answers each, "unanswerable" among them, contractions with straight
and curly apostrophes, numbers as words and digits, every answer type, answerable 0/1) and
results: answers with the spellings the normalisation branches on, and an `answerable`
probability on some. Deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path

POOL = ["unanswerable", "don't know", "dont know", "don\u2019t know", "two", "2", "red",
        "a red shirt", "red shirt", "yes", "no", "can't tell", "cant tell", "coca cola",
        "coca-cola", "10", "ten", "it's blue", "its blue", "blue", "the remote", "remote"]
NOISE = ["", ".", "!", " ", "\n", "?", ",", " .", ")"]
TYPES = ("other", "yes/no", "number", "unanswerable")


def vizwiz_case(seed: int = 8, n: int = 240) -> tuple[list, list]:
    """(annotations, results) in the VizWiz file layouts; results shuffled."""
    rng = random.Random(seed)
    anns, res = [], []
    for i in range(n):
        image = f"VizWiz_val_{i:08d}.jpg"
        choices = rng.sample(POOL, rng.randint(1, 4))
        answers = [{"answer": rng.choice(choices), "answer_confidence": rng.choice(
            ["yes", "maybe", "no"])} for _ in range(10)]
        unanswerable = sum(a["answer"] == "unanswerable" for a in answers) >= 5
        anns.append({"image": image, "question": f"What is this {i}?", "answers": answers,
                     "answer_type": "unanswerable" if unanswerable else rng.choice(TYPES[:3]),
                     "answerable": 0 if unanswerable else 1})
        word = rng.choice(answers)["answer"] if rng.random() < 0.6 else rng.choice(POOL)
        word = rng.choice([word, word.upper(), word.capitalize()]) + rng.choice(NOISE)
        row = {"image": image, "answer": word}
        if rng.random() < 0.5:
            row["answerable"] = round(rng.random(), 3) if rng.random() < 0.7 else \
                int(word.strip(" .!?,)\n").lower() != "unanswerable")
        res.append(row)
    rng.shuffle(res)
    return anns, res


def write_vizwiz_case(directory: Path, with_answerable: bool = True) -> tuple[Path, Path]:
    """(val.json, results.json); `with_answerable` False drops the results' answerable."""
    anns, res = vizwiz_case()
    if not with_answerable:
        res = [{k: v for k, v in r.items() if k != "answerable"} for r in res]
    a, r = directory / "val.json", directory / "results.json"
    a.write_text(json.dumps(anns))
    r.write_text(json.dumps(res))
    return a, r
