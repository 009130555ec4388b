"""Memory of the process that runs student code, as the operating system reports it (Linux `/proc`).

    count, grown = peak_rss_growth(lambda: scenarios.run("count_encode_iterable", tokenizer, path))

Under `make test` that process is this one; under `cs336 grade` it is the sandboxed worker, and the grader
reads the worker's `/proc` entry from outside (the grader's plugin sets `WORKER_PID`): nothing the student's
code reports about itself (tracemalloc, psutil inside it) is believed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
WORKER_PID: Callable[[], int] | None = None  # set by the grader's plugin: the current worker's process id
# Set by the grader's plugin: () -> (reset, peak) in bytes for the worker and every process it started (its
# cgroup), or None where the host has none (then the worker's own /proc entry is read).
WORKER_MEMORY: Callable[[], tuple[Callable[[], int], Callable[[], int]] | None] | None = None


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def peak_rss_growth(call: Callable[[], T], release: Callable[[], object] | None = None) -> tuple[T, int]:
    """(what `call()` returned, bytes by which the peak resident memory exceeded the resident memory before).

    `release` runs first, where student code runs (`scenarios.run("release_free_memory")`): memory that earlier
    calls freed but the allocator kept would otherwise absorb growth. The peak is then reset
    (`/proc/PID/clear_refs`), so only what `call` held counts. Skips where `/proc` is not available (not Linux).
    """
    if release is not None:
        release()
    probe = None if WORKER_MEMORY is None else WORKER_MEMORY()
    if probe is not None:
        reset, peak = probe
        before = reset()
        result = call()
        return result, max(0, peak() - before)
    pid = os.getpid() if WORKER_PID is None else WORKER_PID()
    if not Path(f"/proc/{pid}/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure resident memory")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # "5": reset the peak resident set size
    before = _status_kib(pid, "VmRSS")
    result = call()
    pid = os.getpid() if WORKER_PID is None else WORKER_PID()  # NOTE: the call may have run in a new worker
    return result, max(0, _status_kib(pid, "VmHWM") - before) * 1024
