"""A recipe end to end: data, tokenizer, model, then its stages through the one loop."""

from __future__ import annotations

from pathlib import Path

import torch

from tinyvlm.config import DataConfig, Recipe, dump_yaml
from tinyvlm.data import shapes
from tinyvlm.data.formats import conversation_texts, load_llava
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.eval.telemetry import write_expert_load
from tinyvlm.io import read_json, write_text
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.loop import completed, load_final, train_stage
from tinyvlm.train.objectives import build_objective


def prepare_data(config: DataConfig, progress: bool = True) -> Path:
    """The dataset directory; with ShapesWorld settings, generated there first unless a
    complete dataset made with the same settings is already there."""
    root = Path(config.path)
    if config.shapes is None:
        if not (root / config.train).is_file():
            raise InputError(f"no training file {config.train} (and no ShapesWorld settings "
                             "to generate one)", root)
        return root
    world = shapes.ShapesWorldConfig.from_dict(config.shapes, key="data.shapes")
    manifest = root / "dataset.json"  # written last: its presence marks a complete dataset
    if manifest.is_file() and read_json(manifest).get("config") == world.to_dict():
        return root
    if progress:
        print(f"generating ShapesWorld in {root} ...", flush=True)
    shapes.write_dataset(root, world)
    return root


def build_model(recipe: Recipe, run_dir: Path) -> TinyVLM:
    """A fresh model with a tokenizer trained on the training text (reused on resume)."""
    tok_file = run_dir / "tokenizer.json"
    if tok_file.is_file():
        tokenizer = Tokenizer.load(tok_file, recipe.model.chat)
    else:
        texts = conversation_texts(load_llava(Path(recipe.data.path) / recipe.data.train))
        tokenizer = Tokenizer.train(texts, recipe.tokenizer, recipe.model.chat)
        tokenizer.save(tok_file)
    torch.manual_seed(recipe.seed)
    return TinyVLM.from_tokenizer(recipe.model, tokenizer)


def run_recipe(recipe: Recipe, run_dir: str | Path, resume: bool = False,
               progress: bool = True) -> TinyVLM:
    """Train every stage of `recipe` into `run_dir`; the final model goes to run_dir/model.

    With resume, finished stages are skipped (their final weights reloaded) and an
    interrupted stage continues from its latest checkpoint.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    write_text(run_dir / "recipe.yaml", dump_yaml(recipe))
    prepare_data(recipe.data, progress)
    model = build_model(recipe, run_dir)
    for stage in recipe.stages:
        if resume and completed(run_dir, stage):
            load_final(run_dir, stage, model)
            continue
        objective = build_objective(stage.objective, model, stage)
        source = objective.data(model, recipe.data, stage)
        train_stage(model, stage, objective, source, run_dir, resume=resume, progress=progress)
    model.save_pretrained(run_dir / "model")
    val = Path(recipe.data.path) / "val.json"
    if val.is_file():  # MoE models: which experts took which tokens, as JSON and a heatmap
        write_expert_load(model, load_llava(val), run_dir)
    return model
