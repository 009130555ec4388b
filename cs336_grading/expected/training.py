"""Expected values of the training-primitive tests, computed at test time: torch's own cross-entropy,
gradient clipping and AdamW, and the cosine schedule in plain math.

The grading side of the harness: the graded tests call it, student code never does (under `cs336 grade` it
runs only in the grader's process). It never imports `cs336_basics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    """The mean cross-entropy over every leading dimension (`F.cross_entropy` on the flattened batch)."""
    return F.cross_entropy(inputs.reshape(-1, inputs.shape[-1]), targets.reshape(-1))


def gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_`: one global L2 norm over every gradient."""
    torch.nn.utils.clip_grad_norm_(list(parameters), max_l2_norm)


def cosine_schedule(
    it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int, cosine_cycle_iters: int
) -> float:
    """The handout's schedule: linear warm-up, cosine decay to `min_learning_rate`, then constant."""
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it <= cosine_cycle_iters:
        angle = math.pi * (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
        return min_learning_rate + 0.5 * (1 + math.cos(angle)) * (max_learning_rate - min_learning_rate)
    return min_learning_rate


# ---------------------------------------------------------------------------------------------------------
# The AdamW scenario
# ---------------------------------------------------------------------------------------------------------

# Measured on this scenario (max |Δθ| over all steps against torch.optim.AdamW, float32 on CPU):
#   correct, decay after the Adam step (handout order) ...... 3.2e-6
#   correct, decay before the Adam step (torch order) ....... 1.8e-7
#   correct, ε added to sqrt(v̂) with m̂, v̂ (torch form) ...... 3.1e-6
#   decay scaled by the bias-corrected α_t instead of α ..... 3.4e-3
#   shared step count (one t for all parameters) ............ 1.5e-2
#   lr read once in __init__ (ignores the mid-run change) ... 4.7e-2
#   coupled L2 decay (λθ added to the gradient) ............. 5.7e-2
#   no bias correction ...................................... 1.6e-1
# The two correct orders differ by α·λ·(Adam update) ≈ α²λ per step; α = 1e-3 keeps that ~1000x below the
# effect of every mistake (≈ αλθ or ≈ α per step). ε is tiny in both groups so that where it is added
# (sqrt(v) or sqrt(v̂), both found in correct solutions) does not matter. A tolerance of 1e-4 sits 30x above
# the correct variants and 30x below the nearest mistake; project_tests/basics/test_training_primitives.py
# proves it with these variants written as small optimizers (the scenario run there: `oracle/training.py`).
ADAMW_ATOL = 1e-4


def assert_trajectories_match(actual: list[list[Tensor]], expected: list[list[Tensor]]) -> None:
    """The graded comparison: a trajectory (parameters after each step) within ADAMW_ATOL of torch's."""
    names = ["w1", "w2", "frozen", "b1", "b2", "late"]
    assert len(actual) == len(expected), f"expected {len(expected)} steps, got {len(actual)}"
    for step, (got_params, want_params) in enumerate(zip(actual, expected, strict=True)):
        for name, got, want in zip(names, got_params, want_params, strict=True):
            torch.testing.assert_close(
                got, want, rtol=0, atol=ADAMW_ATOL, msg=lambda m, s=step, n=name: f"step {s}, {n}: {m}"
            )
