"""The comparison every graded model test uses: a relative tolerance with a scale-aware absolute floor.

    assert_close(actual, snap["bf16.expected"], tol=BF16_EPS, dtype=torch.bfloat16, what="linear bf16")

`FLOAT32_EPS` and `BF16_EPS` let a test state its tolerance in roundings of the format rather than as a bare
number; `BF16_TOL` is the tolerance of every bf16 comparison (a few ulps of the result, derived below).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

FLOAT32_EPS = 2.0**-23  # spacing of float32 numbers just above 1 (unit roundoff u = eps / 2)
BF16_EPS = 2.0**-7  # the same for bfloat16 (7 explicit mantissa bits)
# What correct bf16 arithmetic can do: 2 to 4 ulps of the result (a bf16 ulp is 2^-8 to 2^-7 of the value).
# A bf16 chain of three or four ops (exp, add, reciprocal or divide, multiply) each rounds by half an ulp,
# and a float32 result rounded once to bf16 adds another half: one ulp (2^-7 relative at best) is too tight.
BF16_TOL = 2 * BF16_EPS


def assert_close(
    actual: Tensor,
    expected: np.ndarray | Tensor,
    *,
    tol: float,
    atol: float | None = None,
    dtype: torch.dtype | None = None,
    what: str = "output",
) -> None:
    """Assert `|actual - expected| <= tol·|expected| + atol` elementwise (NaN never passes).

    `atol` defaults to `tol · max|expected|`: the rounding error of a float sum scales with the size of its
    terms, not of the result, so an output that cancels to nearly 0 may carry the error of its neighbours.
    `dtype`, when given, is the dtype `actual` must have (e.g. bf16 in, bf16 out).
    """
    __tracebackhide__ = True  # pytest shows the failing test's line and this message, not the lines below
    if not isinstance(actual, Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    expected_t = torch.as_tensor(expected).double()
    if tuple(actual.shape) != tuple(expected_t.shape):
        raise AssertionError(f"{what}: expected shape {tuple(expected_t.shape)}, got {tuple(actual.shape)}")
    if dtype is not None and actual.dtype != dtype:
        raise AssertionError(f"{what}: expected dtype {dtype}, got {actual.dtype}")
    got = actual.detach().cpu().double()
    if atol is None:
        atol = tol * expected_t.abs().max().item() if expected_t.numel() else 0.0
    err = (got - expected_t).abs()
    bound = tol * expected_t.abs() + atol
    bad = ~(err <= bound)
    if bad.any():
        flat = int(torch.where(bad.flatten(), err.flatten().nan_to_num(float("inf")), -1.0).argmax())
        idx = tuple(int(i) for i in np.unravel_index(flat, tuple(err.shape)))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; worst at {idx}: got "
            f"{got[idx].item():.9g}, expected {expected_t[idx].item():.9g} (|diff| {err[idx].item():.3g} > "
            f"{bound[idx].item():.3g} = {tol:.3g}·|expected| + {atol:.3g})"
        )
