"""Opening a file that a submission or a worker could have written, from the grader's side (often root).

The one rule: never through a link, never blocking on a FIFO, only a regular file, never more than a bound.

    fd = open_regular(path)                      # O_NOFOLLOW | O_NONBLOCK, then fstat: a regular file
    data = read_regular(path, limit=1 << 20)     # its bytes, refused past the limit
    text = read_tail(workspace, ".worker.log", owners={0, 200123}, limit=3000)   # b"" when anything is off

A path-based fallback (`shutil.copyfile`, `Path.read_bytes`) would follow exactly the link these refuse.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if chr(c) not in "\n\t"}


def printable(text: str) -> str:
    """`text` with its control characters spelled out (a student's message can hold terminal escapes that
    would repaint a TA's table): newlines and tabs stay.

    >>> printable("ok\\x1b[2Jdone\\n")
    'ok\\\\x1b[2Jdone\\n'
    """
    return text.translate(_CONTROLS)


class UntrustedFileError(OSError):
    """The file is not a regular file (a link, a FIFO, a device...), or larger than allowed."""


def kind_of(path: str | os.PathLike[str], dir_fd: int | None = None) -> str:
    """'a symbolic link', 'a FIFO', ... for what `path` names without following it; '' for a regular file."""
    try:
        mode = os.lstat(path, dir_fd=dir_fd).st_mode
    except OSError:
        return ""
    return "" if stat.S_ISREG(mode) else KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None, follow_last: bool = False) -> int:
    """A read-only descriptor of the regular file `path` (its last component no link unless `follow_last`).

    Raises UntrustedFileError naming what `path` is instead, or OSError (missing, no permission).
    """
    flags = _FLAGS & ~os.O_NOFOLLOW if follow_last else _FLAGS
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        kind = kind_of(path, dir_fd)
        if kind:
            raise UntrustedFileError(e.errno, f"{os.fspath(path)} is {kind}") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UntrustedFileError(f"{os.fspath(path)} is {KINDS.get(stat.S_IFMT(mode), 'not a regular file')}")
    return fd


def read_regular(path: str | os.PathLike[str], limit: int, *, dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file `path`; UntrustedFileError when it holds more than `limit`."""
    with os.fdopen(open_regular(path, dir_fd=dir_fd), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UntrustedFileError(f"{os.fspath(path)} is larger than {limit} bytes")
    return data


def read_tail(directory: Path | None, name: str, owners: set[int | None], limit: int) -> bytes:
    """The last `limit` bytes of `directory/name` if it is a regular file with one link, owned by one of
    `owners`; else nothing. `directory` itself must not be a link either."""
    if directory is None:
        return b""
    try:
        top = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = open_regular(name, dir_fd=top)
        finally:
            os.close(top)
        try:
            info = os.fstat(fd)
            if info.st_nlink != 1 or info.st_uid not in owners:
                return b""
            return os.pread(fd, limit, max(0, info.st_size - limit))
        finally:
            os.close(fd)
    except OSError:
        return b""


def open_dir(parent: Path, name: str) -> int:
    """A descriptor of the directory `parent/name`, refusing a link at either step (OSError)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    top = os.open(parent, flags)
    try:
        return os.open(name, flags, dir_fd=top)
    finally:
        os.close(top)
