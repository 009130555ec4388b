"""Language-modelling batches from a flat array of token ids.

A tokenised corpus is one long 1-d array (usually a memory-mapped `.npy` of uint16). A training batch is
`batch_size` windows of `context_length + 1` consecutive tokens taken at uniformly random starts; the
inputs are the first `context_length` tokens of each window and the targets the last `context_length`
(the same window shifted by one). Only the sampled windows are read from disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from jaxtyping import Int
from torch import Tensor

Batch = tuple[Int[Tensor, " batch context_length"], Int[Tensor, " batch context_length"]]


class DeviceError(ValueError, RuntimeError):
    """An invalid or unavailable device. A RuntimeError, as torch raises (and upstream tests expect)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """`torch.device(device)`, checked to exist on this machine (so a typo fails here, not mid-run).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from error
    if resolved.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = resolved.index if resolved.index is not None else 0
        if index >= available:
            raise DeviceError(f"device {device!r} requested but this machine has {available} CUDA device(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} requested but MPS is not available on this machine")
    return resolved


def _check_dataset(dataset: npt.NDArray, context_length: int) -> None:
    if not isinstance(dataset, np.ndarray):
        raise TypeError(f"dataset must be a numpy array (or np.memmap), got {type(dataset).__name__}")
    if dataset.ndim != 1:
        raise ValueError(f"dataset must be a 1-d array of token ids, got shape {dataset.shape}")
    if not np.issubdtype(dataset.dtype, np.integer):
        raise TypeError(f"dataset must hold integer token ids, got dtype {dataset.dtype}")
    if context_length < 1:
        raise ValueError(f"context_length must be at least 1, got {context_length}")
    if len(dataset) < context_length + 1:
        raise ValueError(f"dataset has {len(dataset)} tokens, fewer than context_length + 1 = {context_length + 1}")


def _windows_to_device(windows: npt.NDArray, device: torch.device) -> Batch:
    """Split (rows, m + 1) token windows into int64 inputs and targets on `device`."""
    tokens = torch.from_numpy(windows.astype(np.int64, copy=False))
    if device.type == "cuda":
        # Pinned host memory lets the copy overlap with compute.
        tokens = tokens.pin_memory().to(device, non_blocking=True)
    else:
        tokens = tokens.to(device)
    return tokens[:, :-1], tokens[:, 1:]


def get_batch(
    dataset: npt.NDArray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    *,
    generator: torch.Generator | np.random.Generator | None = None,
) -> Batch:
    """Sample `batch_size` random windows: inputs `x` and next-token targets `y = x` shifted by one.

    Starts are uniform over every valid start `0 .. len(dataset) - context_length - 1` (the last one
    included). `generator` (a torch or numpy generator) makes the draw reproducible; by default torch's
    global RNG is used, so `torch.manual_seed` controls it.

    Returns:
        (x, y), int64 tensors (batch_size, context_length) on `device`.
    """
    _check_dataset(dataset, context_length)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    target_device = resolve_device(device)
    num_starts = len(dataset) - context_length  # starts 0 .. n - m - 1
    if isinstance(generator, np.random.Generator):
        starts = generator.integers(0, num_starts, size=batch_size)
    else:
        starts = torch.randint(0, num_starts, (batch_size,), generator=generator).numpy()
    offsets = np.arange(context_length + 1)
    # Fancy indexing on a memmap reads only these batch_size * (m + 1) tokens from disk.
    windows = dataset[starts[:, None] + offsets[None, :]]  # (batch, m + 1)
    return _windows_to_device(windows, target_device)


def iterate_batches(
    dataset: npt.NDArray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
) -> Iterator[Batch]:
    """Walk a (validation) set in order, predicting every token after the first exactly once.

    Windows start at 0, m, 2m, ... and do not overlap; they are grouped `batch_size` at a time (the last
    group may be smaller). A final remainder of r < m targets comes as one (1, r) batch, so that
    averaging batch losses weighted by `x.numel()` gives the exact per-token loss of the whole set.

    >>> [x.tolist() for x, _ in iterate_batches(np.arange(8), 2, 3, "cpu")]
    [[[0, 1, 2], [3, 4, 5]], [[6]]]
    """
    _check_dataset(dataset, context_length)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    target_device = resolve_device(device)
    num_targets = len(dataset) - 1
    num_windows = num_targets // context_length
    offsets = np.arange(context_length + 1)
    for first in range(0, num_windows, batch_size):
        starts = np.arange(first, min(first + batch_size, num_windows)) * context_length
        yield _windows_to_device(np.asarray(dataset[starts[:, None] + offsets[None, :]]), target_device)
    remainder = num_targets - num_windows * context_length
    if remainder:
        tail = np.asarray(dataset[num_windows * context_length :])  # remainder + 1 tokens
        yield _windows_to_device(tail[None, :], target_device)


def load_tokens(path: str | os.PathLike, *, dtype: npt.DTypeLike | None = None) -> npt.NDArray:
    """Open a token file memory-mapped (read-only): a `.npy`, or a raw binary file of the given `dtype`.

    Nothing is read until it is indexed, so a corpus larger than memory is fine.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist")
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise ValueError(f"{path} is not a readable .npy array: {error}") from error
        if dtype is not None and np.dtype(dtype) != tokens.dtype:
            raise ValueError(f"{path} holds {tokens.dtype} tokens, but dtype={np.dtype(dtype)} was requested")
    else:
        if dtype is None:
            raise ValueError(f"{path} is not a .npy file: pass dtype= (e.g. np.uint16) to read it as raw tokens")
        itemsize = np.dtype(dtype).itemsize
        size = path.stat().st_size
        if size == 0 or size % itemsize:
            raise ValueError(f"{path} has {size} bytes, not a positive multiple of the {itemsize}-byte {dtype}")
        tokens = np.memmap(path, dtype=dtype, mode="r")
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{path} must hold a 1-d array of integer token ids, got {tokens.dtype} {tokens.shape}")
    return tokens
