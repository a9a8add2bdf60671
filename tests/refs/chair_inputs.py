"""Captions for CHAIR with what its reading branches on: COCO words and synonyms in singular
and plural (regular, irregular, "bus"/"buses", "glass"), the two-word objects and their
near misses ("wine glass", "motor bike", "train track", "baby bird", "passenger train",
"toilet seat" beside "seat"), words glued to punctuation (".", ",", "!", "?", "'s", "s'",
brackets, quotes, "--", "...", hyphens and slashes that keep words together), capitals and
mid-word periods; with random ground-truth classes per image. Deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["dog", "dogs", "cat", "cats", "person", "people", "man", "men", "woman", "women",
         "child", "children", "bus", "buses", "glass", "glasses", "wine glass", "wine glasses",
         "table", "tables", "chair", "chairs", "seat", "toilet", "toilet seat", "couch",
         "couches", "sofa", "knife", "knives", "mouse", "mice", "sheep", "skis", "ski",
         "motor bike", "motorbike", "motorcycle", "baby bird", "adult elephant", "bird",
         "passenger train", "train", "train track", "hot dog", "hot dogs", "teddy bear",
         "teddy-bear", "cell phone", "phone", "tv", "monitor", "laptop", "computer", "cake",
         "cheesecake", "orange", "oranges", "bowl", "bowls", "cup", "mug", "surfboard",
         "surf board", "traffic light", "stop sign", "fire hydrant", "bench", "benches",
         "umbrella", "kite", "kites", "pizza", "broccoli", "giraffe", "zebra", "zebras",
         "horse", "cow", "cattle", "sandwich", "sub", "boat", "liner", "truck", "pickup",
         "car", "cars", "bicycle", "bike", "bikes", "player", "tennis racket", "racket",
         "ball", "sports ball", "frisbee", "vase", "book", "books", "clock", "scissors",
         "toothbrush", "hair drier", "refrigerator", "fridge", "oven", "sink", "bed", "bear"]
FILLER = ["a", "the", "two", "some", "near", "with", "and", "on", "next to", "there is",
          "in front of", "holding", "beside", "of the", "several", "an old", "this"]
GLUE = ["", "", "", "", ".", ",", "!", "?", "'s", "s'", ")", ":", ";", "...", "--", ".)",
        "\"", ".\"", "/dog", "-like", ".com", "'", "s."]
CLASSES = ["person", "bicycle", "car", "motorcycle", "bus", "train", "truck", "boat",
           "traffic light", "fire hydrant", "stop sign", "bench", "bird", "cat", "dog",
           "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "umbrella",
           "frisbee", "skis", "kite", "tennis racket", "surfboard", "bottle", "wine glass",
           "cup", "knife", "bowl", "sandwich", "orange", "broccoli", "hot dog", "pizza",
           "cake", "chair", "couch", "bed", "dining table", "toilet", "tv", "laptop",
           "mouse", "cell phone", "oven", "sink", "refrigerator", "book", "clock", "vase",
           "scissors", "teddy bear", "hair drier", "toothbrush", "sports ball"]


def chair_case(seed: int = 10, n: int = 320) -> tuple[list, dict]:
    """(captions [{image_id, caption}], ground truth {image_id: [classes]})."""
    rng = random.Random(seed)
    captions, gt = [], {}
    for i in range(n):
        image_id = 100000 + i
        parts = []
        for _ in range(rng.randint(2, 9)):
            word = rng.choice(WORDS)
            if rng.random() < 0.15:
                word = word.capitalize()
            parts.append(rng.choice(FILLER) + " " + word + rng.choice(GLUE))
        text = " ".join(parts)
        if rng.random() < 0.3:
            text = "(" + text
        captions.append({"image_id": image_id, "caption": text[0].upper() + text[1:]})
        gt[str(image_id)] = rng.sample(CLASSES, rng.randint(0, 35))
    # A second caption for some images, as caption files may hold.
    captions += [{"image_id": c["image_id"], "caption": c["caption"].lower() + " a dog."}
                 for c in captions[:10]]
    # Every pair of marks glued after and before a word, markdown bold, mid-text and final.
    marks = [".", ",", "!", "?", ";", ":", "...", "-", "--", "'", '"', "(", ")", "[", "]",
             "<", ">", "*", "**", "/", "`", "``", "''", "\u201c", "\u201d", "\u2019",
             "\u00bb", "\u2014", "+", "\u2026"]
    glued = sorted({a + b for a in marks for b in marks} | set(marks))
    for k, g in enumerate(glued):
        image_id = 900000 + k
        gt[str(image_id)] = ["cat"]
        for text in (f"a dog{g} and a cat", f"a dog{g}", f"there is {g}dog here", f"{g}dog",
                     f"A **dog{g}** sits by the cat."):
            captions.append({"image_id": image_id, "caption": text})
    return captions, gt


def write_chair_case(directory: Path) -> tuple[Path, Path]:
    """(captions JSONL, ground-truth JSON)."""
    captions, gt = chair_case()
    c, g = directory / "captions.jsonl", directory / "objects.json"
    c.write_text("".join(json.dumps(x) + "\n" for x in captions))
    g.write_text(json.dumps(gt))
    return c, g
