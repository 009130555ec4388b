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

from cs336_grading.expected import training as expected
from cs336_grading.expected.training import ADAMW_ATOL, adamw_scenario, assert_adamw_matches_torch  # noqa: F401

# ---------------------------------------------------------------------------------------------------------
# Adapters (same names and parameters as tests/adapters.py)
# ---------------------------------------------------------------------------------------------------------


def run_cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    return expected.cross_entropy(inputs, targets)


def run_gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
    expected.clip_gradients(parameters, max_l2_norm)


def get_adamw_cls() -> Any:
    return torch.optim.AdamW


def run_get_lr_cosine_schedule(
    it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int, cosine_cycle_iters: int
) -> float:
    return expected.cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters)


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
