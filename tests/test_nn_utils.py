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
from tests.hints import hinted

from .adapters import run_cross_entropy, run_gradient_clipping

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
    torch.testing.assert_close(run_cross_entropy(logits, targets), torch.tensor(math.log(7)), **CE_TOL)


def test_cross_entropy_hand_worked_two_classes() -> None:
    # logits (0, ln 3): p = (1/4, 3/4); targets 1 then 0: mean of -ln(3/4) and -ln(1/4).
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    torch.testing.assert_close(run_cross_entropy(logits, torch.tensor([1, 0])), torch.tensor(expected), **CE_TOL)


@pytest.mark.parametrize(
    ("shape", "scale"),
    [((32, 60), 1.0), ((4, 8, 60), 1.0), ((2, 3, 4, 60), 5.0), ((4, 8, 60), 1000.0), ((1, 2), 1.0)],
    ids=["2d", "3d", "4d", "3d-scaled-1000", "single-row"],
)
def test_cross_entropy_matches_torch(shape: tuple[int, ...], scale: float) -> None:
    logits, targets = _random_logits(shape, scale, seed=len(shape) * 100 + int(scale))
    actual = run_cross_entropy(logits, targets)
    assert actual.shape == torch.Size([]), f"expected a scalar, got shape {tuple(actual.shape)}"
    with hinted("cross_entropy", actual, inputs=logits, targets=targets):
        torch.testing.assert_close(actual, known.cross_entropy(logits, targets), **CE_TOL)


def test_cross_entropy_extreme_values_stay_finite() -> None:
    # Logits of ±1e4: exp overflows float32 unless the maximum is subtracted first.
    generator = torch.Generator().manual_seed(7)
    logits = (torch.randint(0, 3, (16, 40), generator=generator).float() - 1) * 1e4
    targets = torch.randint(0, 40, (16,), generator=generator)
    actual = run_cross_entropy(logits, targets)
    with hinted("cross_entropy", actual, inputs=logits, targets=targets):
        assert torch.isfinite(actual), f"loss on ±1e4 logits is not finite: {actual}"
        torch.testing.assert_close(actual, known.cross_entropy(logits, targets), **CE_TOL)


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
    logits, targets = _random_logits((*leading, vocab), scale, seed)
    shifted = logits + shift
    torch.testing.assert_close(run_cross_entropy(shifted, targets), known.cross_entropy(shifted, targets), **CE_TOL)


def test_cross_entropy_gradient_matches_torch() -> None:
    logits, targets = _random_logits((3, 5, 30), 2.0, seed=11)
    ours = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    run_cross_entropy(ours, targets).backward()
    known.cross_entropy(theirs, targets).backward()
    # Gradients are softmax - onehot divided by N: entries of size ~1/N, float32 rounding ~1e-7 of that.
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ["flat", "seq", "large"], ids=str)
def test_cross_entropy_snapshot(case: str, load_snapshot: Callable[[str], dict[str, np.ndarray]]) -> None:
    snapshot = load_snapshot("training_cross_entropy")
    logits = torch.from_numpy(snapshot[f"{case}_logits"]).requires_grad_(True)
    loss = run_cross_entropy(logits, torch.from_numpy(snapshot[f"{case}_targets"]))
    # npz stores the scalar loss as shape (1,)
    torch.testing.assert_close(loss.detach().reshape(1), torch.from_numpy(snapshot[f"{case}_loss"]), **CE_TOL)
    loss.backward()
    torch.testing.assert_close(logits.grad, torch.from_numpy(snapshot[f"{case}_grad"]), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- gradient clipping


def _parameters_with_gradients(grad_scale: float) -> list[torch.nn.Parameter]:
    """Four parameters of different shapes: three with gradients, one without (it must be skipped)."""
    generator = torch.Generator().manual_seed(3)
    shapes = [(5, 4), (4,), (3, 2, 2), (6,)]
    params = [torch.nn.Parameter(torch.randn(*shape, generator=generator)) for shape in shapes]
    for p in params[:3]:
        p.grad = torch.randn(p.shape, generator=generator) * grad_scale
    return params  # params[3].grad is None


def _clone_with_grads(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    clones = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for clone, p in zip(clones, params, strict=True):
        clone.grad = None if p.grad is None else p.grad.clone()
    return clones


@pytest.mark.parametrize(
    ("grad_scale", "max_l2_norm"),
    [(1.0, 1e-2), (1.0, 1.0), (10.0, 5.0)],
    ids=["far-above", "above", "above-large-grads"],
)
def test_gradient_clipping_above_the_limit(grad_scale: float, max_l2_norm: float) -> None:
    params = _parameters_with_gradients(grad_scale)
    expected = _clone_with_grads(params)
    total_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params[:3]]))
    assert total_norm > max_l2_norm, "test setup: the gradients must start above the limit"
    before = [p.grad.clone() for p in params[:3]]
    run_gradient_clipping(params, max_l2_norm)
    torch.nn.utils.clip_grad_norm_(expected, max_l2_norm)
    with hinted("clipping", [p.grad for p in params[:3]], grads=before, max_l2_norm=max_l2_norm):
        for p, e in zip(params[:3], expected[:3], strict=True):
            torch.testing.assert_close(p.grad, e.grad, rtol=1e-5, atol=1e-7)
    assert params[3].grad is None, "a parameter without a gradient must stay without one"
    clipped_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params[:3]]))
    # max / (norm + 1e-6) * norm lands just under the limit.
    assert clipped_norm <= max_l2_norm * (1 + 1e-5), f"clipped norm {clipped_norm} exceeds {max_l2_norm}"


def test_gradient_clipping_below_the_limit_changes_nothing() -> None:
    params = _parameters_with_gradients(0.01)
    before = [p.grad.clone() for p in params[:3]]
    total_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params[:3]]))
    run_gradient_clipping(params, float(total_norm) * 2)
    with hinted("clipping", [p.grad for p in params[:3]], grads=before, max_l2_norm=float(total_norm) * 2):
        for p, b in zip(params[:3], before, strict=True):
            torch.testing.assert_close(p.grad, b, rtol=0, atol=0)
    assert params[3].grad is None


def test_gradient_clipping_uses_the_global_norm() -> None:
    # Hand-worked: gradients (3, 0) and (0, 4) have global norm 5; the limit 1 scales both by 1/(5 + 1e-6).
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    run_gradient_clipping(iter([a, b]), 1.0)  # a one-shot iterator, like model.parameters()
    scale = 1.0 / (5.0 + 1e-6)
    torch.testing.assert_close(a.grad, torch.tensor([3.0 * scale, 0.0]), rtol=1e-6, atol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 4.0 * scale]), rtol=1e-6, atol=0)


def test_gradient_clipping_on_a_model_matches_torch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    model[2].bias.requires_grad_(False)  # a frozen parameter: no gradient, must be skipped
    reference = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    reference.load_state_dict(model.state_dict())
    reference[2].bias.requires_grad_(False)
    inputs = torch.randn(10, 6) * 10
    for net in (model, reference):
        net(inputs).pow(2).sum().backward()
    run_gradient_clipping(model.parameters(), 0.5)
    known.clip_gradients(reference.parameters(), 0.5)
    for (name, p), e in zip(model.named_parameters(), reference.parameters(), strict=True):
        if e.grad is None:
            assert p.grad is None, f"{name}: a frozen parameter got a gradient"
        else:
            torch.testing.assert_close(p.grad, e.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
