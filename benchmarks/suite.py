"""`make bench`: the performance suite. Runs every section side by side on this machine,
writes one JSON file (docs/performance.json) and regenerates docs/performance.md with its
tables and PNG plots (docs/img/perf-*.png).

    .venv/bin/python benchmarks/suite.py            # the whole suite (~6 min on 2 cores)
    .venv/bin/python benchmarks/suite.py --quick    # every section at small sizes (~1 min)
    .venv/bin/python benchmarks/suite.py --render   # docs from the existing JSON only

Sections: the machine's limits (GEMM GFLOP/s, copy bandwidth), the MoE layer grid, generation
against transformers' generate(), training steps (MFU, profile, distillation, evaluation), a
busy machine, and scaling. Each records the load other processes put on the machine while
it ran; figures from a shared machine are marked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import LoadMeter, environment, log

ROOT = Path(__file__).resolve().parent.parent
JSON = ROOT / "docs" / "performance.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the suite")
    parser.add_argument("--render", action="store_true", help="only rewrite the docs")
    parser.add_argument("--output", type=Path, default=JSON)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run these sections, keep the others from the JSON")
    args = parser.parse_args()
    from perf_report import render

    if args.render:
        render(json.loads(args.output.read_text()), args.docs)
        return
    results: dict[str, Any] = (json.loads(args.output.read_text())
                               if args.only and args.output.is_file() else {})
    results.update(environment=environment(), quick=args.quick)
    sections = run_sections(args.quick, args.only, results)
    results.update(sections)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    render(results, args.docs)
    log(f"wrote {args.output} and {args.docs / 'performance.md'}")


def run_sections(quick: bool, only: list[str] | None, earlier: dict[str, Any]
                 ) -> dict[str, Any]:
    import bench_busy
    import bench_generate_hf
    import bench_limit
    import bench_moe_grid
    import bench_scaling
    import bench_train_mfu

    out: dict[str, Any] = {}

    def section(name: str, fn: Any) -> None:
        if only and name not in only:
            return
        log(f"== {name}")
        meter, start = LoadMeter(), time.perf_counter()
        out[name] = {**fn(), "load": meter.report(),
                     "seconds": round(time.perf_counter() - start, 1)}

    threads = torch.get_num_threads()
    section("limit", lambda: bench_limit.run(quick))
    peak = (out.get("limit") or earlier["limit"])["peak_gflops"]
    section("moe", lambda: bench_moe_grid.run(quick))
    section("generate", lambda: bench_generate_hf.run(quick))
    section("train", lambda: bench_train_mfu.run(peak, quick))
    section("busy", lambda: bench_busy.run(quick))
    torch.set_num_threads(threads)
    section("scaling", lambda: bench_scaling.run(quick))  # last: it changes malloc's settings
    return out


if __name__ == "__main__":
    main()
