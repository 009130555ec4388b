"""Atomic, durable file writes: a reader sees either the old file or the whole new one, never half of it.

The trick is the usual one: write a temporary file in the same directory (so that it lies on the same file
system), flush it to the disk (`fsync`), then `os.replace` it onto the target, which POSIX and Windows both do
in one step, and finally `fsync` the directory so that the rename itself survives a power cut. If anything
fails before the rename, the temporary file is deleted and the old file is left exactly as it was.

    atomic_write_text(out_dir / "config.json", json.dumps(config) + "\\n")
    with atomic_open(out_dir / "train.txt") as f:      # for output written piece by piece
        for story in stories:
            f.write(story)

Temporary files are named `.NAME.<pid>.<random>.tmp` (hidden, and easy to sweep: `TEMP_GLOB`) and are created
with `O_CREAT | O_EXCL | O_NOFOLLOW`: never through a link someone planted, and with the usual permissions (0644
under the common umask, not mkstemp's 0600) unless `permissions=` says otherwise (0o600 for a secret). The final
rename replaces a link at the target instead of following it.
A process killed with SIGKILL (or by the OOM killer) mid-write cannot delete its temporary file; the next run
in that directory calls `sweep_temp_files`, which removes those whose writer is gone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

#: What every temporary file of this module looks like, for `Path.glob`.
TEMP_GLOB = ".*.tmp"


def temp_path(path: Path, suffix: str = ".tmp") -> Path:
    """A fresh temporary name beside `path` (same directory, so that the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # what `temp_path` makes


def process_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (this one, or another user's, included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files in `directory` that this module made for writers that no longer run.

    A temporary file names its writer's pid; one whose process is gone (killed mid-write) is debris, one
    whose pid is alive (this process, a concurrent writer, or an unrelated process that reused the pid) is
    kept. Returns the deleted paths. POSIX only (elsewhere nothing is deleted); pids are those of this
    machine, so do not share one output directory between writers on several hosts.
    """
    removed: list[Path] = []
    if os.name != "posix":
        return removed
    for path in Path(directory).glob(TEMP_GLOB):
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prepare_directory(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create the directory `path` (and its parents) for output; `ValueError` when a file stands in the way.

    `what` names the setting in the message, e.g. "--out-dir".
    """
    path = Path(path)
    for ancestor in (path, *path.parents):
        if ancestor.exists() and not ancestor.is_dir():
            where = "" if ancestor == path else f" (at {ancestor})"
            raise ValueError(f"{what} {path}: expected a directory, found a file{where}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a parent that cannot hold folders (/proc), no permission: name the setting
        raise type(err)(err.errno, f"{what} {path}: could not create it ({err.strerror})") from None
    return path


def commit(tmp: Path, path: Path, *, sync_file: bool = False) -> None:
    """Rename the finished `tmp` onto `path`, durably; `sync_file=True` first fsyncs `tmp` (its writer did not)."""
    if sync_file:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, permissions: int = 0o666, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`, else it is removed.

    `mode` is "w" (text, UTF-8 unless `encoding=` says otherwise) or "wb"; `open_kwargs` go to `open`.
    `permissions` are the new file's mode bits before the umask. The parent directory is created if needed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output file {path}: expected a file path, found a directory")
    prepare_directory(path.parent)
    tmp = temp_path(path)
    try:
        with os.fdopen(os.open(tmp, _CREATE, permissions), mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


def atomic_write_json(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 2) -> None:
    """Write `payload` as JSON (UTF-8, one trailing newline) to `path` atomically.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "state.json"
    >>> atomic_write_json(target, {"score": 1.5})
    >>> target.read_text(encoding="utf-8")
    '{\\n  "score": 1.5\\n}\\n'
    """
    atomic_write_text(path, json.dumps(payload, indent=indent) + "\n")


def atomic_save_figure(fig: Any, path: str | os.PathLike[str], *, close: bool = True, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure to `path` atomically, in the format its suffix names; then close it.

    NOTE: matplotlib picks the format from a file name's suffix; a file object has none, so it is passed.
    """
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, **savefig_kwargs)
    finally:
        if close:
            import matplotlib.pyplot as plt  # already imported by whoever drew `fig`

            plt.close(fig)


__all__ = [
    "atomic_open",
    "atomic_save_figure",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "commit",
    "fsync_directory",
    "prepare_directory",
    "process_alive",
    "sweep_temp_files",
    "temp_path",
    "TEMP_GLOB",
]
