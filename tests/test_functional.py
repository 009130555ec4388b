"""Graded tests of softmax and SiLU (problems `softmax` and `positionwise_feedforward`).

Expected values are the exact answers (computed in float64 by the oracle from the stored float32 inputs)
rounded to float32. Tolerances, with u = 2^-24 the float32 unit roundoff:
- softmax, float32: 2e-6·(|p| + max p). exp() and the division each err by ~1 ulp, and the rounding of the
  shifted input `x - max` (or of a log-sum-exp, |lse| ≲ 10 here) adds |x - max|·u relative: < 1.5e-6 in
  all; the absolute term covers tiny probabilities whose relative error grows with |x - max|.
- softmax with huge offsets (±100, -200): 2e-5. A log-sum-exp formulation rounds lse ≈ 200 to 2^-16.
- SiLU, float32: 1e-6 relative (a few ulp for exp, one add, one divide, one multiply) + 1e-6 absolute
  (values of order 1; below that an `x / (1 + exp(-x))` and an `x * sigmoid(x)` legitimately differ).
- SiLU reaches x = ±89 and ±1000 in float32 (hand-worked): e^x overflows float32 above x ≈ 88.7, so a
  formula that divides e^x by 1 + e^x gives inf/inf = NaN there; every correct form stays finite.
- bf16 inputs: the output (bf16 or float32: no dtype is stated) must lie within `BF16_TOL` = 2^-6 relative
  of the exact answer: 2 to 4 ulps of the result (a bf16 ulp is 2^-8 to 2^-7 of the value). Each bf16
  operation rounds by half an ulp, and a correct SiLU chains three or four of them (exp, add, divide or
  reciprocal, multiply): `x*(1/(1+exp(-x)))` computed in bf16 misses 2^-7 relative by 1.6e-4 near
  x = -0.034. Measured over all 33,409 bf16 inputs in [-12, 12], worst relative error (in units of 2^-7):
  x*(1/(1+exp(-x))) 1.23, x/(1+exp(-x)) 1.09, x*sigmoid(x) 0.91, float32 then one cast 0.50: every
  form within 0.62 of the bound (the `silu_bf16_*` rewrites of `project_tests/suite/suite_corpus.py`). The bf16 softmax adds
  2^-6·max p for the exp of a rounded input. That a bf16 input gives a bf16 output is advisory (0 points).
- float64 inputs (the property test): float32 accuracy suffices; nothing requires computing in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cases import SOFTMAX_DIMS
from tests.compare import BF16_TOL, assert_close
from tests.hints import hinted

from .adapters import run_silu, run_softmax


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)


@pytest.mark.parametrize("dim", SOFTMAX_DIMS, ids=lambda d: f"dim{d}")
def test_softmax_matches_snapshot(dim: int, load_snapshot) -> None:
    snap = load_snapshot("model_softmax")
    x = _t(snap["in_features"])
    actual = run_softmax(x, dim)
    with hinted("softmax", actual, snap[f"dim{dim}.expected"], x=x, dim=dim):
        assert_close(actual, snap[f"dim{dim}.expected"], tol=2e-6, dtype=torch.float32, what=f"softmax(dim={dim})")


def test_softmax_is_stable_for_huge_inputs(load_snapshot) -> None:
    snap = load_snapshot("model_softmax")
    x = _t(snap["stable.in_features"])
    actual = run_softmax(x, -1)
    with hinted("softmax", actual, snap["stable.expected"], x=x, dim=-1):
        assert_close(actual, snap["stable.expected"], tol=2e-5, dtype=torch.float32, what="softmax of ±100-offset rows")


def test_softmax_bf16(load_snapshot) -> None:
    # A bf16 or a float32 result is correct (no dtype is stated); bf16 out is advisory, below.
    snap = load_snapshot("model_softmax")
    x = _t(snap["bf16.in_features"]).bfloat16()
    actual = run_softmax(x, -1)
    with hinted("softmax", actual, snap["bf16.expected"], x=x, dim=-1):
        assert_close(actual, snap["bf16.expected"], tol=BF16_TOL, what="bf16 softmax")


@pytest.mark.advisory
@pytest.mark.parametrize("op", ["softmax", "silu"])
def test_bf16_in_bf16_out(op: str, load_snapshot) -> None:
    """Advisory (0 points): a bf16 input gives a bf16 result. Good practice, not a requirement."""
    snap = load_snapshot(f"model_{op}")
    x = _t(snap["bf16.in_features"]).bfloat16()
    actual = run_softmax(x, -1) if op == "softmax" else run_silu(x)
    assert actual.dtype == torch.bfloat16, f"{op}: bf16 in gave {actual.dtype} out"


def test_softmax_hand_worked() -> None:
    # exp(0) : exp(ln 3) = 1 : 3; the masked (-inf) entry gets exactly 0.
    x = torch.tensor([[0.0, math.log(3.0), float("-inf")]])
    rows, expected = run_softmax(x, -1), np.array([[0.25, 0.75, 0.0]])
    with hinted("softmax", rows, expected, x=x, dim=-1):
        assert_close(rows, expected, tol=1e-6, atol=0.0, what="softmax(dim=-1) of [0, ln 3, -inf]")
    columns, expected = run_softmax(x.T.contiguous(), 0), np.array([[0.25], [0.75], [0.0]])
    with hinted("softmax", columns, expected, x=x.T.contiguous(), dim=0):
        assert_close(columns, expected, tol=1e-6, atol=0.0, what="softmax(dim=0) of a column [0, ln 3, -inf]")


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=7), min_size=1, max_size=4
    ).filter(lambda rows: len({len(r) for r in rows}) == 1),
    shift=st.floats(-30, 30, width=32),
)
def test_softmax_properties(rows: list[list[float]], shift: float) -> None:
    """Rows sum to 1, entries lie in [0, 1], and adding a constant to a row changes nothing.

    The input is float64, but nothing requires computing in float64: a float32 softmax rounds x + c
    (|x + c| <= 80) by up to 80·2^-24 ≈ 5e-6, so the tolerances are float32's (2e-5), not float64's.
    """
    x = torch.tensor(rows, dtype=torch.float64)
    p = run_softmax(x, -1)
    assert torch.all((p >= 0) & (p <= 1))
    assert_close(p.sum(-1), np.ones(len(rows)), tol=2e-5, what="row sums")
    assert_close(run_softmax(x + shift, -1), p, tol=2e-5, atol=2e-5, what="softmax(x + c)")


@pytest.mark.parametrize("case", ["float32", "bf16"])
def test_silu_matches_snapshot(case: str, load_snapshot) -> None:
    snap = load_snapshot("model_silu")
    x = _t(snap[f"{case}.in_features"])
    if case == "bf16":
        x = x.bfloat16()
        actual = run_silu(x)
        with hinted("silu", actual, snap["bf16.expected"], x=x):
            assert_close(actual, snap["bf16.expected"], tol=BF16_TOL, atol=1e-30, what="bf16 SiLU")
        # Every bf16 number in [-12, 12] (33,409 of them), against the exact answer in float64.
        grid = _every_bf16_between(-12.0, 12.0)
        actual = run_silu(grid)
        exact = grid.double() * torch.sigmoid(grid.double())
        with hinted("silu", actual, exact, x=grid):
            assert_close(actual, exact, tol=BF16_TOL, atol=1e-30, what="bf16 SiLU of every bf16 in [-12, 12]")
    else:
        actual = run_silu(x)
        with hinted("silu", actual, snap["float32.expected"], x=x):
            assert_close(actual, snap["float32.expected"], tol=1e-6, atol=1e-6, dtype=torch.float32, what="SiLU")


def _every_bf16_between(low: float, high: float) -> torch.Tensor:
    """Every bfloat16 number in [low, high], ascending (bf16 is the top half of a float32's bits)."""
    bits = torch.arange(0, 2**16, dtype=torch.int32) << 16
    values = bits.view(torch.float32)
    values = values[torch.isfinite(values) & (values >= low) & (values <= high)].unique()
    return values.bfloat16()


def test_silu_hand_worked() -> None:
    # silu(x) = x / (1 + e^-x): 0, 0.7311, -0.2689, 1.7616. Far out: silu(89) = 89 (e^89 overflows float32,
    # but 1/(1 + e^-89) is exactly 1), silu(-89) = -89·e^-89 ≈ -2.0e-37, silu(±1000) = 1000 and -0.
    x = torch.tensor([0.0, 1.0, -1.0, 2.0, 89.0, -89.0, 1000.0, -1000.0])
    expected = np.array(
        [
            0.0,
            1 / (1 + math.exp(-1)),
            -1 / (1 + math.exp(1)),
            2 / (1 + math.exp(-2)),
            89.0,
            -89.0 * math.exp(-89.0),
            1000.0,
            0.0,
        ]
    )
    actual = run_silu(x)
    with hinted("silu", actual, expected, x=x):
        assert_close(actual, expected, tol=1e-6, atol=1e-6, what="SiLU of [0, 1, -1, 2, 89, -89, 1000, -1000]")
