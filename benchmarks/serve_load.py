"""The server under load: requests/s and latency percentiles of `tinyvlm serve` for many
concurrent clients against the same requests sent one at a time, side by side in one
process (a live server on a free localhost port, the real openai client).

Every request is answered exactly once and equals the engine's own answer (checked); the
ratio reported is `concurrent_speedup` = requests/s with N clients / requests/s with one.

    python benchmarks/serve_load.py [--requests 200 --clients 16] [--quick]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai

from common import LoadMeter, base_parser, emit, environment, log, ratio, setup_threads, summarize
from tinyvlm.infer import Sampling, answer
from tinyvlm.serve.app import create_app, running
from tinyvlm.serve.protocol import Limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_serve import ask, chatty_model, png  # noqa: E402 - the test's tiny model


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    setup_threads(args.threads)
    n = 24 if args.quick else args.requests
    meter = LoadMeter()
    model = chatty_model()
    app = create_app(model, "tiny", None, Limits(), max_batch=args.clients, window_s=0.01)
    server = running(app)
    url = server.__enter__()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    images = [png(i) for i in range(4)]
    questions = [(f"how many shapes? {'is there ' * (i % 3)}", i % 4) for i in range(n)]
    expected = {q: answer(model, q[0], [images[q[1]]], Sampling(args.max_tokens))
                for q in set(questions)}

    def one(q: tuple[str, int]) -> tuple[float, bool]:
        tick = time.perf_counter()
        reply = client.chat.completions.create(model="tiny", messages=ask(q[0], images[q[1]]),
                                               max_tokens=args.max_tokens)
        return time.perf_counter() - tick, reply.choices[0].message.content == expected[q]

    result = {}
    for label, clients in (("one_client", 1), ("concurrent", args.clients)):
        log(f"{label}: {n} requests from {clients} clients")
        batches = app.state.batcher.batches
        tick = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            out = list(pool.map(one, questions))
        wall = time.perf_counter() - tick
        wrong = sum(not ok for _, ok in out)
        if wrong or len(out) != n:
            raise SystemExit(f"{label}: {wrong} wrong answers, {n - len(out)} lost")
        lat = summarize([s for s, _ in out])
        result[label] = {"clients": clients, "requests": n, "requests_per_s": n / wall,
                         "p50_ms": lat["median_ms"],
                         "p95_ms": sorted(s for s, _ in out)[int(0.95 * (n - 1))] * 1e3,
                         "batches": app.state.batcher.batches - batches}
    server.__exit__(None, None, None)
    result["concurrent_speedup"] = ratio(result["concurrent"]["requests_per_s"],
                                         result["one_client"]["requests_per_s"])
    emit({"benchmark": "serve_load", "environment": environment(),
          "machine_load": meter.report(), **result}, args.output)


if __name__ == "__main__":
    main()
