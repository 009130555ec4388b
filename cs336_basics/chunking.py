"""Large files in parallel pieces: chunk boundaries that cannot change the pre-tokens, and worker processes.

    with open(path, "rb") as f:
        bounds = find_chunk_boundaries(f, 8, ["<|endoftext|>"])     # [0, ..., file_size]
    texts = [read_chunk_text(path, a, b) for a, b in zip(bounds[:-1], bounds[1:])]

A chunk ends at the start of a special token or between a non-space and a space (the rule of
`pretokenize.last_safe_cut`), so pre-tokenising the chunks one by one gives the pre-tokens of the whole file.
`train_bpe` counts the chunks in `worker_context()` processes; the tools' `encode_file` encodes them so.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import threading
from collections.abc import Sequence
from typing import Any, BinaryIO

import regex

# The same rule on raw bytes, restricted to ASCII so that a match is always a whole UTF-8 character.
_SAFE_CUT_BYTES = regex.compile(rb"[!-~][ \t\n\r]")


def default_workers() -> int:
    """Worker processes by default: the CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _NoProgress:
    """Stands in for a tqdm bar when none is wanted (creating a tqdm, even disabled, starts a thread)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(show: bool, **kwargs: Any) -> Any:
    """A tqdm progress bar with `kwargs` when `show`, else an object with the same `update`/`close`."""
    if not show:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context for the chunk workers of training and file encoding.

    "fork" when it is safe: it starts fast, sends nothing, and workers inherit the parent's state (a warm
    pre-token cache too). NOTE: forking a process that runs other Python threads (a progress bar's monitor,
    a data loader) can deadlock the child on a lock one of them held, so then we "spawn" fresh interpreters
    instead. Torch merely being imported is fine: its OpenMP pool is not a Python thread, and the workers
    run pure Python and `regex`, never a torch op (which is what could hang in a forked child).
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def find_chunk_boundaries(
    file: BinaryIO,
    desired_num_chunks: int,
    special_tokens: Sequence[str] = (),
    *,
    window: int = 1 << 16,
) -> list[int]:
    """Byte offsets `[0, ..., file_size]` that cut `file` into chunks safe to pre-tokenise separately.

    Each interior boundary is the first special token at or after an evenly spaced guess; when no special
    token follows within reach (or there are none), it is the first non-space/space pair instead (never
    inside a special token). Boundaries fall on ASCII characters, so every chunk is whole UTF-8. Fewer
    chunks than asked are returned when boundaries coincide (e.g. a file with no safe place to cut).
    """
    if desired_num_chunks < 1:
        raise ValueError(f"desired_num_chunks must be >= 1, got {desired_num_chunks}")
    file.seek(0, os.SEEK_END)
    file_size = file.tell()
    specials = [t.encode("utf-8") for t in special_tokens]
    longest = max((len(t) for t in specials), default=0)
    boundaries = [0]
    for i in range(1, desired_num_chunks):
        guess = max(file_size * i // desired_num_chunks, boundaries[-1])
        boundaries.append(_next_boundary(file, guess, file_size, specials, longest, window))
    boundaries.append(file_size)
    return sorted(set(boundaries))


def read_chunk_text(path: str | os.PathLike[str], start: int, end: int) -> str:
    """The bytes `[start, end)` of a file decoded as UTF-8 (one chunk from `find_chunk_boundaries`).

    Bad UTF-8 raises `ValueError` naming the offending bytes and their offset in the whole file, which is what
    a user needs to find them (the offset inside the chunk would mean nothing to them).
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{os.fspath(path)!r} is not valid UTF-8: bytes {data[e.start : e.end]!r} at offset {start + e.start} "
            f"({e.reason}); expected a UTF-8 text file"
        ) from None


def _next_boundary(
    file: BinaryIO, position: int, file_size: int, specials: list[bytes], longest: int, window: int
) -> int:
    """The first safe cut at or after `position` (see `find_chunk_boundaries`), or `file_size`."""
    # Read a little before `position` so that a special token straddling it is seen whole.
    overlap = max(longest - 1, 1)
    special_regex = regex.compile(b"|".join(regex.escape(t) for t in specials)) if specials else None
    start = max(position - overlap, 0)
    fallback = -1
    while start < file_size:
        file.seek(start)
        data = file.read(window + overlap)
        if special_regex is not None:
            for match in special_regex.finditer(data, max(position - start, 0)):
                # NOTE: with overlapping special tokens ("<s>" and "x<s>"), an occurrence may lie inside
                # another one; cutting there would break the longer token.
                if not _inside_special(file, start + match.start(), specials, longest):
                    return start + match.start()
        if fallback < 0:
            for match in _SAFE_CUT_BYTES.finditer(data, max(position - start - 1, 0)):
                if not _inside_special(file, start + match.start() + 1, specials, longest):
                    fallback = start + match.start() + 1
                    break
        # A special token found within one window beats a whitespace cut: the chunks stay aligned to
        # documents. Past that, settle for the whitespace cut.
        if fallback >= 0 and start + len(data) - position >= window:
            return fallback
        if len(data) < window + overlap:
            break
        start += window
    return fallback if fallback >= 0 else file_size


def _inside_special(file: BinaryIO, cut: int, specials: list[bytes], longest: int) -> bool:
    """Whether an occurrence of a special token in `file` covers both bytes `cut - 1` and `cut`."""
    if not specials:
        return False
    lo = max(cut - longest + 1, 0)
    file.seek(lo)
    data = file.read(2 * longest)
    cut -= lo
    for token in specials:
        hit = data.find(token)
        while 0 <= hit < cut:
            if hit + len(token) > cut:
                return True
            hit = data.find(token, hit + 1)
    return False
