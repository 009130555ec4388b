"""Stopping a run cleanly on SIGTERM (schedulers, preemption) or SIGINT (Ctrl-C): finish the step, save, exit.

    with StopSignals() as stop:
        while training:
            step()
            if stop.requested:            # the signal's number, or None
                save_checkpoint(); break

The first signal only sets `requested`; the loop finishes the step it is in, writes a checkpoint and returns,
and the command exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a shell expects.
A second signal gives up at once: SIGINT raises `KeyboardInterrupt`, SIGTERM exits 143 (checkpoints are
atomic, so an interrupted save leaves the previous one whole). Outside the main thread (where Python cannot
install handlers) the context does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop after the current step (see the module docstring)."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second signal: stop now
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            sys.exit(128 + signum)
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str | None:
        """`SIGTERM` / `SIGINT` once a signal came, else None."""
        return signal.Signals(self.requested).name if self.requested is not None else None


__all__ = ["StopSignals", "SIGNALS"]
