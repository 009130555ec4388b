"""Graded tests of checkpointing: save after N steps, reload into fresh objects, continue identically.

The optimizer is torch's own AdamW: checkpointing is graded on its own, whether or not the student's
AdamW works (any `torch.optim.Optimizer` must round-trip through save/load).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from .adapters import run_load_checkpoint, run_save_checkpoint


class _TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.hidden = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, 11)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.embed(tokens))))


def _fresh(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = _TinyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    return model, optimizer


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(99)
    return [(torch.randint(0, 11, (4, 6), generator=generator), torch.randint(0, 11, (4, 6), generator=generator))
            for _ in range(count)]  # fmt: skip


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> list[float]:
    losses = []
    for tokens, targets in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(params=["path", "str-path", "file-object"], ids=str)
def checkpoint_target(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], object]:
    """Returns a factory of (save target, load source) pairs of the parametrised kind."""
    kind = request.param
    if kind == "file-object":
        buffer = io.BytesIO()

        def rewound() -> io.BytesIO:
            buffer.seek(0)
            return buffer

        return lambda: (buffer, rewound)
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    target = str(path) if kind == "str-path" else path
    return lambda: (target, lambda: target)


def test_checkpointing_resume_is_exact(checkpoint_target: Callable[[], tuple]) -> None:
    batches = _batches(14)
    model, optimizer = _fresh(seed=0)
    uninterrupted = _train(model, optimizer, batches)

    first_model, first_optimizer = _fresh(seed=0)
    _train(first_model, first_optimizer, batches[:8])
    target, source = checkpoint_target()
    run_save_checkpoint(first_model, first_optimizer, 8, target)

    resumed_model, resumed_optimizer = _fresh(seed=123)  # different weights: all must come from the file
    iteration = run_load_checkpoint(source(), resumed_model, resumed_optimizer)
    assert iteration == 8
    for (name, got), want in zip(resumed_model.state_dict().items(), first_model.state_dict().values(), strict=True):
        assert torch.equal(got, want), f"{name} differs after loading"
    resumed = _train(resumed_model, resumed_optimizer, batches[8:])
    # The same float32 operations on the same values: the continued losses are identical, not just close.
    assert resumed == uninterrupted[8:], f"resumed losses {resumed} != uninterrupted {uninterrupted[8:]}"
    for (name, got), want in zip(resumed_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(got, want), f"{name} differs from the uninterrupted run"


def test_checkpointing_restores_the_optimizer_state(tmp_path: Path) -> None:
    model, optimizer = _fresh(seed=1)
    _train(model, optimizer, _batches(3))
    run_save_checkpoint(model, optimizer, 3, tmp_path / "ckpt.pt")
    other_model, other_optimizer = _fresh(seed=2)
    run_load_checkpoint(tmp_path / "ckpt.pt", other_model, other_optimizer)
    saved, loaded = optimizer.state_dict(), other_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys()
    for index, state in saved["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, loaded["state"][index][key]), f"state[{index}][{key!r}] differs"
            else:
                assert value == loaded["state"][index][key], f"state[{index}][{key!r}] differs"


def test_checkpointing_iteration_round_trips(tmp_path: Path) -> None:
    model, optimizer = _fresh(seed=3)
    for iteration in (0, 1, 123_456):
        run_save_checkpoint(model, optimizer, iteration, tmp_path / f"ckpt-{iteration}.pt")
    for iteration in (123_456, 0, 1):
        assert run_load_checkpoint(tmp_path / f"ckpt-{iteration}.pt", model, optimizer) == iteration
