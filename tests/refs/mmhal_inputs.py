"""An MMHal-Bench response file (96 records in the released type order) and judge replies of
every shape the rating search branches on: "Rating: 5", "RATING: 6", "rating:3" (no space),
two ratings, none, a rating inside other text. Deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path

TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment",
         "holistic", "other")
SHAPES = ["Explanation: fine.\n- Rating: {s}", "RATING: {s}", "rating:{s}", "Rating: {s}.",
          "Rating: {s}\nRating: {t}", "No rating given.", "Overall rating: {s}, good",
          "rating: {s} (out of 6)", "Rating: {s}, Rating: {s}", "Rating - {s}"]


def mmhal_case(seed: int = 9) -> tuple[list, list]:
    """(records, chat-completion replies as eval_gpt4.py saves them)."""
    rng = random.Random(seed)
    records, replies = [], []
    for i in range(96):
        records.append({"question_type": TYPES[i % 8], "question_topic": "outdoor",
                        "image_id": f"{i:016x}", "image_src": f"https://x/{i}.jpg",
                        "image_content": ["Thing", "Other"], "question": f"What is {i}?",
                        "gt_answer": "A thing.",
                        "model_answer": rng.choice(["", "A thing.", "Two red things here."])})
        s, t = rng.randint(0, 6), rng.randint(0, 6)
        text = rng.choice(SHAPES).format(s=s, t=t)
        replies.append({"choices": [{"message": {"role": "assistant", "content": text}}]})
    return records, replies


def write_mmhal_case(directory: Path) -> tuple[Path, Path]:
    """(response file, --evaluation file)."""
    records, replies = mmhal_case()
    a, b = directory / "response.json", directory / "review.json"
    a.write_text(json.dumps(records))
    b.write_text(json.dumps(replies))
    return a, b
