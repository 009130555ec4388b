"""Tokenize a large text file in parallel into a `.npy` array of token ids that training memory-maps.

The file is cut at places where cutting cannot change the ids (the start of a special token, or a
non-space followed by a space: the package's `find_chunk_boundaries`, an optional extra of `assignment.py`); worker
processes encode the chunks with the package's `Tokenizer` and the results are written in order. A package
without the chunking extras is encoded in this process, streamed through `Tokenizer.encode_iterable`. The array is `uint16` when every id fits (any vocabulary of at most
65,536 tokens), `uint32` otherwise. Memory stays bounded: chunks are read one at a time by the workers and
their ids streamed to a temporary file, which becomes the `.npy` only once complete (atomic rename); the
resident memory follows the chunk size and the tokenizer's cache, not the corpus.
"""

from __future__ import annotations

import multiprocessing.context
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cs336_common.atomic import commit, prepare_directory, temp_path
from cs336_lab.assignment import Assignment
from cs336_lab.errors import utf8_error
from cs336_lab.threads import usable_cores

Tokenizer = Any  # the package's Tokenizer (see assignment.py)

__all__ = ["encode_file", "token_dtype"]

_TARGET_CHUNK_BYTES = 4 << 20
_PARALLEL_MIN_BYTES = 1 << 20
_IDS_PER_BLOCK = 1 << 20  # ids written at a time when streaming through `encode_iterable`
_COPY_BYTES = 16 << 20  # the raw ids are copied behind the .npy header this many bytes at a time

_worker_tokenizer: Tokenizer | None = None
_worker_engine: Any | None = None  # a tiktoken Encoding standing in for the tokenizer


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
    engine: Any | None = None,
) -> int:
    """Encode the UTF-8 file `input_path` into the `.npy` file `output_path`; return the number of tokens.

    The ids equal `tokenizer.encode(open(input_path).read())`. `engine`: a `tiktoken.Encoding` proven to give
    the tokenizer's ids (`tiktoken_engine.choose_engine`), which then encodes the chunks instead.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file {str(input_path)!r} does not exist or is not a file")
    if num_workers is None:
        num_workers = usable_cores()
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    dtype = token_dtype(max(tokenizer.vocab) + 1)
    prepare_directory(output_path.parent)
    raw_path, npy_path = temp_path(output_path, ".raw"), temp_path(output_path, ".npy")
    try:
        with open(raw_path, "xb") as raw:
            count = _encode_to(raw, input_path, (tokenizer, engine), dtype, num_workers, show_progress)
        _write_npy(npy_path, raw_path, dtype, count)
        commit(npy_path, output_path)
    finally:
        raw_path.unlink(missing_ok=True)
        npy_path.unlink(missing_ok=True)
    return count


def _write_npy(npy_path: Path, raw_path: Path, dtype: np.dtype, count: int) -> None:
    """Put a .npy header in front of the raw ids, copying them with plain reads and writes.

    NOTE: not through memory maps: the mapped pages of both files would count in the resident set, which then
    grows with the corpus (1.6 GB for a 1 GB corpus), though the kernel could drop them.
    """
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
    with open(npy_path, "xb") as out, open(raw_path, "rb") as raw:
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(raw, out, _COPY_BYTES)
        out.flush()
        os.fsync(out.fileno())


def pool_context() -> multiprocessing.context.BaseContext:
    """The package's multiprocessing context for chunk workers (fork when safe, else spawn)."""
    return Assignment.load().worker_context()


def _encode_to(
    raw: BinaryIO,
    input_path: Path,
    encoders: tuple[Tokenizer, Any],
    dtype: np.dtype,
    num_workers: int,
    show_progress: bool,
) -> int:
    """Write the ids of the file to `raw` in order (in worker processes when it pays); return their number.

    `encoders`: the tokenizer and the tiktoken engine that stands in for it (or None).
    """
    tokenizer = encoders[0]
    size = input_path.stat().st_size
    bar = _progress(show_progress, size)
    with bar:
        if not Assignment.load().has_chunking:  # no chunking extras: stream it in this process
            with open(input_path, encoding="utf-8") as lines:
                try:
                    count = _write_blocks(raw, tokenizer.encode_iterable(lines), dtype)
                except UnicodeDecodeError as error:  # it names neither the file nor the offset in it
                    raise utf8_error(input_path, error) from None
            bar.update(size)
            return count
        # A few chunks per worker even for modest files, so that no worker idles while another finishes.
        num_chunks = max(4 * num_workers, -(-size // _TARGET_CHUNK_BYTES))
        with open(input_path, "rb") as f:
            bounds = Assignment.load().find_chunk_boundaries(f, num_chunks, tokenizer.special_tokens)
        jobs = [(str(input_path), start, end, dtype.str) for start, end in zip(bounds[:-1], bounds[1:])]
        if num_workers == 1 or size < _PARALLEL_MIN_BYTES or len(jobs) == 1:
            _init_worker(encoders)
            try:
                return _drain(map(_encode_chunk, jobs), jobs, raw, bar)
            finally:
                _init_worker(None)
        with ProcessPoolExecutor(
            min(num_workers, len(jobs)), mp_context=pool_context(), initializer=_init_worker, initargs=(encoders,)
        ) as pool:
            return _drain(pool.map(_encode_chunk, jobs), jobs, raw, bar)


def _write_blocks(raw: BinaryIO, ids: Iterator[int], dtype: np.dtype) -> int:
    """Write the ids to `raw` a million at a time (never all of them in memory); return their number."""
    count = 0
    while (block := np.fromiter(islice(ids, _IDS_PER_BLOCK), dtype=dtype)).size:
        raw.write(block.tobytes())
        count += block.size
    return count


class _NoProgress(nullcontext):
    """Stands in for a tqdm bar when none is wanted."""

    def update(self, n: int = 1) -> None:
        pass


def _progress(show: bool, total: int) -> Any:
    """A bar over `total` bytes on a terminal, log lines when stderr is redirected, or a silent stand-in."""
    if not show:
        return _NoProgress()
    from cs336_lab.progress import progress

    return progress(total, "encoding", "B", unit_scale=True)


def _drain(results: Iterator[np.ndarray], jobs: list[tuple[str, int, int, str]], raw: BinaryIO, bar: Any) -> int:
    """Write each chunk's ids to `raw` in file order; return how many there were."""
    count = 0
    for (_, start, end, _), ids in zip(jobs, results):
        raw.write(ids.tobytes())
        count += len(ids)
        bar.update(end - start)
    return count


def _init_worker(encoders: tuple[Tokenizer, Any] | None) -> None:
    global _worker_tokenizer, _worker_engine
    _worker_tokenizer, _worker_engine = encoders or (None, None)


def _encode_chunk(job: tuple[str, int, int, str]) -> np.ndarray:
    """The ids of the bytes `[start, end)` of a file (runs in a worker process)."""
    path, start, end, dtype = job
    assert _worker_tokenizer is not None
    text = Assignment.load().read_chunk_text(path, start, end)
    if _worker_engine is not None:  # tiktoken, proven to give the tokenizer's ids; every special token splits
        return _worker_engine.encode_to_numpy(text, allowed_special="all").astype(dtype, copy=False)
    return np.asarray(_worker_tokenizer.encode(text), dtype=dtype)
