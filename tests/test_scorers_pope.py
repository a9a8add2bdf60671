"""POPE scorer: the three parsing rules, the official float order, splits, and bad input.

Expected figures are worked out by hand from the rules of POPE's evaluate.py, lmms-eval's
tasks/pope/utils.py and VLMEvalKit's POPE_rating/YOrN_Extraction; a throwaway transcription
of those scripts gave the same numbers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers import capabilities as metrics
from tinyvlm.eval.scorers import pope

# label, prediction: one case per parsing branch
CASES = [
    ("yes", "Yes."),                      # official yes | lmms 'yes.' | vlm yes
    ("no", "NO"),                         # official yes (case) | lmms no | vlm no
    ("no", "Nope"),                       # official yes | lmms 'nope' | vlm unknown
    ("yes", "Not sure"),                  # official yes ('Not') | lmms 'not sure' | unknown
    ("no", ""),                           # official yes | lmms '' | unknown
    ("no", 'yes, the output is "no"'),    # official yes ('"no"') | lmms text | unknown
    ("yes", "No, there is not."),         # official no | lmms text | vlm no
    ("no", "no"),                         # no everywhere
]
LABELS = [lab for lab, _ in CASES]
PREDS = [p for _, p in CASES]


@pytest.mark.parametrize(("text", "official", "lmms", "vlm"), [
    ("Yes.", "yes", "yes.", "yes"),
    ("NO", "yes", "no", "no"),
    ("Nope", "yes", "nope", "unknown"),
    ("Not sure", "yes", "not sure", "unknown"),
    ("", "yes", "", "unknown"),
    ('yes, the output is "no"', "yes", 'yes, the output is "no"', "unknown"),
    ("There is no dog. Yes", "no", "there is no dog. yes", "unknown"),
    (" yes ", "yes", "yes", "yes"),
    ("No, there is not.", "no", "no, there is not.", "no"),
])
def test_parsing_rules(text: str, official: str, lmms: str, vlm: str) -> None:
    assert pope.pope_answer(text) == official
    assert pope.lmms_eval_answer(text) == lmms
    assert pope.vlmevalkit_answer(text) == vlm


def test_official_convention_hand_computed() -> None:
    got = pope.score(LABELS, PREDS)
    # TP: 1, 4; FP: 2, 3, 5, 6; FN: 7; TN: 8
    assert (got["tp"], got["fp"], got["tn"], got["fn"], got["n"]) == (2, 4, 1, 1, 8)
    assert got["accuracy"] == 3 / 8
    assert got["precision"] == 2 / 6 and got["recall"] == 2 / 3
    assert got["f1"] == 2 * (2 / 6) * (2 / 3) / (2 / 6 + 2 / 3)  # 0.4444444444444444
    assert got["yes_ratio"] == 6 / 8  # of the predictions; the labels' ratio is 3/8
    assert list(got) == list(pope.METRIC_KEYS)


def test_lmms_eval_convention_hand_computed() -> None:
    with pytest.warns(pope.UndefinedMetricWarning, match="all precision, all recall"):
        got = pope.score(LABELS, PREDS, "lmms-eval")
    # Only the two exact "no" answers are recognised: "yes." is neither yes nor no.
    assert (got["tp"], got["fp"], got["tn"], got["fn"], got["unparsed"]) == (0, 0, 2, 0, 6)
    assert got["accuracy"] == 2 / 8
    assert got["precision"] == got["recall"] == got["f1"] == 0.0  # lmms-eval's 0, not None
    assert got["yes_ratio"] == 3 / 8  # the labels' yes share


def test_vlmevalkit_convention_hand_computed() -> None:
    got = pope.score(LABELS, PREDS, "vlmevalkit")
    assert got["unknown"] == 4
    # TP: 1; FN: 4 (unknown) and 7; right: 1, 2, 8
    assert (got["tp"], got["fp"], got["fn"]) == (1, 0, 2)
    assert got["accuracy"] == 37.5
    assert got["precision"] == 100.0 and got["recall"] == 1 / 3 * 100
    assert got["f1"] == 50.0  # 2 * (1 * 1/3) / (1 + 1/3), in percent
    assert got["yes_ratio"] == 12.5


def test_official_f1_float_order() -> None:
    # 5 yes labels, one said yes: P = 1.0, R = 0.2, and the script's 2*P*R/(P+R) = 0.4/1.2
    # rounds to 0.33333333333333337, while 2TP/(2TP+FP+FN) = 2/6 gives 0.3333333333333333.
    got = pope.score(["yes"] * 5, ["yes", "no", "no", "no", "no"])
    assert got["f1"] == 0.33333333333333337
    assert got["f1"] != 2 / 6


def test_zero_denominators_are_none_with_one_warning() -> None:
    with pytest.warns(pope.UndefinedMetricWarning) as record:
        got = pope.score(["no", "no"], ["no", "No."])
    assert len(record) == 1
    assert "all precision, all recall, all f1" in str(record[0].message)
    assert got["precision"] is got["recall"] is got["f1"] is None
    assert got["accuracy"] == 1.0 and got["yes_ratio"] == 0.0
    # Never said yes to a yes: precision is undefined, recall and F1 are a real 0.
    with pytest.warns(pope.UndefinedMetricWarning, match="all precision$"):
        got = pope.score(["yes"], ["no"])
    assert got["precision"] is None and got["recall"] == 0.0 and got["f1"] == 0.0


def test_no_true_positive_gives_f1_zero_not_a_crash() -> None:
    # The official script would divide 0 by 0 here (P = R = 0); the limit is 0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = pope.score(["yes", "no"], ["no", "yes"])
    assert got["precision"] == got["recall"] == got["f1"] == 0.0


def test_metrics_module_uses_the_scorer() -> None:
    assert metrics.pope_answer is pope.pope_answer
    assert metrics.UndefinedMetricWarning is pope.UndefinedMetricWarning
    samples = [{"id": str(i), "answer": lab, "prediction": p, "pope": "random"}
               for i, (lab, p) in enumerate(CASES)]
    assert metrics.pope_metrics(samples)["splits"]["random"] == pope.score(LABELS, PREDS)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def split_files(tmp_path: Path, split: str, labels: list[str], preds: list[str],
                key: str = "text") -> tuple[Path, Path]:
    ann = write_jsonl(tmp_path / f"coco_pope_{split}.json", [
        {"question_id": i, "image": f"{i}.jpg", "text": "Is there a dog in the image?",
         "label": lab} for i, lab in enumerate(labels)])
    # answers in another order: pairing is by question_id, not by line
    ans = write_jsonl(tmp_path / f"{split}_answers.jsonl", [
        {"question_id": i, key: p} for i, p in reversed(list(enumerate(preds)))])
    return ann, ans


def test_files_several_splits_mean_f1(tmp_path: Path) -> None:
    a1, p1 = split_files(tmp_path, "random", LABELS, PREDS)
    a2, p2 = split_files(tmp_path, "adversarial", ["yes"] * 5, ["yes", "no", "no", "no", "no"],
                         key="answer")  # POPE's own answer files use 'answer'
    got = pope.score_files([a1, a2], [p1, p2])
    assert list(got["splits"]) == ["random", "adversarial"]
    assert got["splits"]["random"] == pope.score(LABELS, PREDS)
    f1s = (got["splits"]["random"]["f1"], got["splits"]["adversarial"]["f1"])
    assert got["mean_f1"] == (f1s[0] + f1s[1]) / 2
    assert got["all"]["n"] == 13 and got["all"]["tp"] == 3
    single = pope.score_files([a1], [p1], "vlmevalkit")
    assert single["f1"] == 50.0 and single["unit"] == "percent"


def test_unmatched_ids_are_an_error(tmp_path: Path) -> None:
    ann, ans = split_files(tmp_path, "random", ["yes", "no", "yes"], ["yes", "no", "yes"])
    write_jsonl(ans, [{"question_id": 0, "text": "yes"}, {"question_id": 7, "text": "no"}])
    with pytest.raises(InputError, match=r"missing from .*\(1, 2\).*not in .*\(7\)"):
        pope.score_files([ann], [ans])


def test_bad_label_and_missing_text_name_file_and_line(tmp_path: Path) -> None:
    ann, ans = split_files(tmp_path, "random", ["yes", "maybe"], ["yes", "no"])
    with pytest.raises(InputError, match=r"coco_pope_random.json:2: .*'maybe' is not yes/no"):
        pope.score_files([ann], [ans])
    ann, ans = split_files(tmp_path, "random", ["yes", "no"], ["yes", "no"])
    write_jsonl(ans, [{"question_id": 0, "text": "yes"}, {"question_id": 1, "output": "no"}])
    with pytest.raises(InputError, match=r"random_answers.jsonl:2: missing key 'text'"):
        pope.score_files([ann], [ans])
    with pytest.raises(InputError, match="as many --annotations as --predictions"):
        pope.score_files([ann], [])
    with pytest.raises(InputError, match="convention 'vlm'"):
        pope.score_files([ann], [ans], "vlm")
