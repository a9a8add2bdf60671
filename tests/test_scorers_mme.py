"""MME scorer: parsing branches, subtask arithmetic and the totals' order of addition.

The figures follow the arithmetic of MME's eval_tool/calculation.py (acc*100 + acc_plus*100
per subtask, subtasks added left to right in its order), lmms-eval's tasks/mme/utils.py (a
mean of per-image scores) and VLMEvalKit's MME_rating (alphabetical order); each is worked out
below, and a throwaway transcription of the three scripts printed the same bits.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers import mme

# (correct answers, images with both right) per subtask, 3 images (6 questions) each. Chosen
# so that the order in which the subtasks are added changes the last bits of the totals.
COUNTS = {"existence": (1, 0), "count": (4, 2), "position": (0, 0), "color": (5, 2),
          "posters": (1, 0), "celebrity": (5, 2), "scene": (3, 1), "landmark": (2, 0),
          "artwork": (1, 0), "OCR": (3, 1), "commonsense_reasoning": (6, 3),
          "numerical_calculation": (6, 3), "text_translation": (3, 1), "code_reasoning": (1, 0)}


def subtask_lines(correct: int, both: int) -> list[str]:
    """3 images; the first `both` fully right, then images with only the first answer right."""
    marks = ["RR"] * both + ["RW"] * (correct - 2 * both)
    marks += ["WW"] * (3 - len(marks))
    lines = []
    for i, m in enumerate(marks):
        lines.append(f"{i}.jpg\tIs there a dog?\tYes\t{'Yes' if m[0] == 'R' else 'No'}\n")
        lines.append(f"{i}.jpg\tIs there a cat?\tNo\t{'No' if m[1] == 'R' else 'Yes'}\n")
    return lines


def write_dir(root: Path, counts: dict[str, tuple[int, int]] = COUNTS) -> Path:
    root.mkdir(exist_ok=True)
    for name, (c, p) in counts.items():
        (root / f"{name}.txt").write_text("".join(subtask_lines(c, p)))
    return root


@pytest.mark.parametrize(("prediction", "official", "lmms", "vlm"), [
    ("Yes\n", "yes", "yes", "yes"),
    ("No.\n", "no", "no", "no"),
    ("NO\n", "no", "no", "no"),
    ("Nope\n", "no", "no", "other"),         # 'no' in the first 4 characters
    ("Not sure\n", "no", "no", "other"),
    ("\n", "other", "other", "other"),        # empty answer
    ("y\n", "other", "yes", "other"),         # lmms-eval reads a lone y / n
    ("   no\n", "other", "no", "no"),         # official: first 4 characters are '   n'
    ("I think yes\n", "other", "other", "yes"),
    ('yes, the output is "no"\n', "yes", "yes", "other"),  # VLMEvalKit: both words: unknown
    ("There is no dog.\n", "other", "other", "no"),
])
def test_parsing_rules(prediction: str, official: str, lmms: str, vlm: str) -> None:
    assert mme.parse(prediction) == official
    assert mme.parse(prediction, "lmms-eval") == lmms
    assert mme.parse(prediction, "vlmevalkit") == vlm


def test_subtask_arithmetic_differs_in_the_last_bit() -> None:
    items = [mme.Item(*line.split("\t")) for line in subtask_lines(1, 0)]
    official = mme.score_subtask(items)
    # acc = 1/6, then * 100: 16.666666666666664; acc_plus = 0
    assert official == {"score": 16.666666666666664, "acc": 1 / 6, "acc_plus": 0.0,
                        "images": 3, "other": 0}
    # lmms-eval: per-image scores 50, 0, 0 summed, then / 3 = 16.666666666666668
    assert mme.score_subtask(items, "lmms-eval")["score"] == 16.666666666666668
    perfect = [mme.Item(*line.split("\t")) for line in subtask_lines(6, 3)]
    assert mme.score_subtask(perfect)["score"] == 200.0


def test_totals_follow_the_official_order_bit_for_bit(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "answers")
    got = mme.score_files(root)
    assert got["missing"] == []
    assert got["subtasks"]["count"] == 133.33333333333331  # 4/6*100 + 2/3*100
    assert got["subtasks"]["scene"] == 83.33333333333333   # 3/6*100 + 1/3*100
    # existence + count + ... + OCR, left to right, as calculation.py adds them
    assert got["perception"] == 683.3333333333334
    assert got["cognition"] == 500.0
    # Python's correctly rounded sum would give ...333; the tool's order gives ...334.
    assert got["perception"] != 683.3333333333333
    # VLMEvalKit: same subtask scores, added alphabetically (OCR, artwork, ...).
    vlm = mme.score_files(root, "vlmevalkit")
    assert vlm["subtasks"] == got["subtasks"]
    assert vlm["perception"] == 683.3333333333333
    assert vlm["cognition"] == 499.99999999999994
    # lmms-eval: per-subtask means of per-image scores
    lmms = mme.score_files(root, "lmms-eval")
    assert lmms["subtasks"]["existence"] == 16.666666666666668
    assert lmms["subtasks"]["count"] == 133.33333333333334
    assert lmms["perception"] == 683.3333333333334


def test_missing_subtasks_are_reported(tmp_path: Path) -> None:
    root = write_dir(tmp_path / "partial", {"existence": (6, 3), "count": (4, 2),
                                            "code_reasoning": (0, 0)})
    got = mme.score_files(root)
    assert got["perception"] == 200.0 + 133.33333333333331
    assert got["cognition"] == 0.0
    assert got["missing"] == [k for k in mme.SUBTASKS
                              if k not in ("existence", "count", "code_reasoning")]
    only_cognition = write_dir(tmp_path / "cog", {"code_reasoning": (2, 1)})
    assert mme.score_files(only_cognition)["perception"] is None


def test_other_answers_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "other"
    root.mkdir()
    (root / "OCR.txt").write_text("a.jpg\tq1\tYes\tMaybe\na.jpg\tq2\tNo\tno")  # no final newline
    got = mme.score_files(root)
    assert got["details"]["OCR"] == {"score": 50.0, "acc": 0.5, "acc_plus": 0.0, "images": 1,
                                     "other": 1}


@pytest.mark.parametrize(("content", "message"), [
    ("a.jpg\tq\tYes\n", r"OCR.txt:1: expected 4 tab-separated fields"),
    ("a.jpg\tq\tYes\tyes\na.jpg\tq\tMaybe\tno\n", r"OCR.txt:2: ground truth 'Maybe'"),
    ("a.jpg\tq\tYes\tyes\n", r"OCR.txt: odd number of lines"),
    ("a.jpg\tq\tYes\tyes\nb.jpg\tq\tNo\tno\n", r"OCR.txt:2: lines 1 and 2 should be"),
])
def test_bad_files_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "OCR.txt").write_text(content)
    with pytest.raises(InputError, match=message):
        mme.score_files(tmp_path)


def test_empty_directory_and_unknown_subtask(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no subtask files"):
        mme.score_files(tmp_path)
    with pytest.raises(InputError, match="unknown subtask"):
        mme.score({"colour": []})
