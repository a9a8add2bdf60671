"""A busy machine: training steps/s of the one loop (`train_stage`, demo model, SFT, batch
16) alone, then beside a second CPU-heavy process (a torch matmul loop on every core, at
normal priority and niced), with the loop's CPU sharing off (TINYVLM_CPU_SHARE=0: torch's
threads stay one per core) and on (tinyvlm.cpu_share: threads follow the cores the other
process leaves). Reported: each steps/s as a share of the idle speed; on 2 cores one of
them is the fair share."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import build_model, log, make_demo
from tinyvlm.config import StageConfig
from tinyvlm.train.loop import train_stage
from tinyvlm.train.objectives import build_objective

COMPETITOR = """
import torch, time
a = torch.randn(1024, 1024)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    a @ a
"""


def steps_per_s(demo: Any, root: Path, steps: int, share: bool) -> float:
    os.environ["TINYVLM_CPU_SHARE"] = "1" if share else "0"
    model = build_model(demo, 0)
    stage = StageConfig(name="sft", objective="sft", steps=steps, batch_size=16,
                        log_every=steps, checkpoint_every=0, keep_checkpoints=1)
    objective = build_objective("sft", model, stage)
    data = objective.data(model, demo.recipe.data, stage)
    start = time.perf_counter()
    rows = train_stage(model, stage, objective, data, root / f"run-{time.time_ns()}",
                       progress=False)
    assert rows
    return steps / (time.perf_counter() - start)


def run(quick: bool = False) -> dict[str, Any]:
    steps = 6 if quick else 30
    threads = torch.get_num_threads()
    out: dict[str, Any] = {"steps": steps, "threads": threads, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo(Path(tmp) / "data", 200, 8)
        out["idle"] = steps_per_s(demo, Path(tmp), steps, share=True)
        rows = []
        for nice in (0, 19):
            for share in (False, True):
                competitor = subprocess.Popen(
                    ["nice", "-n", str(nice), sys.executable, "-c",
                     COMPETITOR.format(seconds=600)], stdout=subprocess.DEVNULL)
                try:
                    time.sleep(1.0)
                    rate = steps_per_s(demo, Path(tmp), steps, share)
                finally:
                    competitor.kill()
                    competitor.wait()
                rows.append({"competitor_nice": nice, "cpu_share": share,
                             "steps_per_s": rate, "share_of_idle": rate / out["idle"]})
                log(f"busy: nice {nice}, cpu_share {share}: {rate:.2f} steps/s "
                    f"({rate / out['idle']:.0%} of idle {out['idle']:.2f})")
        out["busy"] = rows
    os.environ.pop("TINYVLM_CPU_SHARE", None)
    torch.set_num_threads(threads)
    return out
