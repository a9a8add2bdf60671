"""Multiple-choice extraction (VLMEvalKit's can_infer, lmms-eval's variant) and MMBench's
circular evaluation, on hand-made rows; expected letters follow the two harnesses' rules."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers import choice, mmbench

OPTIONS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(("prediction", "vlm2024", "vlm", "lmms"), [
    ("B", "B", "B", "B"),
    ("(B)", "B", "B", "B"),                       # lmms-eval: the "(B)" form
    ("B.", "B", "B", "B"),
    ("The answer is C", "C", "C", "C"),
    ("The answer is C.", "C", "C", "C"),          # lmms-eval: the "C." form
    (":D", "D", "D", "D"),
    ("A dog", "A", "A", "A"),                     # a lone 'A' is read as the option
    # 'A' in a long answer: lmms-eval reads an article; VLMEvalKit since 2025 wants the letter
    # among the last five words, so it reads the text "dog"
    ("A dog is sitting there", "A", "B", "B"),
    ("a dog", "B", "B", "B"),                     # no letter: the one option text found
    ("cat and dog", None, None, None),            # two option texts
    ("I think A, not B", None, None, "B"),        # lmms-eval splits on spaces: "A," is no letter
    ("Z", "Z", "Z", None),                        # VLMEvalKit: 'Z' = none of the options
    ("Sorry, I can't help with images of people yet.", "Z", "Z", None),
    ("", None, None, None),
    ("Nope", None, None, None),
    # since June 2026: a verbose reply naming the answer, letters A to D only
    ("A and B look alike; the correct answer is **c**.", None, "C", None),
    # since August 2025: no option text in a reply over twice as long as all options
    ("well, " * 10 + "dog", "B", None, "B"),
])
def test_choice_rules(prediction: str, vlm2024: str | None, vlm: str | None,
                      lmms: str | None) -> None:
    assert choice.vlmevalkit_choice_2024(prediction, OPTIONS) == vlm2024
    assert choice.vlmevalkit_choice(prediction, OPTIONS) == vlm
    assert choice.lmms_eval_choice(prediction, OPTIONS) == lmms


def rotations(index: int, options: list[str], answer: int, preds: list[str],
              category: str, l2: str) -> list[dict]:
    """One question and its circular copies: copy k shifts the options by k places."""
    rows = []
    for k, pred in enumerate(preds):
        opts = options[k:] + options[:k]
        row = {"index": index + k * mmbench.CIRCULAR_OFFSET, "question": "Which animal?",
               **dict(zip("ABCD", opts, strict=True)),
               "answer": "ABCD"[opts.index(options[answer])], "category": category,
               "l2-category": l2, "prediction": pred}
        rows.append(row)
    return rows


ANIMALS = ["cat", "dog", "bird", "fish"]
ROWS = [
    # q1: dog is B, then A, D, C in the copies; every copy right in a different format
    *rotations(1, ANIMALS, 1, ["B", "(A)", "The answer is D", "C. bird"], "color", "perception"),
    # q2: the second copy answers the wrong letter
    *rotations(2, ANIMALS, 1, ["B", "C", "D", "C"], "count", "perception"),
    # q3: the third copy names nothing: a judge would be asked
    *rotations(3, ANIMALS, 1, ["B", "A", "I am not sure", "C"], "color", "perception"),
    # q4: no copies; VLMEvalKit reads "A" in "A dog is ...", lmms-eval reads the text
    *rotations(4, ANIMALS, 1, ["A dog is sitting there"], "count", "reasoning"),
]


def test_circular_grouping_official() -> None:
    got = mmbench.score(ROWS)
    assert (got["questions"], got["rows"], got["needs_judge"]) == (4, 13, 1)
    assert got["overall"] == 1 / 4  # only q1
    assert got["per_category"] == {"color": 0.5, "count": 0.0}
    assert got["per_l2_category"] == {"perception": 1 / 3, "reasoning": 0.0}
    assert mmbench.score(ROWS, "vlmevalkit-2024")["overall"] == got["overall"]
    assert mmbench.score(ROWS, "vlmevalkit")["overall"] == 2 / 4  # q4 reads "dog" now


def test_circular_grouping_lmms_eval() -> None:
    got = mmbench.score(ROWS, "lmms-eval")
    assert got["overall"] == 2 / 4  # q1 and q4
    assert got["per_category"] == {"color": 0.5, "count": 0.5}


def test_judge_hook_is_asked_only_for_unresolved_copies() -> None:
    asked = []

    def judge(row: dict) -> str:
        asked.append(row["index"])
        return f"It is option {row['answer']}"

    got = mmbench.score(ROWS, judge=judge)
    assert asked == [2_000_003]
    assert got["overall"] == 2 / 4 and got["needs_judge"] == 0
    wrong = mmbench.score(ROWS, judge=lambda row: "no idea")
    assert wrong["overall"] == 1 / 4 and wrong["needs_judge"] == 0


def write_tsv(path: Path, rows: list[dict]) -> Path:
    cols = ["index", "question", "A", "B", "C", "D", "answer", "category", "l2-category",
            "prediction"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols, delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return path


def test_tsv_round_trip_and_three_option_questions(tmp_path: Path) -> None:
    three = {"index": 5, "question": "Colour?", "A": "red", "B": "blue", "C": "green",
             "D": "", "answer": "C", "category": "color", "l2-category": "perception",
             "prediction": "green"}
    path = write_tsv(tmp_path / "mmbench.tsv", [*ROWS, three])
    got = mmbench.score_files(path)
    assert got["questions"] == 5 and got["overall"] == 2 / 5
    assert mmbench.row_choices(three) == {"A": "red", "B": "blue", "C": "green"}


def test_tsv_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = dict(ROWS[0], answer="E")
    with pytest.raises(InputError, match=r"mmbench.tsv:3: answer 'E' is not one of"):
        mmbench.score_files(write_tsv(tmp_path / "mmbench.tsv", [ROWS[1], bad]))
    with pytest.raises(InputError, match=r"mmbench.tsv:3: index 1 repeats line 2"):
        mmbench.score_files(write_tsv(tmp_path / "mmbench.tsv", [ROWS[0], ROWS[0]]))
    (tmp_path / "nopred.tsv").write_text("index\tquestion\tA\tB\tanswer\n1\tq\tx\ty\tA\n")
    with pytest.raises(InputError, match=r"nopred.tsv:1: missing column\(s\) prediction"):
        mmbench.score_files(tmp_path / "nopred.tsv")
