"""How many CPU threads torch should use here and now: one, or all the cores we may use, whichever is faster.

    with cpu_threads(None):          # times both, keeps the faster, restores the old count afterwards
        train(config)

`cs336 demo` trains and samples inside `cpu_threads(config.threads)`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator

logger = logging.getLogger(__name__)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fastest_thread_count(max_threads: int | None = None, repeats: int = 10) -> int:
    """1 or ``max_threads`` (default: the cores we may use), whichever multiplies small matrices faster now.

    NOTE: on a busy machine, torch's intra-op threads wait for each other and a training step with 2 threads on
    2 shared cores was measured 4-10x slower than with 1; on an idle machine 2 threads are ~1.5x faster.
    """
    import torch

    if max_threads is None:
        max_threads = usable_cores()
    if max_threads <= 1:
        return 1
    previous = torch.get_num_threads()
    a, w = torch.randn(2048, 128), torch.randn(384, 128)
    seconds = {}
    try:
        for n in (max_threads, 1, max_threads, 1):  # interleaved, best of two: less sensitive to a passing burst
            torch.set_num_threads(n)
            a @ w.T  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                a @ w.T
            seconds[n] = min(seconds.get(n, math.inf), time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(seconds, key=lambda n: (seconds[n], n))


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (default: ``fastest_thread_count()``), then restore the old count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or fastest_thread_count())
    logger.info("using %d CPU thread(s)", torch.get_num_threads())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = ["usable_cores", "fastest_thread_count", "cpu_threads"]
