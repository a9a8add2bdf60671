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
        text = prediction(rng, letter, q[f"choice_{letter.lower()}"])
        # A right answer in every dimension: LLaVA's converter fails on a dimension without.
        answers.append({"question_id": str(i), "prediction": truth if i < 9 else text})
    for j in range(2):  # video questions too (LLaVA's converter divides by their count)
        questions.append({"question_id": str(n + j), "question": "v?", "answer": "A",
                          "data_id": f"v{j}.mp4", "data_type": "video",
                          "question_type_id": 10, **{f"choice_{c}": c for c in "abcd"}})
        answers.append({"question_id": str(n + j), "prediction": "A" if j else "B"})
    types = {f"dimension {k}": k for k in range(1, 11)}
    return {"questions": questions, "question_type": types}, answers


MISSING_LIKE = ["None", "N/A", "NA", "nan", "null", "", "NULL", "n/a"]
VERBOSE = ["The correct answer is **{l}**. Here is why: {text}.", "the answer is {low}",
           "Answer is ({l})", "Between {l} and the others, the answer is {l}.",
           "{text} is right because it is {text}, so {l}", "{l} " + "and so on " * 6,
           "Well, " * 8 + "{text}", "{text}"]


def mmbench_case(seed: int = 2, questions: int = 80) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of an MMBench TSV with predictions: circular copies, options spelled
    like missing values, a column of numbers with a gap, predictions of every shape."""
    rng = random.Random(seed)
    header = ["index", "question", "A", "B", "C", "D", "answer", "category", "l2-category",
              "prediction"]
    rows = []
    for q in range(questions):
        k = rng.choice([2, 3, 4, 4])
        options = [f"thing {q}-{j}" for j in range(k)]
        if rng.random() < 0.3:
            options[rng.randrange(k)] = rng.choice(MISSING_LIKE)
        truth = rng.randrange(k)
        for copy in range(rng.choice([1, 1, 4])):
            opts = options[copy % k:] + options[: copy % k]
            answer = "ABCD"[opts.index(options[truth])]
            pick = answer if rng.random() < 0.6 else rng.choice("ABCD"[:k])
            shapes = SHAPES + VERBOSE
            text = opts["ABCD".index(pick)] if "ABCD".index(pick) < k else "x"
            pred = rng.choice(shapes).format(l=pick, low=pick.lower(), text=text)
            if rng.random() < 0.05:
                pred = rng.choice(MISSING_LIKE)
            cells = dict(zip("ABCD", [*opts, *[""] * (4 - k)], strict=True))
            rows.append({"index": str(q + copy * 1_000_000), "question": f"q{q}?", **cells,
                         "answer": answer, "category": f"cat{q % 3}",
                         "l2-category": f"l2{q % 2}", "prediction": pred})
    for r in rows:  # a column of numbers with a gap: pandas reads it as floats
        r["D"] = "" if r["D"] == "" else str(len(r["question"]))
    return header, rows


def _options_cases(seed: int = 3, n: int = 300) -> list[tuple[str, dict[str, str]]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        k = rng.randint(2, 5)
        choices = {"ABCDE"[j]: rng.choice(["cat", "dog", "a red bird", "fish", "dog house",
                                           "1", "A", "none of these", "blue"]) + f"{j}" * (j % 2)
                   for j in range(k)}
        letter = rng.choice(list(choices))
        text = choices[letter]
        pred = rng.choice(SHAPES + VERBOSE).format(l=letter, low=letter.lower(), text=text)
        cases.append((pred, choices))
    return cases


OPTIONS_CASES = _options_cases()
