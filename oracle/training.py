"""Oracle of the training primitives: torch's own cross-entropy, AdamW and gradient clipping, the cosine
schedule in plain math, numpy batching and plain `torch.save` checkpoints.

Also home of the AdamW trajectory scenario shared by the graded comparison (`tests/test_optimizer.py`) and
the reference test that proves its tolerance separates correct optimizers from broken ones.
Nothing here may import `cs336_basics`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import partial
from typing import IO, Any, BinaryIO

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from cs336_grading.expected import training as expected
from cs336_grading.expected.draws import BUILDERS, draw
from cs336_grading.expected.training import ADAMW_ATOL, assert_trajectories_match  # noqa: F401 - ADAMW_ATOL re-exported
from tests.scenarios import adamw_trajectory


def adamw_scenario(optimizer_cls: Callable[..., torch.optim.Optimizer]) -> list[list[Tensor]]:
    """The AdamW scenario of the graded tests (`tests/scenarios.py`, shipped to the worker) run here."""
    return adamw_trajectory(optimizer_cls)


def assert_adamw_matches_torch(optimizer_cls: Callable[..., torch.optim.Optimizer]) -> None:
    """`optimizer_cls` follows torch.optim.AdamW's trajectory on the scenario within ADAMW_ATOL."""
    assert_trajectories_match(adamw_scenario(optimizer_cls), adamw_scenario(torch.optim.AdamW))


# ---------------------------------------------------------------------------------------------------------
# Adapters (same names and parameters as tests/adapters.py)
# ---------------------------------------------------------------------------------------------------------


def run_cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    return expected.cross_entropy(inputs, targets)


def run_gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
    expected.gradient_clipping(parameters, max_l2_norm)


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


# The public draws of the graded training cases (their home: `cs336_grading/expected/draws.py`).
SNAPSHOTS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    name: partial(draw, name) for name in BUILDERS if name.startswith("training_")
}
