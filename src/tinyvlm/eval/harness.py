"""Evaluate models on benchmark files: prompts from templates, generation through the
inference engine, a per-item cache so an interrupted run resumes, a log of every sample, the
benchmarks' own scorers, the majority-answer baseline, cost columns and the report.

Layout under the output directory (see rundir.RunDir):
- ``cache/<model>/<benchmark>.jsonl``: finished items, appended per batch (see cache.py);
- ``predictions/<model>.jsonl``: one line per sample of every benchmark (prompt, images, raw
  output, parsed answer, score, seconds);
- ``predictions/<model>/<benchmark>/``: the predictions in each benchmark's official answer
  layout, which is what the scorer reads;
- ``results.json``, ``report.md``, ``capabilities.png``: see report.py.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyvlm.analysis import cost
from tinyvlm.analysis.memory import PeakMemory
from tinyvlm.data.conversation import count_images
from tinyvlm.data.llava import load_llava
from tinyvlm.errors import InputError
from tinyvlm.eval import report
from tinyvlm.eval.cache import PredictionCache, digest, model_fingerprint
from tinyvlm.eval.formats import (
    FORMATS,
    Benchmark,
    Item,
    LoadContext,
    load_benchmark,
    score_benchmark,
    split_spec,
)
from tinyvlm.eval.prompts import Template, load_template
from tinyvlm.eval.scorers import capabilities
from tinyvlm.infer import Engine, Prompt, Sampling
from tinyvlm.io import write_jsonl
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.rundir import RunDir


@dataclass
class BenchPrompt(Prompt):
    text: str = ""  # the rendered user message, for the log
    key: str = ""  # hash of ids and images: a cached output counts only for the same prompt


def build_prompts(engine: Engine, bench: Benchmark, template: Template,
                  max_new_tokens: int) -> list[BenchPrompt]:
    """Render and tokenize every item; reject prompts that cannot fit or mismatch images."""
    limit = engine.max_seq_len
    prompts = []
    for item in bench.items:
        text = template.render(item.fields())
        encoded = engine.encode(item.history, text, item.images)
        ids = encoded.ids
        placeholders = count_images([text, *(u for u, _ in item.history)])
        if placeholders != len(item.images):
            raise InputError(f"item {item.id}: the prompt has {placeholders} <image> "
                             f"placeholders for {len(item.images)} images (template "
                             f"{template.source})", bench.path)
        if len(ids) + max_new_tokens > limit:
            raise InputError(f"item {item.id}: {len(ids)} prompt tokens + {max_new_tokens} new "
                             f"tokens exceed the model's max_seq_len {limit}", bench.path)
        # Resolved image paths: the same item keys the same entry from any working directory.
        key = digest(ids, [str(p.resolve()) for p in item.images])
        prompts.append(BenchPrompt(ids, item.images, encoded.extra, text, key))
    return prompts


@dataclass
class BenchmarkRun:
    bench: Benchmark
    samples: list[dict[str, Any]]
    computed: int  # items decoded now (the rest came from the cache)
    result: dict[str, Any] | None  # the scorer's output
    answers: Path | None  # the official-layout prediction file or directory


def run_benchmark(engine: Engine, bench: Benchmark, run: RunDir, name: str, model_fp: str,
                  template: Template, max_new_tokens: int, progress: bool = True,
                  runtime: Any = None) -> BenchmarkRun | None:
    """Every item of `bench`: from the cache when done before, else decoded and cached.

    With several processes (a runtime with world_size > 1) each decodes its share of the
    items into its own cache file; after a barrier the main process merges them into the
    cache and scores, and the others return None."""
    prompts = build_prompts(engine, bench, template, max_new_tokens)
    fp = digest(model_fp, max_new_tokens)
    cache = PredictionCache(run.cache_file(name, bench.name), fp)
    world = getattr(runtime, "world_size", 1)
    if world > 1:
        _decode_share(engine, bench, run, name, fp, prompts, max_new_tokens, runtime,
                      progress)
        if not run.is_main:
            return None
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
        engine.generate([prompts[i] for i in todo], Sampling(max_new_tokens),
                        on_batch=on_batch, progress=progress)
    samples = [sample_record(bench, item, prompt, *outputs[i], max_new_tokens)
               for i, (item, prompt) in enumerate(zip(bench.items, prompts, strict=True))]
    result, answers = score_benchmark(bench, samples, run.answers_dir(name, bench.name))
    return BenchmarkRun(bench, samples, len(todo), result, answers)


def _decode_share(engine: Engine, bench: Benchmark, run: RunDir, name: str, fp: str,
                  prompts: list[BenchPrompt], max_new_tokens: int, runtime: Any,
                  progress: bool) -> None:
    """This process's share of the items not cached yet, decoded into its own cache file;
    the main process then merges every share into the benchmark's cache."""
    main = PredictionCache(run.cache_file(name, bench.name), fp)
    if run.is_main:
        main.load()  # repairs a torn last line before the others read
    runtime.barrier()
    done = main.load(repair=False)
    todo = [i for i, (item, prompt) in enumerate(zip(bench.items, prompts, strict=True))
            if (hit := done.get(item.id)) is None or hit.get("prompt_hash") != prompt.key]
    mine = todo[runtime.rank :: runtime.world_size]
    share = PredictionCache(rank_cache(run, name, bench.name, runtime.rank), fp)

    def on_batch(chunk: list[int], texts: list[str], seconds: float) -> None:
        per_item = seconds / len(chunk)
        share.append({"id": bench.items[mine[j]].id, "prompt_hash": prompts[mine[j]].key,
                      "output": t, "seconds": per_item} for j, t in zip(chunk, texts,
                                                                        strict=True))

    if mine:
        engine.generate([prompts[i] for i in mine], Sampling(max_new_tokens),
                        on_batch=on_batch, progress=progress and run.is_main)
    runtime.barrier()
    if run.is_main:
        for rank in range(runtime.world_size):
            path = rank_cache(run, name, bench.name, rank)
            if path.is_file():
                main.append(PredictionCache(path, fp).load().values())
                path.unlink()
    runtime.barrier()


