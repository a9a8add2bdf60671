"""Data hyperparameters: the tokenizer, the dataset directory, and the ShapesWorld generator."""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyvlm.errors import InputError


@dataclass
class TokenizerConfig:
    # A model directory (tinyvlm's or a Hugging Face one) whose tokenizer and chat format the
    # run uses instead of training one: needed to start from or distil a pretrained model.
    pretrained: str = ""
    kind: str = "wordlevel"  # "wordlevel" or "bpe"
    vocab_size: int = 2048  # upper bound; word-level vocabularies are usually smaller
    min_frequency: int = 1
    lowercase: bool = True


@dataclass
class ShapesWorldConfig:
    """Settings of the ShapesWorld generator (tinyvlm.data.shapes)."""

    image_size: int = 64
    grid: int = 4  # cells per side; cell = image_size // grid
    min_objects: int = 2
    max_objects: int = 5
    num_train: int = 3000
    num_val: int = 200
    num_test: int = 500
    pope_images: int = 200
    seed: int = 0
    theme_prob: float = 0.5  # chance that an object is drawn from its scene's theme pair
    font_size: int = 0  # 0: the largest size up to 3/4 of a cell at which every word fits
    # Where `<image>` stands in a question record: before the question (LLaVA's habit) or
    # after it, so that a causal model reads the image already knowing what is asked.
    question_first: bool = False
    # Training records: "conversation" (all questions of an image in one multi-turn record)
    # or "single" (one record per question, like val and test).
    train_layout: str = "conversation"
    # Also ask, in the training split only, which row and which column a named object is in
    # (kinds row_of, col_of): a curriculum stage for spatial relations. Off: the dataset is
    # unchanged.
    position_questions: bool = False

    def __post_init__(self) -> None:
        cell = self.image_size // max(self.grid, 1)
        problems = [
            (self.grid < 2, "grid must be at least 2 (the word spans 2 cells)"),
            (self.image_size % max(self.grid, 1) != 0, "image_size must be a multiple of grid"),
            (cell < 8, "cells must be at least 8 px (image_size // grid)"),
            (self.min_objects < 1, "min_objects must be at least 1"),
            (self.max_objects < self.min_objects, "max_objects must be >= min_objects"),
            (self.max_objects > self.grid**2 - 2, "max_objects must leave 2 cells for the word"),
            (
                min(self.num_train, self.num_val, self.num_test, self.pope_images) < 0,
                "counts must be >= 0",
            ),
            (self.pope_images > self.num_test, "pope_images must be <= num_test"),
            (not 0 <= self.theme_prob <= 1, "theme_prob must be in [0, 1]"),
            (self.font_size < 0, "font_size must be >= 0"),
            (self.train_layout not in ("conversation", "single"),
             "train_layout must be 'conversation' or 'single'"),
        ]
        for bad, message in problems:
            if bad:
                raise InputError(f"ShapesWorld config: {message}")

    @property
    def cell(self) -> int:
        return self.image_size // self.grid

    def object_px(self, size: str) -> int:
        """Side of an object's box: odd (so shapes have a centre pixel), 2+ px inside its cell."""
        px = self.cell * (13 if size == "large" else 7) // 16
        return px if px % 2 else px - 1


@dataclass
class DataConfig:
    # A directory with train.json / val.json / test.json (LLaVA format). When it holds no
    # dataset yet and `shapes` is set, ShapesWorld is generated there first.
    path: str = "data/shapes"
    # ShapesWorld generator settings; None for a dataset that must already exist.
    shapes: ShapesWorldConfig | None = field(default_factory=ShapesWorldConfig)
    train: str = "train.json"
    eval: list[str] = field(default_factory=lambda: ["test.json", "pope.json"])
    max_seq_len: int | None = None  # None: the language model's max_seq_len
    # Every image a stage reads is checked before its first step: a bad one is an "error",
    # or "skip": the records that read it are left out, and counted.
    bad_images: str = "error"
    # The labelled share of the training images (LLaVA-MoD's regime: a student that sees few
    # labels). Stages with `images: labelled` (the default) train on this seeded share of the
    # images of their file; with 1.0 (the default) every image is labelled. The rest is the
    # unlabelled split: questions without answers, for mimic's `unlabelled` option.
    labelled_fraction: float = 1.0
    labelled_seed: int = 0
