"""MOAT-style capability reports: pooled per-capability and per-combination accuracy, the
mean over runs as MOAT's analyze.py computes it (Python 3.12 sum), verdicts and judges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers import moat

QUESTIONS = [("q1", "3", ["CNT", "OCR"]), ("q2", "left", ["RLA"]), ("q3", "STOP", ["OCR", "CNT"])]
# run 1: 1 of 3 right ("three" is not "3" under exact match); runs 2 and 3: all right
PREDICTIONS = [["three", "left", "go"], ["3.", "Left", '"STOP"'], ["3", "left.", "stop"]]


def ours(preds: list[str]) -> list[dict]:
    return [{"id": qid, "question": "?", "answer": gt, "prediction": p, "capabilities": caps}
            for (qid, gt, caps), p in zip(QUESTIONS, preds, strict=True)]


def test_runs_capabilities_and_combinations() -> None:
    got = moat.score([ours(p) for p in PREDICTIONS])
    assert got["runs"] == [1 / 3, 1.0, 1.0]
    # MOAT averages the runs with Python 3.12's compensated sum: 0.7777777777777778
    # (a plain left-to-right sum gives 0.7777777777777777).
    assert got["overall"] == 0.7777777777777778
    # pooled over runs: CNT and OCR are in q1 and q3 (wrong in run 1 only): 4 / 6
    assert got["per_capability"] == {"CNT": 4 / 6, "OCR": 4 / 6, "RLA": 1.0}
    # combinations keep the tags' order, as MOAT's '+'.join does
    assert got["per_combination"] == {"RLA": 1.0, "CNT+OCR": 2 / 3, "OCR+CNT": 2 / 3}
    assert got["counts"]["per_capability"] == {"CNT": 2, "OCR": 2, "RLA": 1}
    assert got["n"] == 3


def test_verdicts_and_judge() -> None:
    judged = moat.score([ours(PREDICTIONS[0])], judge=lambda rec: rec["id"] != "q3")
    assert judged["overall"] == 2 / 3  # the judge accepts "three" for q1
    records = ours(PREDICTIONS[0])
    records[0]["verdict"] = 1  # a recorded verdict wins over exact match
    assert moat.score([[moat.normalize_record(r) for r in records]])["overall"] == 2 / 3


def test_moat_layout_files(tmp_path: Path) -> None:
    paths = []
    for run, preds in enumerate(PREDICTIONS):
        path = tmp_path / f"run{run}.jsonl"
        path.write_text("".join(json.dumps(
            {"index": i, "question": "?", "choices": [], "ground_truth": gt, "capability": caps,
             "answer": p}) + "\n" for i, ((_, gt, caps), p) in enumerate(
                 zip(QUESTIONS, preds, strict=True))))
        paths.append(path)
    got = moat.score_files(paths)
    assert got["overall"] == 0.7777777777777778
    assert got["per_combination"]["OCR+CNT"] == 2 / 3
    short = tmp_path / "short.jsonl"
    short.write_text(paths[0].read_text().splitlines()[0] + "\n")
    with pytest.raises(InputError, match="runs cover different questions"):
        moat.score_files([paths[0], short])


def test_bad_records_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(ours(PREDICTIONS[0])[0]) + "\n" +
                    json.dumps({"id": "q9", "answer": "x", "prediction": "x"}) + "\n")
    with pytest.raises(InputError, match=r"run.jsonl:2: missing key 'capabilities'"):
        moat.score_files([path])
    path.write_text(json.dumps({**ours(PREDICTIONS[0])[0], "capabilities": "CNT"}) + "\n")
    with pytest.raises(InputError, match=r"run.jsonl:1: 'capabilities' must be a list"):
        moat.score_files([path])
    with pytest.raises(InputError, match="convention 'lmms-eval' is not supported"):
        moat.score_files([path], "lmms-eval")
