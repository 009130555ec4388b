"""Graded tests of AdamW (against torch.optim.AdamW) and of the cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from cs336_grading.expected import training as known
from tests import scenarios
from tests.hints import hinted

from .adapters import run_get_lr_cosine_schedule

# ----------------------------------------------------------------------------- AdamW


def test_adamw_is_an_optimizer() -> None:
    assert "torch.optim.optimizer.Optimizer" in scenarios.run("optimizer_ancestry")


def test_adamw_matches_torch_trajectory() -> None:
    # Two groups with different settings, a frozen parameter, a parameter whose gradients start late and a
    # learning rate changed mid-run; every parameter compared after every step. See known.ADAMW_ATOL for
    # the measured margins: both decay orders pass, coupled L2 / no bias correction / a shared step fail.
    actual, expected = scenarios.run("adamw_trajectory"), scenarios.adamw_trajectory(torch.optim.AdamW)
    with hinted("adamw", actual, expected):
        known.assert_trajectories_match(actual, expected)


def test_adamw_first_step_hand_worked() -> None:
    # After one step m̂ = g and v̂ = g², so every coordinate moves by lr · g/(|g| + ε') ≈ lr · sign(g),
    # whatever the ε placement; then decoupled decay shrinks θ by lr·λ·θ (before or after: O(lr²) apart).
    lr, weight_decay = 0.1, 0.5
    hyperparameters = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": weight_decay}
    (theta,) = scenarios.run(
        "adamw_steps", [torch.tensor([1.0, -2.0, 3.0])], [[torch.tensor([0.5, -4.0, 0.0])]], hyperparameters
    )
    adam = torch.tensor([1.0 - lr, -2.0 + lr, 3.0])
    decay_after = adam * (1 - lr * weight_decay)
    decay_before = torch.tensor([1.0, -2.0, 3.0]) * (1 - lr * weight_decay) - torch.tensor([lr, -lr, 0.0])
    low, high = torch.minimum(decay_after, decay_before), torch.maximum(decay_after, decay_before)
    assert torch.all(theta >= low - 1e-6) and torch.all(theta <= high + 1e-6), (
        f"after one step expected between {decay_after.tolist()} and {decay_before.tolist()}, got {theta.tolist()}"
    )


def test_adamw_snapshot(load_snapshot: Callable[[str], dict[str, np.ndarray]]) -> None:
    snapshot = load_snapshot("training_adamw")
    lr, beta1, beta2, eps, weight_decay = snapshot["hyperparameters"].tolist()
    hyperparameters = {"lr": lr, "betas": (beta1, beta2), "eps": eps, "weight_decay": weight_decay}
    weights, biases = scenarios.run(
        "adamw_linear_regression",
        torch.from_numpy(snapshot["weight0"]),
        torch.from_numpy(snapshot["bias0"]),
        torch.from_numpy(snapshot["inputs"]),
        torch.from_numpy(snapshot["targets"]),
        hyperparameters,
    )
    assert len(weights) == len(biases) == snapshot["inputs"].shape[0], "expected one result per step"
    for step, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        # Same margin as the trajectory test: correct variants agree to <= 4e-6 here, mistakes are >= 3e-4 off.
        expected_weight = torch.from_numpy(snapshot["expected_weights"][step])
        torch.testing.assert_close(
            weight, expected_weight, rtol=0, atol=known.ADAMW_ATOL, msg=lambda m, s=step: f"step {s}, weight: {m}"
        )
        expected_bias = torch.from_numpy(snapshot["expected_biases"][step])
        torch.testing.assert_close(
            bias, expected_bias, rtol=0, atol=known.ADAMW_ATOL, msg=lambda m, s=step: f"step {s}, bias: {m}"
        )


def test_adamw_step_accepts_a_closure() -> None:
    theta, returned = scenarios.run("adamw_with_closure", 5)
    reference, _ = scenarios.adamw_with_closure(5, optimizer_cls=torch.optim.AdamW)
    assert None not in returned, f"step(closure) must return the closure's loss, got {returned}"
    torch.testing.assert_close(theta, reference, rtol=0, atol=known.ADAMW_ATOL)


def test_adamw_state_dict_round_trip() -> None:
    """Stopping after 10 steps, reloading the state into a fresh optimizer and continuing is seamless."""
    uninterrupted, resumed = scenarios.run("adamw_state_dict_resume")
    # The same float32 operations in the same order: the trajectories are identical.
    torch.testing.assert_close(resumed, uninterrupted, rtol=0, atol=0)


# ----------------------------------------------------------------------------- cosine schedule

SCHEDULE = {"max_learning_rate": 1.0, "min_learning_rate": 0.1, "warmup_iters": 7, "cosine_cycle_iters": 21}


def _lr(it: int, **overrides: float) -> float:
    return run_get_lr_cosine_schedule(it=it, **{**SCHEDULE, **overrides})


@pytest.mark.parametrize(
    ("it", "expected"),
    [
        (0, 0.0),  # warm-up starts at zero
        (6, 6 / 7),  # T_w - 1: still warming up
        (7, 1.0),  # T_w: the peak
        (14, 0.55),  # halfway through the cosine: the mean of max and min
        (21, 0.1),  # T_c: the end of the cosine is exactly the minimum
        (22, 0.1),  # T_c + 1: constant minimum
        (1000, 0.1),
    ],
    ids=["t=0", "t=Tw-1", "t=Tw", "t=mid", "t=Tc", "t=Tc+1", "t=far"],
)
def test_get_lr_cosine_schedule_key_points(it: int, expected: float) -> None:
    actual = _lr(it)
    with hinted("cosine", actual, expected, it=it, **SCHEDULE):
        assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_get_lr_cosine_schedule_whole_curve() -> None:
    expected = [known.cosine_schedule(it, **SCHEDULE) for it in range(25)]
    actual = [_lr(it) for it in range(25)]
    with hinted("cosine", actual, expected, its=list(range(25)), **SCHEDULE):
        assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # The known table of the CS336 handout's own test (same parameters).
    handout = [
        0,
        0.14285714285714285,
        0.2857142857142857,
        0.42857142857142855,
        0.5714285714285714,
        0.7142857142857143,
        0.8571428571428571,
        1.0,
        0.9887175604818206,
        0.9554359905560885,
        0.9018241671106134,
        0.8305704108364301,
        0.7452476826029011,
        0.6501344202803414,
        0.55,
        0.44986557971965857,
        0.3547523173970989,
        0.26942958916356996,
        0.19817583288938662,
        0.14456400944391146,
        0.11128243951817937,
        0.1,
        0.1,
        0.1,
        0.1,
    ]
    assert actual == pytest.approx(handout, rel=1e-12, abs=1e-12)


def test_get_lr_cosine_schedule_without_warmup() -> None:
    # T_w = 0: the schedule starts at the peak and follows the cosine from the first iteration.
    assert _lr(0, warmup_iters=0) == pytest.approx(1.0, rel=1e-12)
    for it in (1, 10, 20, 21, 30):
        expected = 0.1 + 0.45 * (1 + math.cos(math.pi * min(it, 21) / 21))
        assert _lr(it, warmup_iters=0) == pytest.approx(expected, rel=1e-12, abs=1e-12)