def rank_cache(run: RunDir, name: str, bench: str, rank: int) -> Path:
    """One process's share of a distributed evaluation, before the merge."""
    path = run.cache_file(name, bench)
    return path.with_name(f"{path.stem}.rank-{rank}{path.suffix}")


def sample_record(bench: Benchmark, item: Item, prompt: BenchPrompt, prediction: str,
                  seconds: float, max_new_tokens: int) -> dict[str, Any]:
    """One logged sample; LLaVA items keep the keys the capability scorer reads."""
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


def load_benchmarks(files: Sequence[str | Path], run: RunDir,
                    image_root: str | Path | None = None) -> list[Benchmark]:
    """Every benchmark file, with names (which key cache and answer files) made distinct."""
    ctx = LoadContext(None if image_root is None else Path(image_root), run.embedded_images)
    resolved = [str(split_spec(str(f))[1].resolve()) for f in files]
    twice = next((f for i, f in enumerate(resolved) if f in resolved[:i]), None)
    if twice is not None:
        raise InputError("this benchmark file is given twice", twice)
    benches = [load_benchmark(f, ctx) for f in files]
    seen: dict[str, int] = {}
    for bench in benches:
        seen[bench.name] = seen.get(bench.name, 0) + 1
        if seen[bench.name] > 1:
            bench.alias = f"{bench.name}-{seen[bench.name]}"
    return benches


