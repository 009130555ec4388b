"""Graded tests of the cross-entropy loss and global gradient clipping, against torch's implementations."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_grading.expected import training as known
from tests import scenarios
from tests.hints import hinted

from .adapters import run_cross_entropy

# NOTE: a float32 loss is a mean over N positions; summing in a different order changes the last bits by up
# to ~sqrt(N) ulps, so a relative tolerance of 1e-5 accepts every correct float32 implementation (the
# naive softmax-then-log is off by inf on the large-logit cases, far outside it).
CE_TOL = {"rtol": 1e-5, "atol": 1e-6}


def _random_logits(shape: tuple[int, ...], scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=generator) * scale
    targets = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    return logits, targets


# ----------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_uniform_logits_give_log_vocab_size() -> None:
    # Hand-worked: equal logits make every class probability 1/V, so the loss is ln V at every position.
    logits = torch.full((3, 7), 2.5)
    targets = torch.tensor([0, 3, 6])
    actual, expected = run_cross_entropy(logits, targets), torch.tensor(math.log(7))
    with hinted("cross_entropy", actual, expected, inputs=logits, targets=targets):
        torch.testing.assert_close(actual, expected, **CE_TOL)


def test_cross_entropy_hand_worked_two_classes() -> None:
    # logits (0, ln 3): p = (1/4, 3/4); targets 1 then 0: mean of -ln(3/4) and -ln(1/4).
    logits, targets = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]]), torch.tensor([1, 0])
    actual, expected = run_cross_entropy(logits, targets), torch.tensor((-math.log(0.75) - math.log(0.25)) / 2)
    with hinted("cross_entropy", actual, expected, inputs=logits, targets=targets):
        torch.testing.assert_close(actual, expected, **CE_TOL)


@pytest.mark.parametrize(
    ("shape", "scale"),
    [((32, 60), 1.0), ((4, 8, 60), 1.0), ((2, 3, 4, 60), 5.0), ((4, 8, 60), 1000.0), ((1, 2), 1.0)],
    ids=["2d", "3d", "4d", "3d-scaled-1000", "single-row"],
)
def test_cross_entropy_matches_torch(shape: tuple[int, ...], scale: float) -> None:
    logits, targets = _random_logits(shape, scale, seed=len(shape) * 100 + int(scale))
    actual = run_cross_entropy(logits, targets)
    assert actual.shape == torch.Size([]), f"expected a scalar, got shape {tuple(actual.shape)}"
    expected = known.cross_entropy(logits, targets)
    with hinted("cross_entropy", actual, expected, inputs=logits, targets=targets):
        torch.testing.assert_close(actual, expected, **CE_TOL)


def test_cross_entropy_extreme_values_stay_finite() -> None:
    # Logits of ±1e4: exp overflows float32 unless the maximum is subtracted first.
    generator = torch.Generator().manual_seed(7)
    logits = (torch.randint(0, 3, (16, 40), generator=generator).float() - 1) * 1e4
    targets = torch.randint(0, 40, (16,), generator=generator)
    actual = run_cross_entropy(logits, targets)
    expected = known.cross_entropy(logits, targets)
    with hinted("cross_entropy", actual, expected, inputs=logits, targets=targets):
        assert torch.isfinite(actual), f"loss on ±1e4 logits is not finite: {actual}"
        torch.testing.assert_close(actual, expected, **CE_TOL)


@settings(max_examples=20, deadline=None)
@given(
    leading=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    vocab=st.integers(2, 40),
    scale=st.sampled_from([0.01, 1.0, 30.0, 3000.0]),
    shift=st.sampled_from([0.0, -500.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_property(leading: list[int], vocab: int, scale: float, shift: float, seed: int) -> None:
    # Any shape, scale and common offset (an offset of 1e4 overflows exp unless the max is subtracted).
    # NOTE: a correct float32 loss may take `log-sum-exp - picked logit`, two numbers of size |logit|, whose
    # difference carries their rounding: the absolute tolerance grows with the largest |logit| (8 units of
    # 2^-24 of it; an offset of 1e4 allows 5e-3, far below the effect of any mistake: inf, NaN, x N).
    logits, targets = _random_logits((*leading, vocab), scale, seed)
    shifted = logits + shift
    atol = CE_TOL["atol"] + 8 * 2.0**-24 * float(shifted.abs().max())
    actual, expected = run_cross_entropy(shifted, targets), known.cross_entropy(shifted, targets)
    with hinted("cross_entropy", actual, expected, inputs=shifted, targets=targets):
        torch.testing.assert_close(actual, expected, rtol=CE_TOL["rtol"], atol=atol)


def test_cross_entropy_gradient_matches_torch() -> None:
    logits, targets = _random_logits((3, 5, 30), 2.0, seed=11)
    _, grad = scenarios.run("cross_entropy_with_grad", logits, targets)
    _, expected = scenarios.cross_entropy_with_grad(logits, targets, loss_fn=known.cross_entropy)
    # Gradients are softmax - onehot divided by N: entries of size ~1/N, float32 rounding ~1e-7 of that.
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ["flat", "seq", "large"], ids=str)
def test_cross_entropy_snapshot(case: str, load_snapshot: Callable[[str], dict[str, np.ndarray]]) -> None:
    snapshot = load_snapshot("training_cross_entropy")
    logits, targets = torch.from_numpy(snapshot[f"{case}_logits"]), torch.from_numpy(snapshot[f"{case}_targets"])
    loss, grad = scenarios.run("cross_entropy_with_grad", logits, targets)
    expected = torch.from_numpy(snapshot[f"{case}_loss"]).reshape(())  # npz stores the scalar loss as shape (1,)
    with hinted("cross_entropy", loss.reshape(()), expected, inputs=logits, targets=targets):
        torch.testing.assert_close(loss.reshape(()), expected, **CE_TOL)
    torch.testing.assert_close(grad, torch.from_numpy(snapshot[f"{case}_grad"]), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- gradient clipping


def _parameters_with_gradients(grad_scale: float) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Four parameters' values and gradients, of different shapes: the last has no gradient (skip it)."""
    generator = torch.Generator().manual_seed(3)
    shapes = [(5, 4), (4,), (3, 2, 2), (6,)]
    values = [torch.randn(*shape, generator=generator) for shape in shapes]
    grads: list[torch.Tensor | None] = [torch.randn(v.shape, generator=generator) * grad_scale for v in values[:3]]
    return values, [*grads, None]


