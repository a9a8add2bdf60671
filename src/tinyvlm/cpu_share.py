"""Sharing the CPU with other processes: torch's intra-op threads follow the cores left free.

With one thread per core and another busy process on the machine, every parallel op waits
at its barrier for a thread the scheduler has put aside, and a training step gets many times
slower than its share of the cores explains (measured on 2 cores beside a second training
process: 21% of the idle speed with 2 threads, 65% with 1). `CpuShare.tick()`, called once
per step by the training loop and the inference engine, reads how much CPU the rest of the
machine used since its last reading (/proc/stat minus this process's own time) and sets the
thread count to the cores the others leave, between 1 and the count it started with; it
goes back up once the others are quiet again.

Off when the machine cannot say (no /proc/stat), on a GPU, when the threads are pinned
(`pin_threads`, a recipe's `threads`), or with TINYVLM_CPU_SHARE=0. A changed thread count
can change float results in the last bits (reductions split differently), so a run that
must repeat bit for bit pins its threads.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

INTERVAL_S = 1.0  # between readings: /proc/stat costs ~20 us, a step 10-1000 ms
BUSY = 0.3  # cores the others must use before a thread is given up
QUIET = 0.15  # and below which it is taken back (hysteresis: no flapping)


_pinned = False


def pin_threads(threads: int) -> None:
    """Set torch's intra-op threads for good: CPU sharing leaves them alone from now on."""
    global _pinned
    torch.set_num_threads(threads)
    _pinned = True


def pinned() -> bool:
    return _pinned


def machine_busy_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine since boot, all cores together."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuShare:
    """Adjusts torch's thread count to the cores other processes leave free."""

    def __init__(self, enabled: bool = True, max_threads: int | None = None,
                 cores: int | None = None, clock: Callable[[], float] = time.monotonic,
                 machine: Callable[[], float | None] = machine_busy_seconds,
                 own: Callable[[], float] = own_seconds,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.max_threads = max_threads or torch.get_num_threads()
        self.threads = self.max_threads
        self.clock, self.machine, self.own, self.set_threads = clock, machine, own, set_threads
        self.cores = cores or usable_cores()  # those this process may run on
        self.enabled = (enabled and not _pinned
                        and os.environ.get("TINYVLM_CPU_SHARE", "1") != "0"
                        and self.max_threads > 1 and machine() is not None)
        self._last = self._reading() if self.enabled else None
        self.others = 0.0  # cores the rest of the machine used in the last interval
        self._quiet = 0

    def _reading(self) -> tuple[float, float, float]:
        return self.clock(), self.machine() or 0.0, self.own()

    def tick(self) -> int:
        """Take a reading when the interval has passed and set the threads; return them."""
        if not self.enabled or self._last is None:
            return self.threads
        now = self._reading()
        wall = now[0] - self._last[0]
        if wall < INTERVAL_S:
            return self.threads
        others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self._last, self.others = now, others
        if others > BUSY:  # the cores this process may use, less those the others took
            want = max(1, min(self.max_threads, self.cores - math.ceil(others - BUSY)))
            self._quiet = 0
        elif others < QUIET:
            self._quiet += 1  # two quiet readings in a row before threads come back
            want = self.max_threads if self._quiet >= 2 else self.threads
        else:
            want, self._quiet = self.threads, 0
        if want != self.threads:
            self.threads = want
            self.set_threads(want)
        return self.threads

    def restore(self) -> None:
        """The thread count it started with (at the end of a stage)."""
        if self.enabled and self.threads != self.max_threads:
            self.threads = self.max_threads
            self.set_threads(self.max_threads)


@contextmanager
def share_restored(share: CpuShare) -> Iterator[CpuShare]:
    """`share`, with its starting thread count restored afterwards."""
    try:
        yield share
    finally:
        share.restore()
