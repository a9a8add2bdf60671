"""`tinyvlm score ...`: JSON on stdout, --table, --help with an example, and bad input as
one line on stderr with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_cli import assert_one_line_error
from tests.test_cli import run_cli as run_main
from tinyvlm.cli import cli

BENCHES = ["pope", "mme", "mmbench", "seed", "scienceqa", "vqa", "moat"]


def pope_files(tmp_path: Path) -> list[str]:
    ann = tmp_path / "coco_pope_random.json"
    ann.write_text("".join(json.dumps({"question_id": i, "image": "x.jpg", "text": "?",
                                       "label": lab}) + "\n"
                           for i, lab in enumerate(["yes", "yes", "no", "no"])))
    ans = tmp_path / "answers.jsonl"
    ans.write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n"
                           for i, t in enumerate(["Yes.", "No", "NO", "no"])))
    return ["--annotations", str(ann), "--predictions", str(ans)]


@pytest.mark.parametrize("bench", BENCHES)
def test_every_score_command_has_help_with_an_example(bench: str) -> None:
    result = CliRunner().invoke(cli, ["score", bench, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"tinyvlm score {bench}" in result.output


def test_score_pope_prints_one_json_object(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["score", "pope", *pope_files(tmp_path)])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    # official rule: "Yes." yes (TP), "No" no (FN), "NO" yes (FP), "no" no (TN)
    assert (got["tp"], got["fn"], got["fp"], got["tn"]) == (1, 1, 1, 1)
    assert got["accuracy"] == 0.5 and got["yes_ratio"] == 0.5 and got["convention"] == "official"
    result = CliRunner().invoke(cli, ["score", "pope", *pope_files(tmp_path),
                                      "--convention", "lmms-eval"])
    lmms = json.loads(result.stdout)
    assert result.stderr.startswith("warning: POPE metrics with a zero denominator")
    # "yes." and "No" (label yes) are wrong, "NO" is right once lowercased
    assert lmms["accuracy"] == 0.5 and lmms["unparsed"] == 1


def test_score_table(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["score", "pope", *pope_files(tmp_path), "--table"])
    assert result.exit_code == 0
    lines = dict(line.split(None, 1) for line in result.stdout.strip().splitlines())
    assert lines["accuracy"] == "0.5000" and lines["tp"] == "1"
    assert lines["convention"] == "official"


@pytest.mark.parametrize(("content", "needle"), [
    ('{"question_id": 0, "text": "yes"}\n{"question_id": 1, "text": yes}\n',
     "answers.jsonl:2: malformed JSON line"),
    ('{"question_id": 0, "text": "yes"}\n', "unmatched question ids: 3 question ids missing"),
])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path: Path, content: str, needle: str,
                                                monkeypatch, capsys) -> None:
    args = pope_files(tmp_path)
    Path(args[3]).write_text(content)
    code, out, err = run_main(["score", "pope", *args], monkeypatch, capsys)
    assert out == ""
    assert_one_line_error(code, err, needle)


def test_unsupported_convention_and_missing_directory(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    code, _, err = run_main(["score", "moat", "--predictions", "x.jsonl", "--convention",
                             "vlmevalkit"], monkeypatch, capsys)
    assert_one_line_error(code, err, "moat: convention 'vlmevalkit' is not supported")
    code, _, err = run_main(["score", "mme", "--predictions", str(tmp_path / "none")],
                            monkeypatch, capsys)
    assert_one_line_error(code, err, "none: not a directory")
