"""Answer matching, exact-match scores, POPE metrics and the majority baseline, by hand."""

from __future__ import annotations

import warnings

import pytest

from tinyvlm.eval.scorers.capabilities import (
    UndefinedMetricWarning,
    majority_baseline,
    normalize_answer,
    pope_answer,
    pope_metrics,
    score_samples,
    summarize,
)


def sample(answer: str, prediction: str, caps: list[str] | None = None, pope: str | None = None,
           qtype: str = "t", sid: str = "x") -> dict:
    return {"id": sid, "question": "q", "answer": answer, "prediction": prediction,
            "type": qtype, "capabilities": caps or [], "pope": pope}


def test_normalize_answer() -> None:
    assert normalize_answer("Yes.") == normalize_answer("yes") == "yes"
    assert normalize_answer(" 3. ") == normalize_answer("3") == "3"
    assert normalize_answer("3") != normalize_answer("three")
    assert normalize_answer('"Yes."') == normalize_answer('"yes".') == "yes"
    assert normalize_answer("  A   red\tcube?! ") == "a red cube"
    assert normalize_answer("dogs'") == "dogs'"  # a lone apostrophe is not a quote pair
    assert normalize_answer("") == ""


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes.", "yes"),
    ("NO", "yes"),  # the official rule is case-sensitive: only 'No', 'no' and 'not' say no
    ("no", "no"),
    ("Not sure", "yes"),  # 'Not' is not in the list
    ("Nope", "yes"),
    ("", "yes"),
    ('yes, the output is "no"', "yes"),  # the word is '"no"', quotes included
    ("There is no dog. Yes", "no"),  # only the first sentence counts
    ("Yes, there is not a dog.", "no"),
    ("No, there is a dog", "no"),
])
def test_pope_answer_official_rule(text: str, expected: str) -> None:
    assert pope_answer(text) == expected


def test_score_samples_per_capability_and_combination() -> None:
    samples = [
        sample("2", "2.", ["CNT"]),
        sample("red", "Red", ["CNT", "ATTR"]),
        sample("3", "4", ["ATTR", "CNT"]),  # unsorted codes land in the same combination
        sample("stop", "go", ["OCR"]),
        sample("yes", "yes"),  # no capability: counts overall only
        sample("yes", "wrong", ["CNT"], pope="random"),  # POPE probe: excluded
    ]
    got = score_samples(samples)
    assert got["n"] == 5
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["per_capability"] == pytest.approx({"CNT": 2 / 3, "OCR": 0.0, "ATTR": 0.5})
    assert list(got["per_capability"]) == ["CNT", "OCR", "ATTR"]  # display order
    assert got["per_combination"] == pytest.approx({"CNT": 1.0, "OCR": 0.0, "ATTR+CNT": 0.5})
    assert got["counts"] == {"per_capability": {"CNT": 3, "OCR": 1, "ATTR": 2},
                             "per_combination": {"CNT": 1, "OCR": 1, "ATTR+CNT": 2}}


def test_score_samples_empty() -> None:
    got = score_samples([])
    assert got["n"] == 0 and got["accuracy"] is None
    assert got["per_capability"] == {} and got["per_combination"] == {}


def pope_set() -> list[dict]:
    return [
        # adversarial first: the output still lists random before adversarial
        sample("yes", "yes", pope="adversarial"),  # tp
        sample("yes", "Yes, there is.", pope="adversarial"),  # tp
        sample("no", "No", pope="adversarial"),  # tn
        sample("Yes", "Yes.", pope="random"),  # tp
        sample("yes", "No.", pope="random"),  # fn
        sample("no", "NO", pope="random"),  # fp under the official rule
        sample("no", "no", pope="random"),  # tn
        sample("No.", "Yes", pope="random"),  # fp
        sample("3", "3", ["CNT"]),  # not a probe
    ]


