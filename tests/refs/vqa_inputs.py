"""Adversarial but legal VQAv2 inputs: human answers that agree or disagree up to case,
spaces, punctuation, number words, articles and contractions, and predictions that differ
from them in the same ways. Deterministic: the same files on every call."""

from __future__ import annotations

import json
import random
from pathlib import Path

POOL = ["two", "2", "Two", "two.", "the cat", "cat", "a dog", "dog", "dog's", "dogs", "dont",
        "don't", "yes", "Yes", "yes ", "yes\n", "no", "no.", "No!", "1,000", "1000", "3.5",
        "3.5.", "red,blue", "red, blue", "x-ray", "x ray", "t-shirt", "(a)", "a", "left side",
        "left", "ten", "10", "an apple", "apple", "it's red", "its red", "hes", "he's",
        "none", "0", "zero", "red\tcar", "red car", "ok?", "ok", "$5", "5", "100%"]
NOISE = ["", " ", "\n", ".", "!", "?", ",", "the ", "a "]
ANSWER_TYPES = ["yes/no", "number", "other"]
QUESTION_TYPES = ["what is", "how many", "is the", "what color is the", "none of the above"]


def vqa_case(seed: int = 0, n: int = 300) -> tuple[dict, dict, list]:
    """(questions, annotations, results) in the official VQAv2 layouts."""
    rng = random.Random(seed)
    questions, annotations, results = [], [], []
    for qid in range(1, n + 1):
        image_id = 1000 + qid // 3
        if rng.random() < 0.3:  # every human gives the same answer (up to spaces)
            base = rng.choice(POOL)
            answers = [base + rng.choice(["", "", " ", "\n"]) for _ in range(10)]
        else:
            k = rng.randint(2, 5)
            choices = rng.sample(POOL, k)
            answers = [rng.choice(choices) for _ in range(10)]
        humans = [{"answer": a, "answer_confidence": rng.choice(["yes", "maybe", "no"]),
                   "answer_id": i + 1} for i, a in enumerate(answers)]
        pick = rng.choice(answers) if rng.random() < 0.8 else rng.choice(POOL)
        noise = rng.choice(NOISE)
        prediction = noise + pick if noise in ("the ", "a ") else pick + noise
        if rng.random() < 0.2:
            prediction = prediction.upper()
        questions.append({"question_id": qid, "image_id": image_id, "question": f"q{qid}?"})
        annotations.append({"question_id": qid, "image_id": image_id, "answers": humans,
                            "answer_type": rng.choice(ANSWER_TYPES),
                            "question_type": rng.choice(QUESTION_TYPES),
                            "multiple_choice_answer": answers[0]})
        results.append({"question_id": qid, "answer": prediction})
    meta = {"data_subtype": "val2014", "task_type": "OpenEnded", "data_type": "mscoco",
            "license": {"url": "", "name": ""}, "info": {}}
    return ({**meta, "questions": questions}, {**meta, "annotations": annotations}, results)


def write_vqa_case(directory: Path, seed: int = 0, n: int = 300) -> tuple[Path, Path, Path]:
    questions, annotations, results = vqa_case(seed, n)
    paths = (directory / "v2_OpenEnded_mscoco_val2014_questions.json",
             directory / "v2_mscoco_val2014_annotations.json", directory / "results.json")
    for path, doc in zip(paths, (questions, annotations, results), strict=True):
        path.write_text(json.dumps(doc))
    return paths


def textvqa_case(seed: int = 1, images: int = 150) -> tuple[dict, list, list]:
    """(TextVQA annotations, results in our layout, results in LLaVA's layout): several
    questions per image, both result files in a shuffled order. LLaVA's layout keys a result
    by the image id and the question in its prompt."""
    rng = random.Random(seed)
    data, ours, llava = [], [], []
    qid = 0
    for image in range(images):
        for k in range(rng.randint(1, 3)):
            qid += 1
            choices = rng.sample(POOL, rng.randint(1, 4))
            answers = [rng.choice(choices) for _ in range(10)]
            question = f"What is written on sign {k} of picture {image}?"
            data.append({"question_id": qid, "image_id": f"img{image:04d}",
                         "question": question, "answers": answers})
            pick = rng.choice(answers) if rng.random() < 0.7 else rng.choice(POOL)
            prediction = pick + rng.choice(NOISE)
            ours.append({"question_id": qid, "answer": prediction})
            llava.append({"question_id": f"img{image:04d}", "text": prediction,
                          "prompt": f"{question}\nAnswer the question using a single word "
                                    "or phrase."})
    order = list(range(len(ours)))
    rng.shuffle(order)
    return ({"dataset_name": "textvqa", "data": data}, [ours[i] for i in order],
            [llava[i] for i in order])
