"""Shared fixtures: tiny configs, a tiny ShapesWorld, a tokenizer and a model built from them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tinyvlm.config import (
    LanguageConfig,
    ModelConfig,
    Recipe,
    StageConfig,
    VisionConfig,
    from_dict,
)
from tinyvlm.data import shapes
from tinyvlm.data.llava import conversation_texts, load_llava
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.models.vlm import TinyVLM

# Threads stay as they are during tests: CPU sharing would change them with the machine's
# load, and with them the last bits of float results that bit-exact tests compare.
os.environ["TINYVLM_CPU_SHARE"] = "0"

TEXTS = [
    "<image>\nhow many shapes are there?", "3", "what colour is the circle?", "red",
    "is there a blue square in the image?", "no", "what word is written in the image?", "cat",
]


def tiny_model_config(**language: object) -> ModelConfig:
    lang = {"dim": 32, "depth": 2, "heads": 4, "kv_heads": 2, "max_seq_len": 128, **language}
    return ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2,
                            cls_attention_layers=[0, -1]),
        language=from_dict(LanguageConfig, lang),
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS)


@pytest.fixture
def model(tokenizer: Tokenizer) -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM.from_tokenizer(tiny_model_config(), tokenizer).eval()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ShapesWorld (32 px images), generated once per test session."""
    root = tmp_path_factory.mktemp("shapes")
    shapes.write_dataset(root, shapes.ShapesWorldConfig(
        image_size=32, num_train=48, num_val=4, num_test=8, pope_images=4, seed=1))
    return root


@pytest.fixture(scope="session")
def shapes_tokenizer(shapes_dir: Path) -> Tokenizer:
    return Tokenizer.train(conversation_texts(load_llava(shapes_dir / "train.json")))


def tiny_recipe(data_dir: Path, steps: int = 4, **stage: object) -> Recipe:
    return Recipe(
        name="tiny",
        data=from_dict(type(Recipe().data), {"path": str(data_dir), "shapes": None}),
        model=tiny_model_config(),
        stages=[from_dict(StageConfig, {"name": "sft", "steps": steps, "batch_size": 4,
                                        "warmup_steps": 2, "log_every": 1, **stage})],
    )


def chatty(tokenizer: Tokenizer) -> TinyVLM:
    """A model that never says a special token (the end token included), so answers are
    words and run to max_new_tokens."""
    torch.manual_seed(0)
    model = TinyVLM.from_tokenizer(tiny_model_config(), tokenizer).eval()
    model.language.lm_head = torch.nn.Linear(32, tokenizer.vocab_size)
    with torch.no_grad():
        model.language.lm_head.weight.normal_(std=1.0)
        model.language.lm_head.bias.zero_()
        model.language.lm_head.bias[list(tokenizer.special_ids)] = -1e4
    return model


@contextlib.contextmanager
def one_process_group() -> Iterator[None]:
    """A gloo process group of this process alone (a free localhost port), destroyed after:
    distributed runtimes in-process, without torchrun."""
    import socket

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


__all__ = ["TEXTS", "chatty", "one_process_group", "tiny_model_config", "tiny_recipe"]
