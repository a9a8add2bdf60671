"""Progress of long work: a tqdm bar on a terminal; elsewhere (CI, nohup, a log file) one plain
line every few seconds with the count, the rate and the time left, never a redrawn bar."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm

INTERVAL = float(os.environ.get("TINYVLM_PROGRESS_SECONDS", "10"))


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0,
                 enabled: bool = True, leave: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.n, self.start_n = initial, initial
        self.enabled = enabled
        self.postfix = ""
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                            dynamic_ncols=True, leave=leave)
        self.started = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.last >= INTERVAL:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.n > self.start_n:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self.last = now
        done = self.n - self.start_n
        rate = done / (now - self.started) if now > self.started else 0.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        pct = 100 * self.n / self.total if self.total else 100.0
        eta = "" if left != left else f", ETA {_clock(left)}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%), {rate:.2f} "
              f"{self.unit}/s{eta}{extra}", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
