"""Atomic file writes: a reader sees either the old file or the whole new one, never half of it.

The trick is the usual one: write a temporary file in the same directory (so that it lies on the same file
system), then `os.replace` it onto the target, which POSIX and Windows both do in one step. If anything fails
before the rename, the temporary file is deleted and the old file is left exactly as it was.

    atomic_write_text(out_dir / "config.json", json.dumps(config) + "\\n")
    with atomic_open(out_dir / "train.txt") as f:      # for output written piece by piece
        for story in stories:
            f.write(story)

NOTE: the temporary file comes from `tempfile.mkstemp`, so the new file gets mode 0600 (owner only), not the
0644 that `open` would give; `checkpoint.py` writes its own temporary file for that reason.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`, else it is removed.

    `mode` is "w" (text, UTF-8 unless `encoding=` says otherwise) or "wb"; `open_kwargs` go to `open`.
    The parent directory is created if needed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "sub" / "hello.txt"
    >>> atomic_write_text(target, "héllo\\n")
    >>> target.read_text(encoding="utf-8")
    'héllo\\n'
    """
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text"]
