"""Run a model over benchmark files: prompt templates, batched greedy decoding with left
padding, a per-item cache so an interrupted run resumes, a log of every sample, the scorers.

Layout under the output directory:
- ``cache/<model>/<benchmark>.jsonl``: finished items, appended per batch (see cache.py);
- ``predictions/<model>.jsonl``: one line per sample of every benchmark (prompt, images, raw
  output, parsed answer, score, seconds);
- ``predictions/<model>/<benchmark>/``: the predictions in each benchmark's official answer
  layout, which is what the scorer reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tinyvlm.data.collate import Batch, pad
from tinyvlm.data.formats import ImageStore, load_llava
from tinyvlm.errors import InputError
from tinyvlm.eval import metrics, scoring
from tinyvlm.eval.benchmarks import Benchmark, Item, LoadContext, load_benchmark
from tinyvlm.eval.cache import PredictionCache, digest, model_fingerprint
from tinyvlm.eval.templates import Template, load_template
from tinyvlm.io import write_jsonl
from tinyvlm.models.vlm import TinyVLM


@dataclass
class Prompt:
    ids: list[int]
    images: list[Path]
    text: str  # the rendered user message, for the log
    key: str  # hash of ids and images: a cached output counts only for the same prompt


def build_prompts(model: TinyVLM, bench: Benchmark, template: Template,
                  max_new_tokens: int) -> list[Prompt]:
    """Render and tokenize every item; reject prompts that cannot fit or mismatch images."""
    tok = model.tokenizer
    assert tok is not None
    limit = model.config.language.max_seq_len
    prompts = []
    for item in bench.items:
        text = template.render(item.fields())
        ids = tok.encode_prompt(item.history, text, model.image_tokens)
        slots = sum(1 for i in ids if i == tok.image_id)
        if slots != len(item.images) * model.image_tokens:
            raise InputError(f"item {item.id}: the prompt has {slots // model.image_tokens} "
                             f"<image> placeholders for {len(item.images)} images (template "
                             f"{template.source})", bench.path)
        if len(ids) + max_new_tokens > limit:
            raise InputError(f"item {item.id}: {len(ids)} prompt tokens + {max_new_tokens} new "
                             f"tokens exceed the model's max_seq_len {limit}", bench.path)
        # Resolved image paths: the same item keys the same entry from any working directory.
        key = digest(ids, [str(p.resolve()) for p in item.images])
        prompts.append(Prompt(ids, item.images, text, key))
    return prompts


OnBatch = Callable[[list[int], list[str], float], None]


def generate_answers(model: TinyVLM, prompts: Sequence[Prompt], batch_size: int,
                     max_new_tokens: int, on_batch: OnBatch | None = None,
                     progress: bool = False) -> list[str]:
    """Greedy answers for `prompts`, in their order.

    Prompts are grouped by length so that left padding stays short. After each batch,
    on_batch(indices, answers, seconds) runs (the cache appends there).
    """
    tok = model.tokenizer
    assert tok is not None
    device = next(model.parameters()).device
    images = ImageStore(model.config.vision.image_size)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i].ids), i))
    answers: list[str] = [""] * len(prompts)
    model.eval()
    bar = tqdm(total=len(order), desc="eval", unit="q", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [prompts[i].ids for i in chunk]
        batch = Batch(input_ids=pad(rows, tok.pad_id, side="left"),
                      attention_mask=pad([[1] * len(r) for r in rows], 0, side="left"),
                      pixel_values=images.pixels([p for i in chunk for p in prompts[i].images]))
        tick = time.perf_counter()
        with torch.inference_mode():
            batch = batch.to(device)
            new = model.generate(batch.input_ids, batch.attention_mask, batch.pixel_values,
                                 max_new_tokens=max_new_tokens).tolist()
        seconds = time.perf_counter() - tick
        texts = [tok.decode_answer(row) for row in new]
        for i, text in zip(chunk, texts, strict=True):
            answers[i] = text
        if on_batch is not None:
            on_batch(chunk, texts, seconds)
        bar.update(len(chunk))
    bar.close()
    return answers


@dataclass
class BenchmarkRun:
    bench: Benchmark
    samples: list[dict[str, Any]]
    computed: int  # items decoded now (the rest came from the cache)
    result: dict[str, Any] | None  # the scorer's output
    answers: Path | None  # the official-layout prediction file or directory


def run_benchmark(model: TinyVLM, bench: Benchmark, out_dir: Path, name: str, model_fp: str,
                  template: Template, batch_size: int, max_new_tokens: int,
                  progress: bool = True) -> BenchmarkRun:
    """Every item of `bench`: from the cache when done before, else decoded and cached."""
    prompts = build_prompts(model, bench, template, max_new_tokens)
    cache = PredictionCache(out_dir / "cache" / name / f"{_slug(bench.name)}.jsonl",
                            digest(model_fp, max_new_tokens))
    done = cache.load()
    outputs: dict[int, tuple[str, float]] = {}
    todo = []
    for i, (item, prompt) in enumerate(zip(bench.items, prompts, strict=True)):
        hit = done.get(item.id)
        if hit is not None and hit.get("prompt_hash") == prompt.key:
            outputs[i] = (str(hit["output"]), float(hit.get("seconds", 0.0)))
        else:
            todo.append(i)

    def on_batch(chunk: list[int], texts: list[str], seconds: float) -> None:
        per_item = seconds / len(chunk)
        cache.append({"id": bench.items[todo[j]].id, "prompt_hash": prompts[todo[j]].key,
                      "output": t, "seconds": per_item} for j, t in zip(chunk, texts, strict=True))
        for j, t in zip(chunk, texts, strict=True):
            outputs[todo[j]] = (t, per_item)

    if todo:
        generate_answers(model, [prompts[i] for i in todo], batch_size, max_new_tokens,
                         on_batch, progress)
    samples = [sample_record(bench, item, prompt, *outputs[i], max_new_tokens)
               for i, (item, prompt) in enumerate(zip(bench.items, prompts, strict=True))]
    answer_dir = out_dir / "predictions" / name / _slug(bench.name)
    result, answers = scoring.score(bench, samples, answer_dir)
    return BenchmarkRun(bench, samples, len(todo), result, answers)


def _slug(name: str) -> str:
    return name.replace("/", "-")


def sample_record(bench: Benchmark, item: Item, prompt: Prompt, prediction: str,
                  seconds: float, max_new_tokens: int) -> dict[str, Any]:
    """One logged sample; LLaVA items keep the keys metrics.summarize reads."""
    record: dict[str, Any] = {
        "benchmark": bench.name, "format": bench.kind, "id": item.id,
        "question": item.question, "prompt": prompt.text,
        "images": [str(p) for p in item.images], "prompt_tokens": len(prompt.ids),
        "max_new_tokens": max_new_tokens,
        "answer": item.answer, "prediction": prediction, "seconds": seconds,
        "meta": item.meta,
    }
    if item.options:
        record["options"] = item.options
    if bench.kind == "llava":
        record.update(type=item.meta["type"], capabilities=item.meta["capabilities"],
                      pope=item.meta["pope"])
    return record


def training_pairs(train_file: str | Path) -> list[tuple[str, str]]:
    """(question type, answer) for every training turn: the majority baseline's prior."""
    return [(m.get("type", "unknown"), turn[1])
            for c in load_llava(train_file)
            for turn, m in zip(c.turns, c.meta or [{}] * len(c.turns), strict=True)]