def test_pope_metrics_hand_computed() -> None:
    got = pope_metrics(pope_set())
    assert list(got["splits"]) == ["random", "adversarial"]
    rnd = got["splits"]["random"]
    assert (rnd["tp"], rnd["fp"], rnd["tn"], rnd["fn"], rnd["n"]) == (1, 2, 1, 1, 5)
    assert rnd["accuracy"] == pytest.approx(2 / 5)
    assert rnd["precision"] == pytest.approx(1 / 3)
    assert rnd["recall"] == pytest.approx(1 / 2)
    assert rnd["f1"] == pytest.approx(0.4)  # 2 * (1/3) * (1/2) / (1/3 + 1/2)
    assert rnd["yes_ratio"] == pytest.approx(3 / 5)  # predictions; the labels' ratio is 2/5
    adv = got["splits"]["adversarial"]
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (2, 0, 1, 0)
    assert adv["f1"] == pytest.approx(1.0) and adv["yes_ratio"] == pytest.approx(2 / 3)
    pooled = got["all"]
    assert (pooled["tp"], pooled["fp"], pooled["tn"], pooled["fn"], pooled["n"]) == (3, 2, 2, 1, 8)
    assert pooled["accuracy"] == pytest.approx(5 / 8)
    assert pooled["precision"] == pytest.approx(3 / 5)
    assert pooled["recall"] == pytest.approx(3 / 4)
    assert pooled["f1"] == pytest.approx(2 / 3)
    assert pooled["yes_ratio"] == pytest.approx(5 / 8)
    assert got["mean_f1"] == pytest.approx((0.4 + 1.0) / 2)


def test_pope_zero_denominator_is_none_with_warning() -> None:
    only_no = [sample("no", "no", pope="popular"), sample("no", "No.", pope="popular")]
    with pytest.warns(UndefinedMetricWarning, match="popular precision, popular recall, popular"):
        got = pope_metrics(only_no)
    split = got["splits"]["popular"]
    assert split["precision"] is None and split["recall"] is None and split["f1"] is None
    assert split["accuracy"] == 1.0 and split["yes_ratio"] == 0.0
    assert got["mean_f1"] is None

    # Never said yes to a yes: precision is undefined but F1 is a real 0.
    with pytest.warns(UndefinedMetricWarning):
        got = pope_metrics([sample("yes", "no", pope="random")])
    assert got["all"]["precision"] is None
    assert got["all"]["recall"] == 0.0 and got["all"]["f1"] == 0.0


def test_pope_metrics_without_probes_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = pope_metrics([sample("3", "3", ["CNT"])])
    assert got["splits"] == {} and got["mean_f1"] is None
    assert got["all"]["n"] == 0 and got["all"]["f1"] is None


def test_pope_bad_label_raises() -> None:
    with pytest.raises(ValueError, match="maybe"):
        pope_metrics([sample("maybe", "yes", pope="random", sid="q7")])


def test_majority_baseline_tie_breaking() -> None:
    pairs = [("count", "2"), ("count", "3"), ("count", "3."), ("count", "2"),
             ("color", "red"), ("color", "blue"),
             ("exist", "yes"), ("exist", "Yes"), ("exist", "yes.")]
    samples = [sample("2", "?", qtype="count", sid="a"), sample("red", "?", qtype="color"),
               sample("no", "?", qtype="exist"), sample("circle", "?", qtype="shape")]
    got = majority_baseline(pairs, samples)
    # count: '2' and '3' tie 2-2 -> '2'; color: tie 1-1 -> 'blue'; unknown type -> overall 'yes'
    assert [s["prediction"] for s in got] == ["2", "blue", "yes", "yes"]
    assert majority_baseline(reversed(pairs), samples) == got  # order of the file is irrelevant
    assert samples[0]["prediction"] == "?" and got[0]["id"] == "a"  # copies, not mutations
    assert score_samples(got)["accuracy"] == pytest.approx(1 / 4)
    with pytest.raises(ValueError):
        majority_baseline([], samples)


def test_summarize_nesting() -> None:
    got = summarize(pope_set())
    assert got["n"] == 1 and got["accuracy"] == 1.0
    assert got["per_capability"] == {"CNT": 1.0}
    pope = got["pope"]
    assert pope["f1"] == pytest.approx(2 / 3) and pope["yes_ratio"] == pytest.approx(5 / 8)
    assert set(pope["splits"]) == {"random", "adversarial"}
    assert pope["mean_f1"] == pytest.approx(0.7)
