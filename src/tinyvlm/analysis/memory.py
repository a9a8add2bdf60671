"""Peak memory of a block of work, measured the way that is right for the device (the
measured cost; analysis.cost computes the analytic one).

CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak: every tensor the
allocator held at the worst moment (weights included). CPU: tracemalloc does not see torch's
allocations, so we read the process's peak resident set size (``ru_maxrss``) before and
after: the growth is what this work added on top of everything already resident; it is 0
when an earlier phase of the same process (e.g. training) had peaked higher.
"""

from __future__ import annotations

import resource
import sys
from types import TracebackType
from typing import Any


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.result()``."""

    def __init__(self, device: Any = "cpu"):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.start = 0
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.start = peak_rss_bytes()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = peak_rss_bytes() - self.start

    def result(self) -> dict[str, Any]:
        method = "cuda.max_memory_allocated" if self.cuda else "ru_maxrss_delta"
        out: dict[str, Any] = {"peak_memory_bytes": self.peak, "peak_memory_method": method}
        if not self.cuda:
            out["peak_rss_bytes"] = peak_rss_bytes()
        return out
