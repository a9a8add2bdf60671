"""The run directory: the one place names become paths. Only plain names, nothing outside the
run is written or deleted, and a fresh start deletes only what a run writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tinyvlm.config import load_recipe
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir, check_plain_name, slug

from .test_cli import run_cli

BAD_NAMES = ["", ".", "..", "../victim", "a/b", "a\\b", ".hidden", "a\x00b", "x" * 256]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_only_plain_names_become_paths(name: str) -> None:
    with pytest.raises(InputError, match="must be a plain name"):
        check_plain_name(name, "stage name")
    with pytest.raises(InputError):
        RunDir("run").stage_dir(name)


@pytest.mark.parametrize("name", ["teacher-sft", "mimic_dense", "student 2", "v1.5"])
def test_plain_names_are_accepted(name: str) -> None:
    assert RunDir("run").stage_dir(name) == Path("run", "checkpoints", name)


def test_benchmark_names_become_one_safe_component() -> None:
    assert slug("pope/random") == "pope-random"
    assert slug("llava/..") == "llava-.."
    assert slug("..") == "unnamed" and slug(".x") == "x"


def test_inside_refuses_paths_outside_the_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.inside(tmp_path / "run" / "checkpoints") == tmp_path / "run" / "checkpoints"
    for outside in (tmp_path, tmp_path / "run", tmp_path / "run" / ".." / "other"):
        with pytest.raises(InputError, match="not inside the run directory"):
            run.inside(outside)


def test_a_fresh_start_deletes_only_what_a_run_writes(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    stage = run.stage_dir("sft")
    for made in ("step-000002", "step-000004", ".step-000006.abc123"):
        (stage / made).mkdir(parents=True)
        (stage / made / "trainer.pt").write_text("x")
    (stage / "pairs.jsonl").write_text("{}\n")
    (stage / "notes.txt").write_text("the user's")
    (stage / "step-keep").mkdir()  # not a step directory of ours
    run.clear_stage("sft")
    assert sorted(p.name for p in stage.iterdir()) == ["notes.txt", "step-keep"]
    (stage / "notes.txt").unlink()
    (stage / "step-keep").rmdir()
    run.clear_stage("sft")
    assert not stage.exists()


def recipe_file(tmp_path: Path, **edits: object) -> Path:
    doc = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "demo.yaml").read_text())
    for key, value in edits.items():
        if key == "stage_name":
            doc["stages"][0]["name"] = value
        elif key == "row":
            doc["eval"]["models"] = {value: f"stage:{doc['stages'][0]['name']}"}
        else:
            doc[key] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("edit,key", [
    ({"stage_name": ".."}, r"recipe\.stages\[0\]\.name"),
    ({"stage_name": "../../victim"}, r"recipe\.stages\[0\]\.name"),
    ({"name": "../escape"}, r"recipe\.name"),
    ({"row": "../row"}, r"recipe\.eval\.models\.\.\./row"),
])
def test_recipe_names_that_would_escape_are_refused_at_load(tmp_path: Path, edit: dict,
                                                            key: str) -> None:
    with pytest.raises(InputError, match=key + "' must be a plain name"):
        load_recipe(recipe_file(tmp_path, **edit))


def test_the_cli_refuses_an_escaping_stage_and_leaves_everything_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    out = tmp_path / "a" / "b" / "run"
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("the user's")
    for name in ("../../../victim", ".."):
        code, _, err = run_cli(["train", str(recipe_file(tmp_path, stage_name=name)),
                                "--out", str(out), "--quiet"], monkeypatch, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "plain name" in err
    assert (victim / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_eval_refuses_a_model_name_that_would_escape(model: TinyVLM, shapes_dir: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    model_dir = model.save_pretrained(tmp_path / "m")
    code, _, err = run_cli(["eval", str(model_dir), str(shapes_dir / "test.json"),
                            "--out", str(tmp_path / "e"), "--name", "../../x", "--quiet"],
                           monkeypatch, capsys)
    assert code == 2 and "plain name" in err
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "e" / "predictions").exists()
