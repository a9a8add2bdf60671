"""Bad input gets one line naming the key or file and the rule, exit code 2, before any work:
recipe values, model configs, data files, images and the generation options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tinyvlm.data.images import load_image
from tinyvlm.data.llava import load_llava
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM

from .test_cli import assert_one_line_error, run_cli

DEMO = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "demo.yaml").read_text())


def recipe(tmp_path: Path, edit: dict) -> Path:
    doc = json.loads(json.dumps(DEMO))
    for dotted, value in edit.items():
        node = doc
        *path, last = dotted.split(".")
        for part in path:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    out = tmp_path / "r.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


CASES = [
    ({"stages.0.lr": -1.0}, "stages[0].lr' must be a finite number >= 0"),
    ({"stages.0.lr": float("inf")}, "stages[0].lr' must be a finite number >= 0"),
    ({"stages.0.batch_size": 0}, "stages[0].batch_size' must be >= 1"),
    ({"stages.0.steps": 0}, "stages[0].steps' must be >= 1"),
    ({"stages.0.grad_accum": 0}, "stages[0].grad_accum' must be >= 1"),
    ({"stages.0.log_every": 0}, "stages[0].log_every' must be >= 1"),
    ({"stages.0.betas": [0.9]}, "stages[0].betas' must be two numbers in [0, 1)"),
    ({"stages.0.betas": [0.9, 1.5]}, "stages[0].betas' must be two numbers in [0, 1)"),
    ({"stages.0.warmup_steps": -1}, "stages[0].warmup_steps' must be >= 0"),
    ({"stages.0.weight_decay": -0.1}, "stages[0].weight_decay' must be a finite number"),
    ({"stages.0.min_lr_ratio": -0.5}, "stages[0].min_lr_ratio' must be in [0, 1]"),
    ({"stages.0.grad_clip": -1.0}, "stages[0].grad_clip' must be a finite number >= 0"),
    ({"stages.0.checkpoint_every": -1}, "stages[0].checkpoint_every' must be >= 0"),
    ({"stages.0.precision": "fp8"}, "stages[0].precision' must be fp32, bf16 or auto"),
    ({"stages.0.trainable": ["visoin"]}, "unknown module 'visoin'"),
    ({"stages.1.objective": "sfft"}, "unknown objective 'sfft'"),
    ({"threads": 0}, "recipe.threads' must be >= 1 or null"),
    ({"model.vision.dim": 0}, "recipe.model.vision.dim' must be >= 1"),
    ({"model.vision.heads": 3}, "recipe.model.vision.heads' must be a divisor of dim"),
    ({"model.vision.patch_size": 15}, "recipe.model.vision.patch_size' must be a divisor of "
                                      "image_size"),
    ({"model.language.heads": 5}, "recipe.model.language.heads' must be a divisor of dim"),
    ({"model.language.kv_heads": 4}, "recipe.model.language.kv_heads' must be a divisor of"),
    ({"model.language.depth": 0}, "recipe.model.language.depth' must be >= 1"),
    ({"model.vision.position": "rope"}, "recipe.model.vision.position' must be learned or sincos"),
    ({"model.connector.kind": "vlroa"}, "unknown connector kind 'vlroa'"),
    ({"eval.max_new_tokens": 0}, "recipe.eval.max_new_tokens' must be >= 1"),
    ({"data.bad_images": "ignore"}, "recipe.data.bad_images' must be error or skip"),
    ({"seed": 99999999999999999999999}, "recipe.seed' must be in 0..2^63-1"),
    ({"stages.0.seed": -1}, "stages[0].seed' must be in 0..2^63-1"),
    ({"stages.0.warmup_steps": 1000}, "stages[0].warmup_steps' must be <= steps (300)"),
    ({"data.shapes.pope_images": 900}, "pope_images must be <= num_test"),
]


@pytest.mark.parametrize("edit,needle", CASES, ids=[next(iter(c[0])) for c in CASES])
def test_recipe_values_out_of_range_are_one_line_before_any_work(
        edit: dict, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    path = recipe(tmp_path, edit)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", str(path), "--out", str(out), "--quiet"], monkeypatch, capsys)
    assert_one_line_error(code, err, str(path), needle)
    assert not out.exists()  # nothing was made, not even the run directory


def test_recipe_files_that_are_not_utf8_or_repeat_a_key(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\nstages: [{name: sft}]\n".encode("latin-1"))
    code, _, err = run_cli(["train", str(bad)], monkeypatch, capsys)
    assert_one_line_error(code, err, str(bad), "not a UTF-8 text file")
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: a\nstages:\n  - {name: sft, lr: 0.1, lr: 0.2}\n")
    code, _, err = run_cli(["train", str(twice)], monkeypatch, capsys)
    assert_one_line_error(code, err, f"{twice}:3", "key 'lr' is given twice")
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(DEMO).encode())
    from tinyvlm.config import load_recipe

    assert load_recipe(bom).name == "demo"  # a UTF-8 byte-order mark is fine


@pytest.fixture
def model_dir(model: TinyVLM, tmp_path: Path) -> Path:
    return model.save_pretrained(tmp_path / "m")


@pytest.mark.parametrize("args,needle", [
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["--max-new-tokens", "-3"], "max_new_tokens must be >= 1"),
    (["--max-new-tokens", "100000"], "exceed the model's max_seq_len 128"),
    (["--top-p", "0"], "top_p must lie in (0, 1]"),
    (["--top-p", "1.5"], "top_p must lie in (0, 1]"),
    (["--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["--prompt", "how many " * 200], "exceed the model's max_seq_len 128"),
    (["--max-new-tokens", "x"], "Invalid value for '--max-new-tokens'"),
    (["--seed", "99999999999999999999999"], "Invalid value for '--seed'"),
    (["--prompt", ""], "the prompt is empty"),
])
def test_generation_options_out_of_range(args: list[str], needle: str, model_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    base = ["generate", str(model_dir), "--prompt", "how many shapes are there?"]
    code, _, err = run_cli([*base, *args], monkeypatch, capsys)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "0"], "batch size must be at least 1"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["--train", "/nonexistent.json"], "--train: no such file"),
    (["--templates", "/nonexistent"], "--templates: no such directory"),
    (["--image-root", "/nonexistent"], "--image-root: no such directory"),
    (["--name", ""], "--name is empty"),
])
def test_eval_options_out_of_range(args: list[str], needle: str, model_dir: Path,
                                   shapes_dir: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["eval", str(model_dir), str(shapes_dir / "test.json"), "--out",
                            str(tmp_path / "e"), "--quiet", *args], monkeypatch, capsys)
    assert_one_line_error(code, err, needle)


def test_out_naming_a_file(model_dir: Path, shapes_dir: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("mine")
    code, _, err = run_cli(["eval", str(model_dir), str(shapes_dir / "test.json"), "--out",
                            str(afile), "--quiet"], monkeypatch, capsys)
    assert_one_line_error(code, err, "the output directory is a file")
    code, _, err = run_cli(["train", str(recipe(tmp_path, {})), "--out", str(afile), "--quiet"],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, "the output directory is a file")
    assert afile.read_text() == "mine"


def test_upcycle_top_k_above_experts(model_dir: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["upcycle", str(model_dir), str(tmp_path / "u"), "--experts", "2",
                            "--top-k", "3"], monkeypatch, capsys)
    assert_one_line_error(code, err, "'upcycle.top_k' must lie in 1..experts (2)")


# ----------------------------------------------------------------------------- images and data


def test_a_sixteen_bit_png_keeps_its_grey_levels(tmp_path: Path) -> None:
    grey = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    pixels = load_image(tmp_path / "g.png", 32)
    expected = np.round(grey / 257).astype(np.uint8)
    assert (pixels[0].numpy() == expected).all() and len(np.unique(expected)) > 200


def test_a_decompression_bomb_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (1, 1)).save(path)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 0  # every image is now "too large": the guard's error path
    try:
        with pytest.raises(InputError, match="too large to decode safely"):
            load_image(path, 32)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_an_answer_holding_an_image_placeholder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"id": "a", "conversations": [
        {"from": "human", "value": "what?"}, {"from": "gpt", "value": "<image> this"}]}]))
    with pytest.raises(InputError, match="an answer holds '<image>'"):
        load_llava(path)


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    records = [{"id": "a", "conversations": [{"from": "human", "value": "q"},
                                             {"from": "gpt", "value": "a"}]}]
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(records).encode())
    assert load_llava(path)[0].answer == "a"
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(records[0]).encode() + b"\n")
    assert load_llava(jsonl)[0].answer == "a"


def copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_bad_training_images_stop_the_stage_before_its_first_step(
        damage: str, shapes_dir: Path, tmp_path: Path) -> None:
    from tinyvlm.train.pipeline import run_recipe

    from .conftest import tiny_recipe

    data = copy_dataset(shapes_dir, tmp_path / "data")
    image = data / "images" / "train" / "000007.png"
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:40])
    run = tmp_path / "run"
    with pytest.raises(InputError, match="stage 'sft': 1 images cannot be read"):
        run_recipe(tiny_recipe(data, steps=3), run, progress=False)
    assert not (run / "metrics.jsonl").exists()  # no step ran
    skipping = tiny_recipe(data, steps=3)
    skipping.data.bad_images = "skip"
    with pytest.warns(UserWarning, match="1 of 48 records left out"):
        run_recipe(skipping, run, progress=False)


def test_a_tokenizer_without_the_chat_tokens_is_one_line(model_dir: Path) -> None:
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    (model_dir / "checksums.json").unlink()
    Backend(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(
        str(model_dir / "tokenizer.json"))
    with pytest.raises(InputError, match="lacks the chat template's special tokens"):
        TinyVLM.from_pretrained(model_dir)


def test_eval_refuses_a_file_given_twice(model_dir: Path, shapes_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    test = str(shapes_dir / "test.json")
    code, _, err = run_cli(["eval", str(model_dir), test, test, "--out", str(tmp_path / "e"),
                            "--quiet"], monkeypatch, capsys)
    assert_one_line_error(code, err, "this benchmark file is given twice")


@pytest.mark.parametrize("args,needle", [
    (["--capacity-factor", "0"], "'upcycle.capacity_factor' must be > 0"),
    (["--balance-coef", "-1"], "'upcycle.balance_coef' must be a finite number >= 0"),
    (["--z-coef", "inf"], "'upcycle.z_coef' must be a finite number >= 0"),
    (["--layers", "1,1"], "'upcycle.layers' must not list a block twice"),
])
def test_upcycle_values_out_of_range(args: list[str], needle: str, model_dir: Path,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["upcycle", str(model_dir), str(tmp_path / "u"), *args],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, needle)


def test_model_outputs_never_replace_other_things(model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    afile = tmp_path / "a.txt"
    afile.write_text("precious")
    for out, needle in ((mine, "holds other files, not a tinyvlm model"),
                        (afile, "a file is there"), (model_dir, "is the model it reads")):
        code, _, err = run_cli(["upcycle", str(model_dir), str(out)], monkeypatch, capsys)
        assert_one_line_error(code, err, needle)
    assert (mine / "keep.txt").read_text() == "precious" and afile.read_text() == "precious"
    code, _, err = run_cli(["upcycle", str(model_dir), str(tmp_path / "moe")], monkeypatch,
                           capsys)
    assert code == 0  # an earlier model directory may be replaced
    code, _, err = run_cli(["upcycle", str(model_dir), str(tmp_path / "moe")], monkeypatch,
                           capsys)
    assert code == 0


def test_preference_build_never_writes_over_its_input(model_dir: Path, shapes_dir: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    import shutil

    data = tmp_path / "train.json"
    shutil.copy(shapes_dir / "train.json", data)
    before = data.read_bytes()
    code, _, err = run_cli(["preference", "build", str(model_dir), str(data), "--out",
                            str(data), "--quiet"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--out is one of the input files")
    assert data.read_bytes() == before


@pytest.mark.parametrize("flag", ["--top-k", "--shard-size", "--batch-size"])
def test_cache_teacher_sizes_must_be_positive(flag: str, model_dir: Path, shapes_dir: Path,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["distill", "cache-teacher", str(model_dir), str(model_dir),
                            str(shapes_dir / "train.json"), "--out", str(tmp_path / "c"),
                            flag, "0"], monkeypatch, capsys)
    assert_one_line_error(code, err, f"Invalid value for '{flag}'")
    assert not (tmp_path / "c").exists()


def test_info_prompt_longer_than_the_model(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["info", str(model_dir), "--prompt-len", "100000"], monkeypatch,
                           capsys)
    assert_one_line_error(code, err, "exceeds the model's max_seq_len 128")


def test_train_out_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["train", str(recipe(tmp_path, {})), "--out", ""], monkeypatch, capsys)
    assert_one_line_error(code, err, "--out is empty")