@pytest.mark.parametrize(
    ("grad_scale", "max_l2_norm"),
    [(1.0, 1e-2), (1.0, 1.0), (10.0, 5.0), (2e-5, 5e-5)],
    ids=["far-above", "above", "above-large-grads", "tiny-norm"],
)
def test_gradient_clipping_above_the_limit(grad_scale: float, max_l2_norm: float) -> None:
    # "tiny-norm": a total norm of ~1e-4, where the stated eps (max / (norm + 1e-6)) changes the scale by 1%.
    values, grads = _parameters_with_gradients(grad_scale)
    total_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads[:3]]))
    assert total_norm > max_l2_norm, "test setup: the gradients must start above the limit"
    clipped = scenarios.run("clipped_gradients", values, grads, max_l2_norm)
    expected = scenarios.clipped_gradients(values, grads, max_l2_norm, clip=known.gradient_clipping)
    with hinted("clipping", clipped[:3], expected[:3], grads=grads[:3], max_l2_norm=max_l2_norm):
        for got, want in zip(clipped[:3], expected[:3], strict=True):
            # The absolute floor follows the clipped gradients' size (entries ~max_l2_norm / 6 here).
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7 * min(1.0, max_l2_norm))
    assert clipped[3] is None, "a parameter without a gradient must stay without one"
    clipped_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in clipped[:3]]))
    # max / (norm + 1e-6) * norm lands just under the limit.
    assert clipped_norm <= max_l2_norm * (1 + 1e-5), f"clipped norm {clipped_norm} exceeds {max_l2_norm}"


def test_gradient_clipping_below_the_limit_changes_nothing() -> None:
    values, grads = _parameters_with_gradients(0.01)
    total_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads[:3]]))
    clipped = scenarios.run("clipped_gradients", values, grads, float(total_norm) * 2)
    with hinted("clipping", clipped[:3], grads[:3], grads=grads[:3], max_l2_norm=float(total_norm) * 2):
        for got, before in zip(clipped[:3], grads[:3], strict=True):
            torch.testing.assert_close(got, before, rtol=0, atol=0)
    assert clipped[3] is None


def test_gradient_clipping_uses_the_global_norm() -> None:
    # Hand-worked: gradients (3, 0) and (0, 4) have global norm 5; the limit 1 scales both by 1/(5 + 1e-6).
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])]
    # A one-shot iterator, like model.parameters().
    a, b = scenarios.run("clipped_gradients", [torch.zeros(2), torch.zeros(2)], grads, 1.0, one_shot=True)
    scale = 1.0 / (5.0 + 1e-6)
    expected = [torch.tensor([3.0 * scale, 0.0]), torch.tensor([0.0, 4.0 * scale])]
    with hinted("clipping", [a, b], expected, grads=grads, max_l2_norm=1.0):
        torch.testing.assert_close(a, expected[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(b, expected[1], rtol=1e-6, atol=0)


def test_gradient_clipping_on_a_model_matches_torch() -> None:
    clipped = scenarios.run("clip_on_a_model", 0.5)
    expected = scenarios.clip_on_a_model(0.5, clip=known.gradient_clipping)
    assert [name for name, _ in clipped] == [name for name, _ in expected], "expected the model's parameters"
    for (name, got), (_, want) in zip(clipped, expected, strict=True):
        if want is None:
            assert got is None, f"{name}: a frozen parameter got a gradient"
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
