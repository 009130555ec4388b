"""Tokenize a large text file in parallel into a `.npy` array of token ids that training memory-maps.

The file is cut at places where cutting cannot change the ids (the start of a special token, or a
non-space followed by a space: `pretokenize.find_chunk_boundaries`); worker processes encode the chunks
and the results are written in order. The array is `uint16` when every id fits (any vocabulary of at most
65,536 tokens), `uint32` otherwise. Memory stays bounded: chunks are read one at a time by the workers and
their ids streamed to a temporary file, which becomes the `.npy` only once complete (atomic rename).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cs336_basics.pretokenize import find_chunk_boundaries, progress_bar, read_chunk_text, worker_context
from cs336_basics.tokenizer import Tokenizer

__all__ = ["encode_file", "token_dtype"]

_TARGET_CHUNK_BYTES = 4 << 20
_PARALLEL_MIN_BYTES = 1 << 20

_worker_tokenizer: Tokenizer | None = None


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids `0 .. vocab_size - 1`.

    >>> token_dtype(50257), token_dtype(65537)
    (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    tokenizer: Tokenizer,
    *,
    num_workers: int | None = None,
    show_progress: bool = False,
) -> int:
    """Encode the UTF-8 file `input_path` into the `.npy` file `output_path`; return the number of tokens.

    The ids equal `tokenizer.encode(open(input_path).read())`.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file {str(input_path)!r} does not exist or is not a file")
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    dtype = token_dtype(max(tokenizer.vocab) + 1)
    size = input_path.stat().st_size
    # A few chunks per worker even for modest files, so that no worker idles while another finishes.
    num_chunks = max(4 * num_workers, -(-size // _TARGET_CHUNK_BYTES))
    with open(input_path, "rb") as f:
        bounds = find_chunk_boundaries(f, num_chunks, tokenizer.special_tokens)
    jobs = [(str(input_path), start, end, dtype.str) for start, end in zip(bounds[:-1], bounds[1:])]

    output_path.parent.mkdir(parents=True, exist_ok=True)
    bar = progress_bar(show_progress, total=size, unit="B", unit_scale=True, desc="encoding")
    raw_fd, raw_path = tempfile.mkstemp(dir=output_path.parent, prefix=f".{output_path.name}.", suffix=".raw")
    npy_path = raw_path[: -len(".raw")] + ".npy"
    try:
        count = 0
        with os.fdopen(raw_fd, "wb") as raw, bar:
            if num_workers == 1 or size < _PARALLEL_MIN_BYTES or len(jobs) == 1:
                _init_worker(tokenizer)
                try:
                    count = _drain(map(_encode_chunk, jobs), jobs, raw, bar)
                finally:
                    _init_worker(None)
            else:
                with ProcessPoolExecutor(
                    min(num_workers, len(jobs)),
                    mp_context=worker_context(),
                    initializer=_init_worker,
                    initargs=(tokenizer,),
                ) as pool:
                    count = _drain(pool.map(_encode_chunk, jobs), jobs, raw, bar)
        # Copy the raw ids behind a .npy header, block by block, then rename into place.
        source = np.memmap(raw_path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
        target = np.lib.format.open_memmap(npy_path, mode="w+", dtype=dtype, shape=(count,))
        block = 1 << 24
        for start in range(0, count, block):
            target[start : start + block] = source[start : start + block]
        target.flush()
        del source, target
        os.replace(npy_path, output_path)
    finally:
        for leftover in (raw_path, npy_path):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return count


def _drain(results: Iterator[np.ndarray], jobs: list[tuple[str, int, int, str]], raw: BinaryIO, bar: Any) -> int:
    """Write each chunk's ids to `raw` in file order; return how many there were."""
    count = 0
    for (_, start, end, _), ids in zip(jobs, results):
        raw.write(ids.tobytes())
        count += len(ids)
        bar.update(end - start)
    return count


def _init_worker(tokenizer: Tokenizer | None) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk(job: tuple[str, int, int, str]) -> np.ndarray:
    """The ids of the bytes `[start, end)` of a file (runs in a worker process)."""
    path, start, end, dtype = job
    assert _worker_tokenizer is not None
    text = read_chunk_text(path, start, end)
    return np.asarray(_worker_tokenizer.encode(text), dtype=dtype)