def evaluate(model: Any, files: Sequence[str | Path], out_dir: str | Path, name: str,
             batch_size: int = 128, max_new_tokens: int | None = None, progress: bool = True,
             image_root: str | Path | None = None, templates: str | Path | None = None,
             runtime: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every benchmark file through run_benchmark; writes predictions/<name>.jsonl.

    Returns the summary (the capability scorer over LLaVA-format samples, plus "benchmarks":
    each file's scorer result, and timing) and every sample. max_new_tokens None: each
    benchmark template's own.
    """
    run = RunDir(out_dir, is_main=getattr(runtime, "is_main", True))
    predictions = run.predictions(name)  # checks the name before any work
    if run.root.exists() and not run.root.is_dir():
        raise InputError("the output directory is a file", run.root)
    if max_new_tokens is not None:
        Sampling(max_new_tokens)  # one clear line for a value out of range
    benches = load_benchmarks(files, run, image_root)
    engine, fingerprint = engine_for(model, batch_size)
    runs = []
    tick = time.perf_counter()
    for bench in benches:
        template = load_template(FORMATS[bench.kind].PROMPT, templates)
        tokens = template.max_new_tokens if max_new_tokens is None else max_new_tokens
        runs.append(run_benchmark(engine, bench, run, name, fingerprint, template,
                                  tokens, progress, runtime))
    seconds = time.perf_counter() - tick
    if not run.is_main:  # another process of a distributed evaluation: the main one reports
        return {}, []
    samples = [s for r in runs for s in r.samples]
    write_jsonl(predictions, samples)
    summary = capabilities.summarize(s for s in samples if s["format"] == "llava")
    runs = [r for r in runs if r is not None]
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
            "result": FORMATS["pope"].score_splits(pope)}
    summary["seconds"] = seconds
    summary["computed"] = sum(r.computed for r in runs)
    return summary, samples


def engine_for(model: Any, batch_size: int) -> tuple[Engine, str]:
    """The inference engine of a model (a TinyVLM, or an adapter that brings its own) and
    the fingerprint its cached predictions are keyed by."""
    if isinstance(model, TinyVLM):
        return Engine(model, batch_size), model_fingerprint(model)
    return model.engine(batch_size), model.fingerprint()


def efficiency_keys(model: TinyVLM, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Analytic cost at this run's mean prompt length, and the mean latency per sample.

    The KV cache is one sample's: its prompt plus its max_new_tokens (means over samples), in
    the weights' dtype. Latency is each batch's generation time shared among its samples
    (cached samples keep the time measured when they were computed).
    """
    n = len(samples)
    if not n:
        return {}
    prompt = round(sum(s["prompt_tokens"] for s in samples) / n)
    kv_len = round(sum(s["prompt_tokens"] + s["max_new_tokens"] for s in samples) / n)
    dtype = next(model.parameters()).dtype
    acct = cost.efficiency(model.config, prompt, kv_len=kv_len, dtype=dtype)
    acct["params_by_module"] = acct.pop("params")
    for key in ("total_params", "activated_params"):  # the row has them already
        acct.pop(key)
    latency = sum(s["seconds"] for s in samples) / n
    return {**acct, "latency_ms_per_sample": 1000 * latency}


def evaluate_models(models: Mapping[str, Any], files: Sequence[Path | str], out_dir: Path,
                    train_file: Path | None, batch_size: int = 128,
                    max_new_tokens: int | None = None, progress: bool = True,
                    image_root: Path | None = None, templates: Path | None = None,
                    runtime: Any = None) -> dict[str, Any]:
    """Every model on every file, beside the majority-answer baseline; writes the report."""
    rows, samples = [], []
    for name, model in models.items():
        native = isinstance(model, TinyVLM)
        device = next(model.parameters()).device if native else model.device
        with PeakMemory(device) as memory:
            summary, samples = evaluate(model, files, out_dir, name, batch_size, max_new_tokens,
                                        progress, image_root, templates, runtime)
        if not getattr(runtime, "is_main", True):
            continue
        # A model run by another library has no analytic cost: its activated parameters are
        # reported as its total.
        activated = (cost.parameter_split(model.config).activated if native
                     else model.num_parameters())
        extra = (efficiency_keys(model, samples) if native else {}) | memory.result()
        rows.append(report.model_row(name, model.num_parameters(), activated, summary,
                                     **extra))
    if not getattr(runtime, "is_main", True):
        return {}
    baseline = None
    llava = [s for s in samples if s["format"] == "llava"]
    if train_file is not None and llava:
        prior = capabilities.majority_baseline(training_pairs(train_file), llava)
        with warnings.catch_warnings():
            # A prior that never answers "yes" has no POPE precision; that is expected here.
            warnings.simplefilter("ignore", capabilities.UndefinedMetricWarning)
            baseline = capabilities.summarize(prior)
    results = report.build_results(rows, baseline)
    report.write_report(results, out_dir)
    return results
