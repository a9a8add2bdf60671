"""Shared helpers for the benchmark scripts: arguments, environment, timing, the demo model.

Benchmarks print one JSON document to stdout; progress and human-readable text go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import tinyvlm
from tinyvlm.config import Recipe, load_recipe
from tinyvlm.cpu_share import machine_busy_seconds
from tinyvlm.data import shapes
from tinyvlm.data.llava import conversation_texts, load_llava
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.models.vlm import TinyVLM

DEMO_RECIPE = Path(tinyvlm.__file__).parent / "recipes" / "demo.yaml"


def log(*parts: Any) -> None:
    """Progress text: stderr, so stdout stays one JSON document."""
    print(*parts, file=sys.stderr, flush=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repeats: checks that the script works",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads [default: torch's default]",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per configuration (the median is reported)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs per configuration before timing"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", type=Path, default=None, help="also write the JSON to this file"
    )
    return parser


def setup_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(threads)


def environment() -> dict[str, Any]:
    """What the figures depend on: library versions, threads, CPU."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tinyvlm": tinyvlm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkldnn_bf16": _mkldnn_bf16(),
        # Other processes on the machine make figures noisy: the 1/5/15-minute load average
        # at the start of the run says whether the CPU was shared.
        "load_average_at_start": load,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mkldnn_bf16() -> bool | None:
    fn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(fn()) if fn is not None else None
    except Exception:  # an op missing from a build is not worth failing over
        return None


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median (the reported figure) and spread of repeated timings, in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "p25_ms": q[0],
        "p75_ms": q[2],
        "runs": len(ms),
    }


class LoadMeter:
    """CPU time the rest of the machine used while a benchmark ran (from /proc/stat).

    Another busy process on a 2-core machine makes every figure noisy, and with torch's
    threads on every core it slows parallel ops a lot (threads wait for each other at every
    barrier); the report says how many cores others used, so a reader can judge.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        times = os.times()
        return time.monotonic(), _busy_seconds(), times.user + times.system

    def report(self) -> dict[str, Any]:
        wall0, busy0, ours0 = self.start
        wall1, busy1, ours1 = self._sample()
        wall, ours = wall1 - wall0, ours1 - ours0
        out: dict[str, Any] = {"wall_s": round(wall, 1), "this_process_cpu_s": round(ours, 1)}
        if busy0 is not None and busy1 is not None and wall > 0:
            other = max(0.0, (busy1 - busy0) - ours)
            out.update(
                other_processes_cpu_s=round(other, 1), other_processes_cores=round(other / wall, 2)
            )
            if other / wall > 0.2:
                log(
                    f"warning: other processes used {other / wall:.2f} cores on average during "
                    "this run: the figures are noisy (rerun on an idle machine, or compare "
                    "runs with --threads 1)"
                )
        with contextlib.suppress(OSError):
            out["load_average_at_end"] = list(os.getloadavg())
        return out


def _busy_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine since boot, all cores together."""
    return machine_busy_seconds()


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def emit(result: dict[str, Any], output: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


# --------------------------------------------------------------------------- the demo model


@dataclass
class Demo:
    recipe: Recipe
    data_dir: Path
    tokenizer: Tokenizer


def make_demo(directory: Path, num_train: int, num_test: int, seed: int = 0) -> Demo:
    """The demo recipe with a small ShapesWorld written to `directory` and a tokenizer trained
    on its training text, as the pipeline does for the real run."""
    recipe = load_recipe(DEMO_RECIPE)
    world = dataclasses.replace(recipe.data.shapes or shapes.ShapesWorldConfig(),
                                num_train=num_train, num_val=0, num_test=num_test,
                                pope_images=0, seed=seed)
    recipe.data.path = str(directory)
    recipe.data.shapes = world
    shapes.write_dataset(directory, world)
    texts = conversation_texts(load_llava(directory / recipe.data.train))
    tokenizer = Tokenizer.train(texts, recipe.tokenizer, recipe.model.chat)
    return Demo(recipe, directory, tokenizer)


def build_model(demo: Demo, seed: int) -> TinyVLM:
    """A freshly initialised model from the demo recipe's model config."""
    torch.manual_seed(seed)
    return TinyVLM.from_tokenizer(copy.deepcopy(demo.recipe.model), demo.tokenizer)
