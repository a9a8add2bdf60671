"""The command line: --help with examples, and bad input as one line with exit code 2."""

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from tinyvlm.cli import cli, main
from tinyvlm.models.vlm import TinyVLM

COMMANDS = [["data", "shapes"], ["train"], ["eval"], ["report"], ["generate"], ["info"],
            ["demo"], ["import-hf"], ["export-hf"]]


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
            ) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["tinyvlm", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str], monkeypatch, capsys) -> None:
    code, out, _ = run_cli([*command, "--help"], monkeypatch, capsys)
    assert code == 0
    assert "Example:" in out and f"tinyvlm {command[0]}" in out


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_model_directory_without_config(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["info", str(tmp_path)], monkeypatch, capsys)
    assert_one_line_error(code, err, str(tmp_path), "config.json is missing")


def test_unknown_recipe_key_names_the_closest(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  - name: sft\n    batch_sise: 4\n")
    code, _, err = run_cli(["train", str(recipe), "--out", str(tmp_path / "run")],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, str(recipe), "batch_sise", "did you mean 'batch_size'")


def test_unknown_recipe_name(monkeypatch, capsys) -> None:
    code, _, err = run_cli(["train", "no-such-recipe"], monkeypatch, capsys)
    assert_one_line_error(code, err, "no-such-recipe", "built-in: demo")


def write_eval_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_json_line_names_file_and_line(model: TinyVLM, tmp_path: Path, monkeypatch,
                                                 capsys) -> None:
    good = json.dumps({"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                     {"from": "gpt", "value": "yes"}]})
    data = write_eval_file(tmp_path, [good, '{"id": "b", "conversations": ['])
    model_dir = model.save_pretrained(tmp_path / "m")
    code, _, err = run_cli(["eval", str(model_dir), str(data), "--out", str(tmp_path / "o")],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, f"{data}:2:", "malformed JSON line")


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_bad_image(kind: str, model: TinyVLM, tmp_path: Path, monkeypatch, capsys) -> None:
    image = tmp_path / "img.png"
    if kind == "corrupt":
        image.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    model_dir = model.save_pretrained(tmp_path / "m")
    code, _, err = run_cli(["generate", str(model_dir), "--image", str(image), "--prompt", "hi"],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, str(image),
                          "image not found" if kind == "missing" else "cannot read image")


def test_record_with_bad_conversation(model: TinyVLM, tmp_path: Path, monkeypatch,
                                      capsys) -> None:
    data = tmp_path / "bench.json"
    data.write_text(json.dumps([{"id": "x", "conversations": [{"from": "gpt", "value": "a"},
                                                              {"from": "human", "value": "b"}]}]))
    model_dir = model.save_pretrained(tmp_path / "m")
    code, _, err = run_cli(["eval", str(model_dir), str(data), "--out", str(tmp_path / "o")],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, str(data), "record 0 (id x)")


def test_generate_and_info_work(model: TinyVLM, tmp_path: Path, monkeypatch, capsys) -> None:
    Image.new("RGB", (32, 32), "white").save(tmp_path / "img.png")
    model_dir = model.save_pretrained(tmp_path / "m")
    code, out, err = run_cli(["generate", str(model_dir), "--image", str(tmp_path / "img.png"),
                              "--prompt", "how many shapes?", "--max-new-tokens", "3"],
                             monkeypatch, capsys)
    assert code == 0, err
    assert len(out.strip().split()) <= 3
    code, out, _ = run_cli(["info", str(model_dir), "--json"], monkeypatch, capsys)
    report = json.loads(out)
    assert report["total_params"] == model.num_parameters() == sum(report["params"].values())


def test_cli_group_lists_all_commands() -> None:
    assert {"data", "train", "eval", "generate", "info", "demo"} <= set(cli.commands)