def evaluate(model: TinyVLM, files: Sequence[str | Path], out_dir: str | Path, name: str,
             batch_size: int = 128, max_new_tokens: int | None = None, progress: bool = True,
             image_root: str | Path | None = None, templates: str | Path | None = None,
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every benchmark file through run_benchmark; writes predictions/<name>.jsonl.

    Returns the summary (metrics.summarize over LLaVA-format samples, plus "benchmarks":
    each file's scorer result, and timing) and every sample. max_new_tokens None: each
    benchmark template's own.
    """
    out_dir = Path(out_dir)
    ctx = LoadContext(None if image_root is None else Path(image_root),
                      out_dir / "cache" / "images")
    benches = [load_benchmark(f, ctx) for f in files]
    seen: dict[str, int] = {}
    for bench in benches:  # names key the cache and answer files: keep them distinct
        seen[bench.name] = seen.get(bench.name, 0) + 1
        if seen[bench.name] > 1:
            bench.alias = f"{bench.name}-{seen[bench.name]}"
    fingerprint = model_fingerprint(model)
    runs = []
    tick = time.perf_counter()
    for bench in benches:
        template = load_template(bench.kind, templates)
        runs.append(run_benchmark(model, bench, out_dir, name, fingerprint, template,
                                  batch_size, max_new_tokens or template.max_new_tokens,
                                  progress))
    seconds = time.perf_counter() - tick
    samples = [s for r in runs for s in r.samples]
    write_jsonl(out_dir / "predictions" / f"{name}.jsonl", samples)
    summary = metrics.summarize(s for s in samples if s["format"] == "llava")
    summary["benchmarks"] = {r.bench.name: {
        "format": r.bench.kind, "file": str(r.bench.path), "n": len(r.samples),
        "computed": r.computed, "answers": None if r.answers is None else str(r.answers),
        "notes": r.bench.notes, "result": r.result} for r in runs}
    pope = [(r.bench.path, r.answers) for r in runs
            if r.bench.kind == "pope" and r.result is not None and r.answers is not None]
    if len(pope) > 1:
        summary["benchmarks"]["pope/splits"] = {
            "format": "pope", "file": [str(a) for a, _ in pope], "n": None, "computed": 0,
            "answers": [str(p) for _, p in pope], "notes": [],
            "result": scoring.pope_splits(pope)}
    summary["seconds"] = seconds
    summary["computed"] = sum(r.computed for r in runs)
    return summary, samples
