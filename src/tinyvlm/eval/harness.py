"""Run a model over benchmark files with batched greedy decoding and score it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tinyvlm.data.collate import PromptCollator
from tinyvlm.data.formats import Conversation, ImageStore, load_llava
from tinyvlm.eval import metrics
from tinyvlm.io import write_jsonl
from tinyvlm.models.vlm import TinyVLM


def predict(model: TinyVLM, conversations: Sequence[Conversation], batch_size: int = 128,
            max_new_tokens: int = 8, progress: bool = True) -> list[dict[str, Any]]:
    """One sample dict per conversation: its last turn is asked, the answer decoded greedily.

    Prompts are grouped by length so that left padding stays short; results come back in
    input order.
    """
    assert model.tokenizer is not None
    tokenizer = model.tokenizer
    collate = PromptCollator(tokenizer, ImageStore(model.config.vision.image_size),
                             model.image_tokens)
    prompts = [collate.prompt_ids(c) for c in conversations]
    order = sorted(range(len(conversations)), key=lambda i: (len(prompts[i]), i))
    answers: dict[int, str] = {}
    model.eval()
    bar = tqdm(total=len(order), desc="eval", unit="q", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([conversations[i] for i in chunk], [prompts[i] for i in chunk])
        with torch.inference_mode():
            new = model.generate(batch.input_ids, batch.attention_mask, batch.pixel_values,
                                 max_new_tokens=max_new_tokens)
        for i, row in zip(chunk, new.tolist(), strict=True):
            answers[i] = tokenizer.decode_answer(row)
        bar.update(len(chunk))
    bar.close()
    return [sample_record(c, answers[i]) for i, c in enumerate(conversations)]


def sample_record(conv: Conversation, prediction: str) -> dict[str, Any]:
    meta = conv.meta[-1] if conv.meta else {}
    return {
        "id": conv.id,
        "question": conv.question,
        "answer": conv.answer,
        "prediction": prediction,
        "type": meta.get("type", "unknown"),
        "capabilities": list(meta.get("capabilities", [])),
        "pope": meta.get("pope"),
    }


def training_pairs(train_file: str | Path) -> list[tuple[str, str]]:
    """(question type, answer) for every training turn: the majority baseline's prior."""
    return [(m.get("type", "unknown"), turn[1])
            for c in load_llava(train_file)
            for turn, m in zip(c.turns, c.meta or [{}] * len(c.turns), strict=True)]


def evaluate(model: TinyVLM, files: Sequence[str | Path], out_dir: str | Path, name: str,
             batch_size: int = 128, max_new_tokens: int = 8, progress: bool = True
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predict every file's questions, write predictions/<name>.jsonl, return the summary."""
    conversations = [c for f in files for c in load_llava(f)]
    tick = time.perf_counter()
    samples = predict(model, conversations, batch_size, max_new_tokens, progress)
    seconds = time.perf_counter() - tick
    write_jsonl(Path(out_dir) / "predictions" / f"{name}.jsonl", samples)
    summary = metrics.summarize(samples)
    summary["seconds"] = seconds
    return summary, samples
