"""How the `cs336` command fails: exit codes, the errors that mean bad input, and the extras a command needs.

A leaf module (standard library only), so that the command modules and `cs336_lab/cli.py` share it without
importing each other. Exit codes: 0 success, 1 failure (e.g. the network, a diverged run), 2 usage error, bad
input or a missing extra, reported in one line without a traceback (`-v` shows it). `describe_file` and
`utf8_error` say what came instead of what was expected: what a file looks like, where its bad UTF-8 lies.
"""

from __future__ import annotations

import codecs
import importlib.util
import os

# Bad input: exit code 2 with one line. The OS errors of a path of the wrong kind are the user's too.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)

DISTRIBUTION = "cs336-basics"
# The optional dependencies of pyproject.toml that a command may need, by the modules they provide.
EXTRAS: dict[str, tuple[str, ...]] = {
    "grading": ("pytest", "pytest_timeout", "hypothesis", "tiktoken"),
    "wandb": ("wandb",),
}


def extra_of(module: str) -> str | None:
    """The extra that provides the top-level module `module`, or None (not an extra's).

    >>> extra_of("pytest"), extra_of("torch")
    ('grading', None)
    """
    top = module.split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    if extra not in EXTRAS:
        raise ValueError(f"expected one of the extras {sorted(EXTRAS)}, got {extra!r}")
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def needs_extra(command: str, extra: str) -> str:
    """The one line `cs336 COMMAND` prints when `extra` is not installed.

    >>> needs_extra("grade", "grading")
    "cs336 grade needs the 'grading' extra: pip install 'cs336-basics[grading]'"
    """
    return f"cs336 {command} needs the {extra!r} extra: pip install '{DISTRIBUTION}[{extra}]'"


def describe_file(path: str | os.PathLike[str], limit: int = 24) -> str:
    """What the file `path` looks like, for a message that says what came instead of what was expected.

    >>> import tempfile; f = tempfile.NamedTemporaryFile(suffix=".txt", delete=False); _ = f.write(b"Once upon"); f.close()
    >>> describe_file(f.name)
    "UTF-8 text of 9 bytes starting 'Once upon'"
    """
    with open(path, "rb") as f:
        head = f.read(max(limit, 512))
    size = os.path.getsize(path)
    if not head:
        return "an empty file"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return f"{kind} of {size} bytes"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # not merely a character cut at the end of what was read
            return f"binary data of {size} bytes starting {head[:limit]!r}"
        text = head[: error.start].decode("utf-8")
    return f"UTF-8 text of {size} bytes starting {text[:limit]!r}"


# File signatures worth naming when one file is given where another was expected.
_MAGIC = {
    b"\x93NUMPY": "a .npy array",
    b"PK\x03\x04": "a zip archive (a torch.save file is one)",
    b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8": "an old-style torch.save file",
    b"\x89PNG": "a PNG image",
}


def utf8_error(path: str | os.PathLike[str], error: UnicodeDecodeError) -> ValueError:
    """A ValueError naming `path` and the byte offset of its first invalid UTF-8 (`error` only tells the
    offset inside the block that a text reader decoded)."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as found:
                bad = block[found.start : found.end]
                return ValueError(
                    f"{os.fspath(path)} is not valid UTF-8: bytes {bad!r} at byte offset {offset + found.start} "
                    f"({found.reason}); expected a UTF-8 text file"
                )
            offset += len(block)
    return ValueError(f"{os.fspath(path)} is not valid UTF-8 ({error.reason}); expected a UTF-8 text file")
