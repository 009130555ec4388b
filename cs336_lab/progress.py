"""Progress that suits where stderr goes: a tqdm bar on a terminal, plain log lines when it is redirected.

    with progress(total=len(windows), desc="evaluate", unit="window") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

A bar redraws its line with ``\\r``, which fills a log file with half-lines; so when stderr is not a terminal,
`progress` logs one line at the start, one every `LOG_EVERY_S` seconds and one at the end instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)

LOG_EVERY_S = 30.0  # seconds between the plain lines of a redirected stderr


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (where a redrawn bar belongs)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class LogProgress:
    """The `update`/`close` of a tqdm bar, as a log line at the start, every `every_s` seconds, and at the end."""

    def __init__(self, total: int, desc: str, unit: str, *, every_s: float = LOG_EVERY_S, scale: float = 1.0) -> None:
        self.total, self.desc, self.unit, self.every_s, self.scale = total, desc, unit, every_s, scale
        self.count = 0
        self.start = self.last = time.perf_counter()
        self.closed = False
        logger.info("%s: %s %s to do", desc, self._amount(total), unit)

    def _amount(self, n: float) -> str:
        return f"{n / self.scale:,.1f}" if self.scale != 1.0 else f"{int(n):,}"

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.count < self.total:
            self.last = now
            share = f" ({self.count / self.total:.0%})" if self.total else ""
            logger.info(
                "%s: %s of %s %s%s", self.desc, self._amount(self.count), self._amount(self.total), self.unit, share
            )

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            elapsed = time.perf_counter() - self.start
            logger.info("%s: %s %s done in %.1f s", self.desc, self._amount(self.count), self.unit, elapsed)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent:
    """No progress at all (`--no-progress`)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(total: int, desc: str, unit: str, *, enabled: bool = True, unit_scale: bool = False) -> Any:
    """A tqdm bar on a terminal, `LogProgress` when stderr is redirected, nothing when not `enabled`.

    ``unit_scale`` (counts of bytes): the bar shows kB/MB, the log lines MB.
    """
    if not enabled:
        return _Silent()
    if not on_terminal():
        return LogProgress(total, desc, "MB" if unit_scale else unit, scale=1e6 if unit_scale else 1.0)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, dynamic_ncols=True)


__all__ = ["LOG_EVERY_S", "LogProgress", "on_terminal", "progress"]
