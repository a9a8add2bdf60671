"""SEED-Bench and ScienceQA: each harness's answer rule on hand-made cases ("(B)", "The answer
is C", "B.", " B "), per-dimension and image-only accuracies. Expected values follow LLaVA's
convert_seed_for_submission.py and eval_science_qa.py, lmms-eval's seedbench and scienceqa
utils, and VLMEvalKit's can_infer; each is counted by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers import scienceqa, seed


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def seed_question(qid: str, dim: int, answer: str, data_type: str = "image") -> dict:
    return {"question_id": qid, "question_type_id": dim, "data_type": data_type,
            "answer": answer, "question": "Which animal?", "choice_a": "cat",
            "choice_b": "dog", "choice_c": "bird", "choice_d": "fish"}


SEED = {
    "questions": [
        seed_question("101", 1, "B"),   # "B": right everywhere
        seed_question("102", 1, "A"),   # "A.": LLaVA wrong, lmms-eval (first char) right
        seed_question("103", 2, "C"),   # "(C)": only VLMEvalKit
        seed_question("104", 2, "D"),   # "The answer is D": only VLMEvalKit (lmms-eval: "T")
        seed_question("105", 2, "B"),   # " B ": LLaVA compares unstripped text
        seed_question("106", 10, "A", "video"),  # no prediction: wrong
        seed_question("107", 1, "C"),   # "dog": option text of B, wrong
    ],
    "question_type": {"Scene Understanding": 1, "Instance Identity": 2,
                      "Action Recognition": 10},
}
SEED_ANSWERS = [{"question_id": qid, "text": text} for qid, text in [
    (101, "B"), (102, "A."), (103, "(C)"), (104, "The answer is D"), (105, " B "), (107, "dog")]]


@pytest.fixture
def seed_files(tmp_path: Path) -> tuple[Path, Path]:
    return (write(tmp_path / "SEED-Bench.json", SEED),
            write_jsonl(tmp_path / "seed_answers.jsonl", SEED_ANSWERS))


def test_seed_official(seed_files: tuple[Path, Path]) -> None:
    with pytest.warns(UserWarning, match="1 questions have no prediction"):
        got = seed.score_files(*seed_files)
    assert got["unit"] == "percent" and (got["correct"], got["count"], got["missing"]) == (1, 7, 1)
    assert got["overall"] == 1 / 7 * 100
    assert got["per_dimension"] == {"Scene Understanding": 1 / 3 * 100,
                                    "Instance Identity": 0.0, "Action Recognition": 0.0}
    assert got["per_data_type"] == {"image": 1 / 6 * 100, "video": 0.0}


def test_seed_lmms_eval_and_vlmevalkit(seed_files: tuple[Path, Path]) -> None:
    with pytest.warns(UserWarning):
        lmms = seed.score_files(*seed_files, convention="lmms-eval")
        vlm = seed.score_files(*seed_files, convention="vlmevalkit")
    assert lmms["overall"] == 3 / 7  # 101, 102, 105
    assert lmms["per_dimension"]["Instance Identity"] == 1 / 3
    assert lmms["per_data_type"] == {"image": 0.5, "video": 0.0}
    assert vlm["overall"] == 5 / 7  # all but 106 (missing) and 107 ("dog" names B)
    assert vlm["per_dimension"]["Instance Identity"] == 1.0


def test_seed_unknown_prediction_id(seed_files: tuple[Path, Path], tmp_path: Path) -> None:
    answers = write_jsonl(tmp_path / "extra.jsonl", [*SEED_ANSWERS,
                                                     {"question_id": 999, "text": "A"}])
    with pytest.raises(InputError, match="1 predictions for question ids not in"):
        seed.score_files(seed_files[0], answers)


def problem(choices: list[str], answer: int, image: str | None = "img.png",
            split: str = "test") -> dict:
    return {"question": "?", "choices": choices, "answer": answer, "image": image,
            "split": split}


PROBLEMS = {
    "1": problem(["cat", "dog"], 1),
    "2": problem(["red", "blue", "green"], 2, image=None),
    "3": problem(["sun", "moon", "star", "sky"], 0),
    "4": problem(["x", "y"], 0, split="train"),
    "5": problem(["one", "two", "three", "four"], 3),
    "6": problem(["a", "b", "c"], 1),
    "7": problem(["left", "right"], 0, image=None),
    "8": problem(["yes", "no"], 0),
    "9": problem(["up", "down", "flat"], 1),
}
IMG, TXT = "<image>\nQuestion", "Question"
SQA_ANSWERS = [
    {"question_id": "1", "text": "B", "prompt": IMG},                 # right everywhere
    {"question_id": "2", "text": "The answer is C.", "prompt": TXT},  # LLaVA's regex
    {"question_id": "3", "text": "A. sun", "prompt": IMG},            # "X. " prefix
    {"question_id": "5", "text": "The answer is D", "prompt": IMG},   # no char after D: FAILED
    {"question_id": "7", "text": "A.", "prompt": TXT},                # too short for "A. "
    {"question_id": "8", "text": "E", "prompt": TXT},                 # beyond the 2 options
    {"question_id": "9", "text": "(B)", "prompt": IMG},               # only VLMEvalKit
]                                                                     # 6: no prediction


@pytest.fixture
def sqa_files(tmp_path: Path) -> tuple[Path, Path]:
    return (write(tmp_path / "problems.json", PROBLEMS),
            write_jsonl(tmp_path / "sqa_answers.jsonl", SQA_ANSWERS))


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"), ("B. dog", "B"), ("B.", "FAILED"), (" B", "FAILED"), ("(B)", "FAILED"),
    ("The answer is C.", "C"), ("The answer is C", "FAILED"), ("The answer is CAT", "C"),
    ("The answer is A. The answer is B.", "FAILED"), ("the answer is C.", "FAILED"),
])
def test_llava_sqa_rule(text: str, letter: str) -> None:
    assert scienceqa.llava_answer(text) == letter


def test_scienceqa_three_conventions(sqa_files: tuple[Path, Path]) -> None:
    official = scienceqa.score_files(*sqa_files)
    # 8 test problems (4 is train); right: 1, 2, 3; image prompts: 1, 3, 5, 9
    assert (official["correct"], official["total"], official["missing"]) == (3, 8, 1)
    assert official["accuracy"] == 37.5 and official["img_accuracy"] == 50.0
    assert official["failed"] == 5  # 5, 6, 7, 8, 9
    lmms = scienceqa.score_files(*sqa_files, convention="lmms-eval")
    assert lmms["accuracy"] == 3 / 8 and lmms["img_accuracy"] == 0.5  # 1, 3, 7
    vlm = scienceqa.score_files(*sqa_files, convention="vlmevalkit")
    assert vlm["accuracy"] == 6 / 8 and vlm["img_accuracy"] == 1.0  # all but 6 and 8


def test_scienceqa_splits_file_and_image_fallback(tmp_path: Path,
                                                  sqa_files: tuple[Path, Path]) -> None:
    splits = write(tmp_path / "pid_splits.json", {"test": ["1", "2"], "val": ["4"]})
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": "1", "text": "B"},
                                                 {"question_id": "2", "text": "C"}])
    got = scienceqa.score_files(sqa_files[0], answers, pid_splits=splits)
    # no prompts: the problem's image decides; "C" is right for 2 (no image)
    assert (got["total"], got["img_total"], got["accuracy"]) == (2, 1, 100.0)
    with pytest.raises(InputError, match="no split 'dev'"):
        scienceqa.score_files(sqa_files[0], answers, split="dev", pid_splits=splits)
    with pytest.raises(InputError, match=r"2 predictions for ids not in split 'val'"):
        scienceqa.score_files(sqa_files[0], answers, split="val", pid_splits=splits)
