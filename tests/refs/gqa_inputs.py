"""GQA questions (balanced and not, every structural and semantic type, programs with and
without the operations the step count leaves out, "Common" detailed types, global groups
and none, entailment links), choices, and answers in LLaVA's JSONL layout (case, trailing
periods, spaces). Deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path

STRUCTURAL = ("query", "verify", "logical", "choose", "compare")
SEMANTIC = ("obj", "attr", "rel", "cat", "global")
ANSWERS = ("yes", "no", "left", "right", "red", "blue", "wood", "metal", "cat", "dog",
           "table", "color", "material", "shape")
OPS = [("select", "cat"), ("filter color", "red"), ("relate", "to the left of,s"),
       ("query", "name"), ("query", "color"), ("exist", "?"), ("verify color", "blue"),
       ("choose name", "cat|dog"), ("choose color", "red|blue"), ("and", ""), ("same", "color")]
DETAILED = ("existRelS", "materialCompare", "sameMaterialCommon", "colorChoose",
            "relChooser", "categoryRelS", "compareCommon")


def gqa_case(seed: int = 7, n: int = 260) -> tuple[dict, dict, list]:
    """(questions {id: question}, choices {id: {valid, plausible}}, LLaVA answer lines)."""
    rng = random.Random(seed)
    questions, choices, answers = {}, {}, []
    ids = [f"{rng.randint(10**7, 10**8 - 1)}" for _ in range(n)]
    for qid in ids:
        answer = rng.choice(ANSWERS)
        words = rng.randint(3, 9)
        questions[qid] = {
            "imageId": f"n{rng.randint(10**5, 10**6)}",
            "question": " ".join(["is"] + ["word"] * (words - 2) + ["?"]) +
                        ("  " if rng.random() < 0.1 else ""),
            "answer": answer, "fullAnswer": f"The answer is {answer}.",
            "isBalanced": rng.random() < 0.8,
            "types": {"structural": rng.choice(STRUCTURAL), "semantic": rng.choice(SEMANTIC),
                      "detailed": rng.choice(DETAILED)},
            "semantic": [{"operation": op, "argument": arg, "dependencies": []}
                         for op, arg in rng.sample(OPS, rng.randint(1, 5))],
            "groups": {"global": rng.choice([None, "color", "material", "animal", "place"]),
                       "local": f"{rng.randint(0, 9)}-x"},
            "entailed": rng.sample(ids, rng.randint(0, 3)) + ([qid] if rng.random() < 0.2 else []),
            "equivalent": [qid],
        }
        pool = list(ANSWERS)
        choices[qid] = {"valid": rng.sample(pool, 6), "plausible": rng.sample(pool, 3)}
        text = answer if rng.random() < 0.5 else rng.choice(ANSWERS)
        text = rng.choice([text, text.capitalize(), text + ".", text.upper() + "..",
                           " " + text, text + " .", text + "\n"])
        answers.append({"question_id": qid, "prompt": "q", "text": text})
    rng.shuffle(answers)
    return questions, choices, answers


def write_gqa_case(directory: Path) -> tuple[Path, Path, Path]:
    """(questions JSON, choices JSON, LLaVA answers JSONL) in `directory`."""
    questions, choices, answers = gqa_case()
    q, c, a = (directory / "testdev_balanced_questions.json",
               directory / "testdev_balanced_choices.json", directory / "answers.jsonl")
    q.write_text(json.dumps(questions))
    c.write_text(json.dumps(choices))
    a.write_text("".join(json.dumps(r) + "\n" for r in answers))
    return q, c, a
