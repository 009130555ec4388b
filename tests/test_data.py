"""Graded tests of `get_batch`: shapes, dtypes, targets, the range and uniformity of the starts, memmaps."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import scenarios
from tests.measure import peak_rss_growth

from .adapters import run_get_batch


def _starts(x: torch.Tensor) -> np.ndarray:
    """On a dataset `arange(n)` every row of x is `start, start + 1, ...`: its first entry is the start."""
    return x[:, 0].cpu().numpy()


@pytest.mark.parametrize(
    ("dtype", "batch_size", "context_length"),
    [(np.int64, 8, 16), (np.uint16, 4, 7), (np.int32, 1, 1)],
    ids=["int64", "uint16", "int32-single-token"],
)
def test_get_batch_shapes_dtypes_and_targets(dtype: type, batch_size: int, context_length: int) -> None:
    dataset = np.arange(100, dtype=dtype)
    x, y = run_get_batch(dataset, batch_size, context_length, "cpu")
    for name, t in (("x", x), ("y", y)):
        assert t.shape == (batch_size, context_length), f"{name}: shape {tuple(t.shape)}"
        assert t.dtype == torch.int64, f"{name}: dtype {t.dtype}, expected torch.int64"
        assert t.device == torch.device("cpu"), f"{name}: device {t.device}"
    starts = torch.as_tensor(_starts(x)).unsqueeze(1)
    offsets = torch.arange(context_length).unsqueeze(0)
    torch.testing.assert_close(x, starts + offsets, rtol=0, atol=0, msg="rows of x must be consecutive tokens")
    torch.testing.assert_close(y, x + 1, rtol=0, atol=0, msg="y must be x shifted by one token")


def test_get_batch_starts_are_uniform_over_every_valid_start() -> None:
    # n = 20 tokens, m = 5: the valid starts are 0 .. 14 (15 of them, the last one 14 = n - m - 1).
    n, context_length, draws_per_call, calls = 20, 5, 1000, 15
    dataset = np.arange(n)
    starts = np.concatenate(
        [_starts(run_get_batch(dataset, draws_per_call, context_length, "cpu")[0]) for _ in range(calls)]
    )
    assert starts.min() >= 0 and starts.max() <= n - context_length - 1, (
        f"starts must lie in [0, {n - context_length - 1}], got [{starts.min()}, {starts.max()}]"
    )
    counts = np.bincount(starts, minlength=n - context_length)
    # Each count is Binomial(15000, 1/15): mean 1000, sd 30.6. A bound of 7 sd fails a correct sampler
    # with probability < 15 · 2.6e-12 per run, while a sampler that misses a start (count 0) or favours
    # one start by 25% is far outside it.
    total, p = starts.size, 1 / (n - context_length)
    mean, sd = total * p, np.sqrt(total * p * (1 - p))
    worst = int(np.argmax(np.abs(counts - mean)))
    assert np.all(np.abs(counts - mean) <= 7 * sd), (
        f"start {worst} drawn {counts[worst]} times, expected {mean:.0f} ± {7 * sd:.0f} (counts {counts.tolist()})"
    )


def test_get_batch_when_only_one_start_is_valid() -> None:
    # len = context_length + 1: the single window is the whole dataset.
    dataset = np.array([5, 9, 2, 7], dtype=np.int32)
    x, y = run_get_batch(dataset, 3, 3, "cpu")
    assert x.tolist() == [[5, 9, 2]] * 3 and y.tolist() == [[9, 2, 7]] * 3


def _expect_error(
    call: Callable[[], object], allowed: tuple[type[BaseException], ...], works: Callable[[], object]
) -> None:
    """`call` must raise one of the stated `allowed` types, and the same function must work on valid input.

    The valid call first: a stub that always raises earns nothing.
    """
    x, y = works()
    assert x.shape == y.shape and torch.equal(y, x + 1), "get_batch must work on valid input before its errors count"
    wanted = " or ".join(t.__name__ for t in allowed)
    try:
        call()
    except Exception as error:  # noqa: BLE001 - judged by its type names below
        # Under `cs336 grade` the student's exception arrives as the grader's StudentError, which keeps the
        # names of the student's exception class and its ancestors in `bases`.
        names = {c.__name__ for c in type(error).__mro__} | set(getattr(error, "bases", ()))
        if not names & {t.__name__ for t in allowed}:
            raise AssertionError(f"expected {wanted}, got {type(error).__name__}: {error}") from None
        return
    pytest.fail(f"expected {wanted}, but the call returned normally")


# Stated in the adapter's docstring: the exceptions numpy, Python or torch raise for an empty range of starts.
SHORT_DATASET_ERRORS = (ValueError, RuntimeError)
# torch raises RuntimeError for an unknown or unavailable device; a torch built without CUDA raises
# AssertionError ("Torch not compiled with CUDA enabled"). The upstream test accepts exactly these two.
DEVICE_ERRORS = (RuntimeError, AssertionError)


def test_get_batch_too_short_dataset_raises() -> None:
    dataset = np.arange(8)
    _expect_error(
        lambda: run_get_batch(dataset, 2, 8, "cpu"), SHORT_DATASET_ERRORS, lambda: run_get_batch(dataset, 2, 7, "cpu")
    )


@pytest.mark.parametrize("device", ["cuda:99", "not-a-device"], ids=str)
def test_get_batch_invalid_device_raises(device: str) -> None:
    dataset = np.arange(100)
    _expect_error(
        lambda: run_get_batch(dataset, 2, 4, device), DEVICE_ERRORS, lambda: run_get_batch(dataset, 2, 4, "cpu")
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_get_batch_on_cuda() -> None:
    x, y = run_get_batch(np.arange(100, dtype=np.uint16), 4, 8, "cuda:0")
    assert x.device.type == "cuda" and y.device.type == "cuda"
    assert x.dtype == torch.int64 and torch.equal(y, x + 1)


def test_get_batch_places_tensors_on_the_given_device() -> None:
    # No GPU needed: torch's placement calls are recorded and kept on the CPU (tests/scenarios.py). Any way
    # of placing (torch.tensor(..., device=device), .to(device), torch.randint(..., device=device)) passes,
    # as long as the device asked for is the one given: "cuda:1" must not become "cuda" (the current GPU).
    x, y, requests = scenarios.run("get_batch_device_requests", np.arange(100), 4, 8, "cuda:1")
    assert x.shape == (4, 8) and torch.equal(y, x + 1), "get_batch must return (x, x + 1)"
    elsewhere = sorted({r for r in requests if r not in ("cpu", "cuda:1")})
    assert not elsewhere, (
        f"get_batch(..., device='cuda:1') placed tensors on {elsewhere}: pass the device string through "
        "unchanged (torch.device('cuda:1').type is 'cuda', the current GPU, not GPU 1)"
    )
    assert "cuda:1" in requests, f"get_batch(..., device='cuda:1') never placed a tensor on it (asked for {requests})"


@pytest.mark.parametrize("dtype", [np.uint16, np.int32], ids=["uint16", "int32"])
def test_get_batch_on_a_memmap(tmp_path: Path, dtype: type) -> None:
    n = 5000
    path = tmp_path / "tokens.npy"
    np.save(path, np.arange(n, dtype=dtype) % 4000)
    dataset = np.load(path, mmap_mode="r")
    assert isinstance(dataset, np.memmap)
    x, y = run_get_batch(dataset, 16, 32, "cpu")
    assert x.dtype == torch.int64 and x.shape == (16, 32)
    torch.testing.assert_close(y, (x + 1) % 4000, rtol=0, atol=0)


def test_get_batch_reads_only_the_sampled_windows(tmp_path: Path) -> None:
    # A 512 MB sparse file of uint16 tokens (no disk space used): reading it all would add its size to the
    # resident memory, sampling a few windows touches a few pages (resident memory as the OS reports it).
    path = tmp_path / "big.bin"
    num_tokens = 256 * 2**20
    with open(path, "wb") as handle:
        handle.truncate(num_tokens * 2)
    dataset = np.memmap(path, dtype=np.uint16, mode="r", shape=(num_tokens,))
    run_get_batch(dataset, 2, 4, "cpu")  # warm-up: lazy torch/numpy initialisation is not the dataset
    release = partial(scenarios.run, "release_free_memory")  # freed memory must not hide a whole-array read
    (x, _), grown = peak_rss_growth(lambda: run_get_batch(dataset, 32, 64, "cpu"), release)
    assert x.shape == (32, 64)
    assert grown < 128 * 2**20, f"get_batch grew resident memory by {grown / 2**20:.0f} MB on a 512 MB memmap"
