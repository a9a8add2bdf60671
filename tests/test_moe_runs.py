"""MoE inside the framework: training logs router statistics, telemetry, the upcycle
command, and the task-routed ViT (M3ViT) from training to a pruned single-task model."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from tinyvlm.analysis.expert_load import expert_load, plot_expert_load
from tinyvlm.config import MoEConfig, Recipe, StageConfig, from_dict
from tinyvlm.data.llava import load_llava
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.m3vit import (
    evaluate_task,
    load_heads,
    load_single_task,
    pathway,
    save_single_task,
    vision_flops,
)
from tinyvlm.train.objectives import TaskHeads
from tinyvlm.train.pipeline import run_recipe

from .conftest import tiny_model_config, tiny_recipe
from .test_cli import run_cli

MOE = {"experts": 4, "top_k": 2, "layers": "all", "z_coef": 1e-3}


def test_training_logs_router_statistics(shapes_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(shapes_dir, steps=3)
    recipe.model.language.moe = from_dict(MoEConfig, MOE)
    run_recipe(recipe, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    for row in rows:
        assert row["router_loss"] > 0 and row["load_imbalance"] >= 1.0
        assert row["drop_rate"] == 0.0 and row["balance_loss"] >= 1.0 - 1e-6
    # The run directory gets the expert telemetry of the validation split.
    load = json.loads((tmp_path / "run" / "expert_load.json").read_text())
    assert load["layers"] == ["language.0", "language.1"]
    assert (tmp_path / "run" / "expert_load.png").stat().st_size > 0


def test_expert_load_splits_image_and_text_tokens(shapes_dir: Path,
                                                  shapes_tokenizer: Tokenizer) -> None:
    cfg = tiny_model_config(moe=MOE)
    cfg.vision.moe = MoEConfig(experts=2, top_k=1, layers=[1])
    model = TinyVLM.from_tokenizer(cfg, shapes_tokenizer).eval()
    convs = load_llava(shapes_dir / "test.json")[:5]
    load = expert_load(model, convs, batch_size=2)
    assert load["layers"] == ["language.0", "language.1", "vision.1"]
    n_img = 5 * model.image_tokens  # one image per test conversation
    for layer in ("language.0", "language.1"):
        assert sum(load["by_kind"][layer]["image"]) == 2 * n_img  # top-2
        caps = load["by_capability"][layer]
        assert caps and all(len(v) == 4 for v in caps.values())
    patches = 5 * (cfg.vision.num_patches + 1)  # with [CLS]
    assert load["by_kind"]["vision.1"] == {"image": load["by_kind"]["vision.1"]["image"]}
    assert sum(load["by_kind"]["vision.1"]["image"]) == patches


def test_expert_load_plot(tmp_path: Path) -> None:
    load = {"layers": ["language.1"], "by_kind": {"language.1": {"image": [1, 3],
                                                                 "text": [2, 2]}},
            "by_capability": {"language.1": {"CNT": [0, 4]}}}
    path = plot_expert_load(load, tmp_path / "x.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_upcycle_command(tokenizer: Tokenizer, tmp_path: Path, monkeypatch, capsys) -> None:
    dense = TinyVLM.from_tokenizer(tiny_model_config(depth=4), tokenizer).eval()
    dense.save_pretrained(tmp_path / "dense")
    code, out, err = run_cli(["upcycle", str(tmp_path / "dense"), str(tmp_path / "moe"),
                           "--experts", "3", "--top-k", "2", "--layers", "1,3"],
                          monkeypatch, capsys)
    assert code == 0, err
    assert "2 of 4 language blocks" in out
    sparse = TinyVLM.from_pretrained(tmp_path / "moe").eval()
    assert sparse.config.language.moe.layers == [1, 3]
    ids = torch.tensor([tokenizer.encode("how many shapes are there?")])
    torch.testing.assert_close(sparse(ids).logits, dense(ids).logits, atol=1e-5, rtol=1e-5)
    code, _, err = run_cli(["upcycle", str(tmp_path / "moe"), str(tmp_path / "again")],
                        monkeypatch, capsys)
    assert code == 2 and "already sparse" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["upcycle", str(tmp_path / "dense"), str(tmp_path / "x"), "--layers",
                         "odd"], monkeypatch, capsys)
    assert code == 2 and "--layers" in err


def task_heads_recipe(data: Path, steps: int, log_every: int) -> Recipe:
    """A tiny recipe of one task-heads stage over a task-routed MoE ViT (M3ViT)."""
    recipe = tiny_recipe(data, steps=steps)
    recipe.stages = [from_dict(StageConfig, {"name": "tasks", "objective": "task_heads",
                                             "trainable": ["vision"], "steps": steps,
                                             "batch_size": 8, "warmup_steps": 1,
                                             "log_every": log_every})]
    recipe.model.vision.moe = MoEConfig(experts=4, top_k=2, layers=[1],
                                        task_routing="multi_gate", num_tasks=4)
    return recipe


def test_task_routed_vit_end_to_end(shapes_dir: Path, tmp_path: Path, monkeypatch,
                                    capsys) -> None:
    recipe = task_heads_recipe(shapes_dir, steps=4, log_every=2)
    run = tmp_path / "run"
    run_recipe(recipe, run, progress=False)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"count_acc", "shape_acc", "colour_acc", "word_acc", "router_loss"} <= set(row)

    model = TinyVLM.from_pretrained(run / "model").eval()
    heads = load_heads(run, recipe.stages[0], model)
    stage = dataclasses.replace(recipe.stages[0], train="test.json")
    test = heads.data(model, recipe.data, stage)
    task = TaskHeads.TASKS.index("colour")
    full = evaluate_task(model, heads, test, task, batch_size=3)
    assert 0.0 <= full["accuracy"] <= 1.0 and full["n"] > 0
    keep = pathway(full["load"])
    single_dir = save_single_task(copy.deepcopy(model), heads, task, keep, tmp_path / "single")
    single, single_heads, task_id = load_single_task(single_dir)
    assert task_id == task and single.config.vision.moe.num_tasks == 1
    # Every expert the task chose is kept, so the single-task model answers identically.
    pruned = evaluate_task(single, single_heads, test, task, routed=False)
    assert pruned["accuracy"] == full["accuracy"] and pruned["load"]["vision.1"] == [
        c for c in full["load"]["vision.1"] if c > 0]
    assert vision_flops(single, 32) <= vision_flops(model, 32, task)

    code, out, err = run_cli(["tasks", "eval", str(run)], monkeypatch, capsys)
    assert code == 0, err
    assert [r["task"] for r in json.loads(out)] == list(TaskHeads.TASKS)
    assert json.loads(out)[task]["accuracy"] == full["accuracy"]
    code, out, err = run_cli(["tasks", "prune", str(run), "--task", "colour", "--out",
                           str(tmp_path / "cli_single")], monkeypatch, capsys)
    assert code == 0, err and (tmp_path / "cli_single" / "task.json").is_file()
    code, _, err = run_cli(["tasks", "prune", str(run), "--task", "color", "--out",
                         str(tmp_path / "x")], monkeypatch, capsys)
    assert code == 2 and "did you mean 'colour'" in err


def test_a_pathway_keeps_exactly_the_experts_above_the_share() -> None:
    load = {"vision.1": [50, 30, 15, 5, 0], "vision.3": [0, 0, 99, 1, 0],
            "language.1": [10, 10, 10, 10, 10]}  # not the encoder's: ignored
    assert pathway(load, 0.05) == {1: [0, 1, 2], 3: [2]}  # 5% is not above 5%
    assert pathway(load, 0.0) == {1: [0, 1, 2, 3], 3: [2, 3]}  # every expert chosen at all
    assert pathway(load, 0.2) == {1: [0, 1], 3: [2]}
