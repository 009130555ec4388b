"""Expected values of the training-primitive tests, computed at test time: torch's own cross-entropy,
gradient clipping and AdamW, and the cosine schedule in plain math.

The grading side of the harness: the graded tests call it, student code never does (under `cs336 grade` it
runs only in the grader's process). It never imports `cs336_basics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    """The mean cross-entropy over every leading dimension (`F.cross_entropy` on the flattened batch)."""
    return F.cross_entropy(inputs.reshape(-1, inputs.shape[-1]), targets.reshape(-1))


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
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
# the correct variants and 30x below the nearest mistake; reference_tests/test_training_primitives.py
# proves it with these variants written as small optimizers.
ADAMW_ATOL = 1e-4
ADAMW_STEPS = 60
_LATE_START = 10  # a parameter that first receives a gradient at this step (exposes a shared step count)
_LR_CHANGE = 30  # every group's lr is halved here, as a schedule would (exposes an lr cached in __init__)


def adamw_scenario(optimizer_cls: Callable[..., torch.optim.Optimizer]) -> list[list[Tensor]]:
    """Train a tiny network with `optimizer_cls` and return every parameter after every step.

    Two parameter groups with different lr, betas, eps and weight decay; a frozen parameter (never has a
    gradient, so it must never move, not even by weight decay); a parameter that starts receiving gradients
    only at step `_LATE_START`; the learning rates halved at step `_LR_CHANGE`.
    """
    generator = torch.Generator().manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(8, 6, generator=generator) * 0.4)
    b1 = torch.nn.Parameter(torch.randn(8, generator=generator) * 0.1)
    w2 = torch.nn.Parameter(torch.randn(4, 8, generator=generator) * 0.35)
    b2 = torch.nn.Parameter(torch.randn(4, generator=generator) * 0.1)
    late = torch.nn.Parameter(torch.randn(4, generator=generator))
    frozen = torch.nn.Parameter(torch.randn(3, generator=generator), requires_grad=False)
    inputs = torch.randn(ADAMW_STEPS, 16, 6, generator=generator)
    targets = torch.randn(ADAMW_STEPS, 16, 4, generator=generator)
    params = [w1, w2, frozen, b1, b2, late]
    optimizer = optimizer_cls(
        [
            {"params": [w1, w2, frozen]},
            {"params": [b1, b2, late], "lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-10, "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.1,
    )
    trajectory = []
    for step in range(ADAMW_STEPS):
        if step == _LR_CHANGE:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
        optimizer.zero_grad(set_to_none=True)
        out = torch.tanh(inputs[step] @ w1.T + b1) @ w2.T + b2
        if step >= _LATE_START:
            out = out + late
        F.mse_loss(out, targets[step]).backward()
        optimizer.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def assert_adamw_matches_torch(optimizer_cls: Callable[..., torch.optim.Optimizer]) -> None:
    """The graded comparison: `optimizer_cls` follows torch.optim.AdamW's trajectory within ADAMW_ATOL."""
    expected = adamw_scenario(torch.optim.AdamW)
    actual = adamw_scenario(optimizer_cls)
    names = ["w1", "w2", "frozen", "b1", "b2", "late"]
    for step, (got_params, want_params) in enumerate(zip(actual, expected, strict=True)):
        for name, got, want in zip(names, got_params, want_params, strict=True):
            torch.testing.assert_close(
                got, want, rtol=0, atol=ADAMW_ATOL, msg=lambda m, s=step, n=name: f"step {s}, {n}: {m}"
            )
