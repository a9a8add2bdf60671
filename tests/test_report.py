"""results.json, report.md, capabilities.png and the terminal table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tinyvlm.eval.report import (
    build_results,
    format_table,
    model_row,
    render_markdown,
    write_report,
)
from tinyvlm.eval.scorers.capabilities import summarize
from tinyvlm.eval.tables import humanize_params


def pope(f1: float | None, yes_ratio: float | None) -> dict:
    return {"n": 10, "accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": f1,
            "yes_ratio": yes_ratio, "tp": 4, "fp": 1, "tn": 5, "fn": 0,
            "splits": {}, "mean_f1": f1}


def summary(acc: float, cnt: float, attr: float, shape: float | None, combo: float,
            pope_f1: float | None, yes: float | None) -> dict:
    per_cap = {"CNT": cnt, "ATTR": attr} | ({} if shape is None else {"SHAPE": shape})
    return {"n": 4, "accuracy": acc, "per_capability": per_cap,
            "per_combination": {"CNT": cnt, "ATTR+CNT": combo},
            "counts": {"per_capability": {"CNT": 3, "ATTR": 1},
                       "per_combination": {"CNT": 2, "ATTR+CNT": 1}},
            "pope": pope(pope_f1, yes)}


@pytest.fixture
def results() -> dict:
    rows = [
        model_row("student", 1_300_000, 650_000, summary(0.75, 0.5, 1.0, 0.25, 1.0, 0.8, 0.5),
                  seconds=1.5),
        model_row("teacher", 2_100_000_000, 2_100_000_000,
                  summary(0.875, 1.0, 0.5, None, 0.0, 0.912, 0.45)),
    ]
    return build_results(rows, summary(0.25, 0.0, 0.5, 0.0, 0.0, None, 1.0), dataset="shapes")


def test_humanize_params() -> None:
    assert humanize_params(1_300_000) == "1.3M"
    assert humanize_params(650_000) == "650.0K"
    assert humanize_params(2_100_000_000) == "2.1B"
    assert humanize_params(999_950) == "1.0M"
    assert humanize_params(512) == "512"


def test_schema(results: dict) -> None:
    student = results["models"][0]
    assert [student[k] for k in ("name", "total_params", "activated_params", "seconds")] == [
        "student", 1_300_000, 650_000, 1.5]
    for row in [*results["models"], results["baseline"]]:
        assert {"accuracy", "per_capability", "per_combination", "pope"} <= set(row)
        assert {"accuracy", "precision", "recall", "f1", "yes_ratio", "splits",
                "mean_f1"} <= set(row["pope"])
    assert results["dataset"] == "shapes"
    with pytest.raises(ValueError):
        model_row("x", 1, 1, summary(0, 0, 0, 0, 0, 0, 0), accuracy=1.0)
    with pytest.raises(ValueError):
        model_row("x", 1, 1, {"accuracy": 1.0})


def test_summarize_output_is_a_valid_row() -> None:
    s = summarize([{"id": "1", "question": "q", "answer": "2", "prediction": "2", "type": "t",
                    "capabilities": ["CNT"], "pope": None}])
    row = model_row("m", 10, 10, s)
    assert row["accuracy"] == 1.0 and row["pope"]["f1"] is None
    assert "| m | 10 | 10 | 100.0% | 100.0% | - | - |" in render_markdown(build_results([row], s))


def test_write_report(results: dict, tmp_path: Path) -> None:
    paths = write_report(results, tmp_path / "out")
    assert {k: p.name for k, p in paths.items()} == {
        "results": "results.json", "report": "report.md", "chart": "capabilities.png"}
    assert all(p.is_file() for p in paths.values())
    assert not list(paths["chart"].parent.glob("*.tmp"))  # no temp files left behind

    assert json.loads(paths["results"].read_text()) == results

    md = paths["report"].read_text()
    assert ("| model | total params | activated params | overall | CNT | ATTR | SHAPE | POPE F1 "
            "| POPE yes-ratio |") in md
    assert "| student | 1.3M | 650.0K | 75.0% | 50.0% | 100.0% | 25.0% | 80.0% | 50.0% |" in md
    assert "| teacher | 2.1B | 2.1B | 87.5% | 100.0% | 50.0% | - | 91.2% | 45.0% |" in md
    assert "| majority baseline | - | - | 25.0% | 0.0% | 50.0% | 0.0% | - | 100.0% |" in md
    assert "| combination | n | student | teacher | majority baseline |" in md
    assert "| CNT | 2 | 50.0% | 100.0% | 0.0% |" in md
    assert "| ATTR+CNT | 1 | 100.0% | 0.0% | 0.0% |" in md

    png = paths["chart"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(paths["chart"]) as im:
        im.verify()
    with Image.open(paths["chart"]) as im:
        width, height = im.size
    assert 600 <= width <= 1600 and 300 <= height <= 800 and width > height

    again = write_report(results, tmp_path / "again")  # deterministic, byte for byte
    assert all(again[k].read_bytes() == p.read_bytes() for k, p in paths.items())


def test_write_report_without_baseline_or_capabilities(tmp_path: Path) -> None:
    empty = summarize([])
    results = build_results([model_row("only-pope", 5, 5, empty)], None)
    paths = write_report(results, tmp_path)
    assert json.loads(paths["results"].read_text())["baseline"] is None
    assert "majority baseline" not in paths["report"].read_text()
    assert paths["chart"].read_bytes().startswith(b"\x89PNG")


def test_format_table(results: dict) -> None:
    table = format_table(results)
    for name in ("student", "teacher", "majority baseline"):
        assert name in table
    lines = table.splitlines()
    assert len(lines) == 2 + 3  # header, rule, three rows
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert lines[0].split()[:2] == ["model", "total"]
    assert "91.2%" in lines[3] and "2.1B" in lines[3]
