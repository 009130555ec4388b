"""Oracle of the training primitives: torch's own cross-entropy, AdamW and gradient clipping, the cosine
schedule in plain math, numpy batching and plain `torch.save` checkpoints.

Also home of the AdamW trajectory scenario shared by the graded comparison (`tests/test_optimizer.py`) and
the reference test that proves its tolerance separates correct optimizers from broken ones.
Nothing here may import `cs336_basics`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import IO, Any, BinaryIO

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------------------------------------
# Adapters (same names and parameters as tests/adapters.py)
# ---------------------------------------------------------------------------------------------------------


def run_cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(inputs.reshape(-1, inputs.shape[-1]), targets.reshape(-1))


def run_gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(list(parameters), max_l2_norm)


def get_adamw_cls() -> Any:
    return torch.optim.AdamW


def run_get_lr_cosine_schedule(
    it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int, cosine_cycle_iters: int
) -> float:
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it <= cosine_cycle_iters:
        angle = math.pi * (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
        return min_learning_rate + 0.5 * (1 + math.cos(angle)) * (max_learning_rate - min_learning_rate)
    return min_learning_rate


def run_get_batch(dataset: npt.NDArray, batch_size: int, context_length: int, device: str) -> tuple[Tensor, Tensor]:
    if len(dataset) < context_length + 1:
        raise ValueError(f"dataset of {len(dataset)} tokens is shorter than context_length + 1")
    starts = np.random.randint(0, len(dataset) - context_length, size=batch_size)
    x = np.stack([dataset[s : s + context_length] for s in starts]).astype(np.int64)
    y = np.stack([dataset[s + 1 : s + 1 + context_length] for s in starts]).astype(np.int64)
    return torch.tensor(x, device=device), torch.tensor(y, device=device)


def run_save_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    out: str | os.PathLike | BinaryIO | IO[bytes],
) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration}, out)


def run_load_checkpoint(
    src: str | os.PathLike | BinaryIO | IO[bytes], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> int:
    payload = torch.load(src)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    return payload["iteration"]


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


# ---------------------------------------------------------------------------------------------------------
# Snapshots
# ---------------------------------------------------------------------------------------------------------


def _adamw_snapshot() -> dict[str, np.ndarray]:
    """A single-group trajectory of torch.optim.AdamW on a linear least-squares problem."""
    generator = torch.Generator().manual_seed(1234)
    steps, lr, betas, eps, weight_decay = 40, 1e-3, (0.9, 0.95), 1e-8, 0.1
    weight0 = torch.randn(4, 5, generator=generator) * 0.5
    bias0 = torch.randn(4, generator=generator) * 0.1
    inputs = torch.randn(steps, 8, 5, generator=generator)
    targets = torch.randn(steps, 8, 4, generator=generator)
    weight, bias = torch.nn.Parameter(weight0.clone()), torch.nn.Parameter(bias0.clone())
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    weights, biases = [], []
    for step in range(steps):
        optimizer.zero_grad()
        F.mse_loss(inputs[step] @ weight.T + bias, targets[step]).backward()
        optimizer.step()
        weights.append(weight.detach().clone())
        biases.append(bias.detach().clone())
    return {
        "hyperparameters": np.array([lr, betas[0], betas[1], eps, weight_decay], dtype=np.float64),
        "weight0": weight0.numpy(),
        "bias0": bias0.numpy(),
        "inputs": inputs.numpy(),
        "targets": targets.numpy(),
        "expected_weights": torch.stack(weights).numpy(),
        "expected_biases": torch.stack(biases).numpy(),
    }


def _cross_entropy_snapshot() -> dict[str, np.ndarray]:
    """Logits of several scales, 2-d and 3-d, with F.cross_entropy's values and gradients."""
    generator = torch.Generator().manual_seed(4321)
    arrays: dict[str, np.ndarray] = {}
    cases = {
        "flat": (torch.randn(16, 50, generator=generator), (16,)),
        "seq": (torch.randn(2, 6, 50, generator=generator) * 3, (2, 6)),
        "large": (torch.randn(2, 6, 50, generator=generator) * 1000, (2, 6)),
    }
    for name, (logits, target_shape) in cases.items():
        targets = torch.randint(0, logits.shape[-1], target_shape, generator=generator)
        leaf = logits.clone().requires_grad_(True)
        loss = F.cross_entropy(leaf.reshape(-1, leaf.shape[-1]), targets.reshape(-1))
        loss.backward()
        arrays[f"{name}_logits"] = logits.numpy()
        arrays[f"{name}_targets"] = targets.numpy()
        arrays[f"{name}_loss"] = loss.detach().reshape(1).numpy()  # NOTE: write_npz stores 0-d arrays as (1,)
        arrays[f"{name}_grad"] = leaf.grad.numpy()
    return arrays


SNAPSHOTS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "training_adamw": _adamw_snapshot,
    "training_cross_entropy": _cross_entropy_snapshot,
}
