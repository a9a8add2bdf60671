"""Multiple-choice predictions in every shape the parsers branch on: letters with spaces,
newlines and case, "X." prefixes, parentheses, sentences, empty answers. Deterministic."""

from __future__ import annotations

import random

SHAPES = ["{l}", " {l}", "{l}\n", "{low}", " {low} ", "{l}.", "{low}.", "{l}. {text}",
          "({l})", "The answer is {l}.", "Answer: {l}", "{l}{l}", "{text}", "", "  ", "{l}:",
          "{l}) {text}", "I think {l}", "\n{l}.", "{l} .", "K", "Ａ"]


def prediction(rng: random.Random, letter: str, text: str) -> str:
    return rng.choice(SHAPES).format(l=letter, low=letter.lower(), text=text)


def scienceqa_case(seed: int = 0, n: int = 200) -> tuple[dict, list]:
    """(problems.json, LLaVA-style answer lines {question_id, prompt, text})."""
    rng = random.Random(seed)
    problems, answers = {}, []
    for i in range(n):
        k = rng.randint(2, 5)
        choices = [f"option {j} of {i}" for j in range(k)]
        truth = rng.randrange(k)
        pick = truth if rng.random() < 0.6 else rng.randrange(k)
        letter = "ABCDE"[pick]
        pid = str(1000 + i)
        problems[pid] = {"question": f"q{i}?", "choices": choices, "answer": truth,
                         "hint": "", "image": "image.png" if i % 3 else None,
                         "split": "test", "subject": "natural science", "grade": "grade5",
                         "category": "c"}
        answers.append({"question_id": pid, "prompt": ("<image>\n" if i % 3 else "") + "q",
                        "text": prediction(rng, letter, choices[pick])})
    return problems, answers


def seed_case(seed: int = 0, n: int = 200) -> tuple[dict, list]:
    """(SEED-Bench JSON, answer lines {question_id, prediction})."""
    rng = random.Random(seed)
    questions, answers = [], []
    for i in range(n):
        truth = rng.choice("ABCD")
        letter = truth if rng.random() < 0.6 else rng.choice("ABCD")
        q = {"question_id": str(i), "question": f"q{i}?", "answer": truth,
             "data_id": f"{i}.jpg", "data_type": "image", "question_type_id": 1 + i % 9,
             **{f"choice_{c}": f"choice {c} of {i}" for c in "abcd"}}
        questions.append(q)
        answers.append({"question_id": str(i),
                        "prediction": prediction(rng, letter, q[f"choice_{letter.lower()}"])})
    types = {f"dimension {k}": k for k in range(1, 10)}
    return {"questions": questions, "question_type": types}, answers
