"""Data -> a few training steps -> evaluation -> report, through the CLI as a user runs it."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tinyvlm.cli import main


def test_data_train_eval_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    def cli(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["tinyvlm", *args])
        main()
        return capsys.readouterr().out

    data = tmp_path / "data"
    cli("data", "shapes", "--out", str(data), "--num-train", "40", "--num-val", "4",
        "--num-test", "6", "--pope-images", "4", "--image-size", "32")
    recipe = {
        "name": "e2e",
        "data": {"path": str(data), "shapes": None},
        "model": {"vision": {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1,
                             "heads": 2},
                  "language": {"dim": 32, "depth": 1, "heads": 2, "kv_heads": 1,
                               "max_seq_len": 256}},
        "stages": [
            {"name": "vision", "objective": "patch_labels", "trainable": ["vision"],
             "steps": 3, "batch_size": 8, "warmup_steps": 1, "log_every": 1},
            {"name": "sft", "steps": 4, "batch_size": 8, "warmup_steps": 1, "log_every": 2},
        ],
    }
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    cli("train", str(recipe_file), "--out", str(run), "--quiet")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("vision", 1), ("vision", 2),
                                                       ("vision", 3), ("sft", 2), ("sft", 4)]
    out_dir = tmp_path / "eval"
    table = cli("eval", str(run / "model"), str(data / "test.json"), str(data / "pope.json"),
                "--out", str(out_dir), "--quiet")
    assert "model" in table and "majority baseline" in table
    results = json.loads((out_dir / "results.json").read_text())
    (row,) = results["models"]
    assert row["name"] == "model" and row["total_params"] > 0
    assert 0 <= row["accuracy"] <= 1 and set(row["per_capability"]) <= {
        "CNT", "OCR", "RLA", "ATTR", "EXIST"}
    assert {"accuracy", "precision", "recall", "f1", "yes_ratio"} <= set(row["pope"])
    assert 0 <= results["baseline"]["accuracy"] <= 1
    with Image.open(out_dir / "capabilities.png") as img:
        assert img.format == "PNG"
    predictions = (out_dir / "predictions" / "model.jsonl").read_text().splitlines()
    n_questions = len(json.loads((data / "test.json").read_text())) + len(
        json.loads((data / "pope.json").read_text()))
    assert len(predictions) == n_questions
