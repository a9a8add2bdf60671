"""VQA accuracy: normalisation cases, leave-one-out over ten answers, rounding, and the
TextVQA / lmms-eval / VLMEvalKit variants.

Expected values follow the VQA API's vqaEval.py, the M4C TextVQA evaluator (LLaVA's
m4c_evaluator.py), lmms-eval's vqav2 and textvqa utils and VLMEvalKit's process_line; they are
worked out in the comments, and a throwaway transcription of those scripts agreed to the bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers import vqa


def answers(*groups: tuple[str, int]) -> list[dict]:
    texts = [t for t, k in groups for _ in range(k)]
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1}
            for i, t in enumerate(texts)]


ITEMS = [
    # q1: "two" -> "2"; unanimous "2": every leave-one-out subset has 9 matches -> 1.0
    {"question_id": 1, "prediction": "two", "answers": answers(("2", 10)),
     "answer_type": "number", "question_type": "how many"},
    # q2: "Yes." -> "yes"; held-out yes: 2 matches (2/3), held-out no: 3 (1) -> 0.9
    {"question_id": 2, "prediction": "Yes.", "answers": answers(("yes", 3), ("no", 7)),
     "answer_type": "yes/no", "question_type": "is there"},
    # q3: "A cat" -> "cat", but the official script only strips punctuation from disagreeing
    # human answers, so "the cat" keeps its article: 0. lmms-eval and TextVQA: 0.6.
    {"question_id": 3, "prediction": "A cat", "answers": answers(("the cat", 2), ("dog", 8)),
     "answer_type": "other", "question_type": "what"},
    # q4: unanimous answers are not normalised at all: "ten" never equals a prediction
    {"question_id": 4, "prediction": "10", "answers": answers(("ten", 10)),
     "answer_type": "number", "question_type": "how many"},
    # q5: "dont" -> "don't"; 5 + 5 answers: each subset keeps >= 4 matches -> 1.0
    {"question_id": 5, "prediction": "dont", "answers": answers(("don't", 5), ("do not", 5)),
     "answer_type": "other", "question_type": "what"},
    # q6: "3." -> "3"; 2/3 x3, 1/3 x2, 2/3 x5 added in this order: 6.000000000000001 / 10
    {"question_id": 6, "prediction": "3.", "answers": answers(("4", 3), ("3", 2), ("4", 5)),
     "answer_type": "number", "question_type": "how many"},
    # q7: ", " is deleted (it touches a space) -> "red white": one match -> 0.3
    {"question_id": 7, "prediction": "red, white", "answers": answers(("red white", 1),
                                                                        ("red", 9)),
     "answer_type": "other", "question_type": "what"},
]


@pytest.mark.parametrize(("text", "official", "evalai"), [
    ("3.", "3", "3"),
    ("3.5", "3.5", "3.5"),
    ("Two dogs", "2 dogs", "2 dogs"),
    ("the cat", "cat", "cat"),
    ("dont", "don't", "don't"),
    ("1,000", "1000", "1000"),
    ("x-ray", "x ray", "x ray"),
    ("yes, it is", "yes it is", "yes it is"),
    ("it's", "it's", "it 's"),
    ("What?", "what", "what"),
    (" Yes.\n", "yes", "yes"),
    ("none", "0", "0"),
])
def test_normalisation(text: str, official: str, evalai: str) -> None:
    assert vqa.normalize_vqa(text) == official
    assert vqa.normalize_evalai(text) == evalai


def test_period_rule_removes_at_most_32() -> None:
    # The scripts pass re.UNICODE (32) as sub()'s count.
    assert vqa.process_punctuation("." * 40) == "." * 8


def test_leave_one_out_per_question() -> None:
    old = [vqa.question_accuracy(it["prediction"], it["answers"], "vqav2", "official-2016")
           for it in ITEMS]
    assert old == [1.0, 0.9, 0.0, 0.0, 1.0, 0.6000000000000001, 0.3]
    # Today's script normalises nothing when the humans agree (q1: "two" is not "2") and
    # both sides when they disagree (q3: "A cat" and "the cat" are both "cat").
    official = [vqa.question_accuracy(it["prediction"], it["answers"]) for it in ITEMS]
    assert official == [0.0, 0.9, 0.6, 0.0, 1.0, 0.6000000000000001, 0.3]
    lmms = [vqa.question_accuracy(it["prediction"], it["answers"], "vqav2", "lmms-eval-2024")
            for it in ITEMS]
    # statistics.mean is exact, so q6 is 0.6; q3 normalises the human answers too
    assert lmms == [1.0, 0.9, 0.6, 0.0, 1.0, 0.6, 0.3]
    # lmms-eval since August 2025 normalises both sides always: q1 and q4 are right too
    now = [vqa.question_accuracy(it["prediction"], it["answers"], "vqav2", "lmms-eval")
           for it in ITEMS]
    assert now == [1.0, 0.9, 0.6, 1.0, 1.0, 0.6, 0.3]
    textvqa = [vqa.question_accuracy(it["prediction"], [a["answer"] for a in it["answers"]],
                                     "textvqa") for it in ITEMS]
    assert textvqa == [1.0, 0.9, 0.6, 1.0, 1.0, 0.6000000000000001, 0.3]


def test_identical_answer_records_are_left_out_together() -> None:
    # Records without answer_id that are equal as dicts drop out together, as in vqaEval.py:
    # holding out either "cat" leaves no "cat", so 8 of 10 subsets have 2 matches, 2 have 0.
    same = [{"answer": "cat"}, {"answer": "cat"}] + [{"answer": f"dog{i}"} for i in range(8)]
    assert vqa.question_accuracy("cat", same) == 8 * (2 / 3) / 10
    # with answer ids (as in the real files) only one is left out: 8 x 2/3 + 2 x 1/3
    ids = [{**a, "answer_id": i} for i, a in enumerate(same)]
    assert vqa.question_accuracy("cat", ids) == (8 * (2 / 3) + 2 * (1 / 3)) / 10


def test_scores_and_rounding() -> None:
    got = vqa.score(ITEMS, "vqav2", "official-2016")
    # 1 + 0.9 + 0 + 0 + 1 + 0.6000000000000001 + 0.3 = 3.8 in float; round(100 * 3.8 / 7, 2)
    assert got["overall"] == 54.29 and got["accuracy"] == 3.8 / 7
    assert got["per_answer_type"] == {"number": 53.33, "yes/no": 90.0, "other": 43.33}
    assert got["per_question_type"] == {"how many": 53.33, "is there": 90.0, "what": 43.33}
    assert vqa.score(ITEMS, "vqav2", "lmms-eval-2024")["overall"] == 0.6285714285714284
    assert vqa.score(ITEMS)["overall"] == round(100 * 3.4 / 7, 2) == 48.57
    text = vqa.score(ITEMS, "textvqa")
    assert text["overall"] == 77.14 and text["accuracy"] == 0.7714285714285714
    assert vqa.score(ITEMS, "textvqa", "lmms-eval")["overall"] == 0.7714285714285714
    # VLMEvalKit keeps the period of q6's "3." (it follows a digit), so q6 scores 0 there.
    assert vqa.score(ITEMS, "textvqa", "vlmevalkit")["overall"] == 100 * np.mean(
        [1.0, 0.9, 0.6, 1.0, 1.0, 0.0, 0.3])
    with pytest.raises(InputError, match="no VQAv2 scorer"):
        vqa.score(ITEMS, "vqav2", "vlmevalkit")


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_vqav2_files(tmp_path: Path) -> None:
    ann = write(tmp_path / "annotations.json", {"annotations": [
        {k: it[k] for k in ("question_id", "answers", "answer_type", "question_type")}
        for it in ITEMS]})
    questions = write(tmp_path / "questions.json", {"questions": [
        {"question_id": it["question_id"], "question": "?", "image_id": 1} for it in ITEMS]})
    results = write(tmp_path / "results.json", [
        {"question_id": it["question_id"], "answer": it["prediction"]} for it in ITEMS])
    assert vqa.score_files(ann, results, questions)["overall"] == 48.57
    assert vqa.score_files(ann, results, questions, convention="official-2016")["overall"] == 54.29
    write(results, [{"question_id": it["question_id"], "answer": it["prediction"]}
                    for it in ITEMS[:-1]])
    with pytest.raises(InputError, match=r"1 question ids missing from .*results.json \(7\)"):
        vqa.score_files(ann, results)
    write(questions, {"questions": [{"question_id": 1}]})
    with pytest.raises(InputError, match="6 annotated question ids are not in the questions"):
        vqa.score_files(ann, results, questions)


def test_textvqa_files_and_jsonl_results(tmp_path: Path) -> None:
    ann = write(tmp_path / "TextVQA_val.json", {"data": [
        {"question_id": it["question_id"], "question": "?",
         "answers": [a["answer"] for a in it["answers"]]} for it in ITEMS]})
    results = tmp_path / "answers.jsonl"
    results.write_text("".join(json.dumps({"question_id": it["question_id"],
                                           "text": it["prediction"]}) + "\n" for it in ITEMS))
    assert vqa.score_files(ann, results, variant="textvqa")["overall"] == 77.14
    results.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(InputError, match=r"answers.jsonl:2: question_id 1 repeats line 1"):
        vqa.score_files(ann, results, variant="textvqa")


def test_textvqa_needs_ten_answers() -> None:
    with pytest.raises(InputError, match="10 human answers"):
        vqa.score([{"prediction": "a", "answers": ["a"] * 9}], "textvqa")
