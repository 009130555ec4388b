"""The trainer's run checkpoints (`cs336_lab/run_checkpoint.py`): format, config and extras, RNG states."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cs336_basics.checkpoint import load_checkpoint
from cs336_basics.data import get_batch
from cs336_basics.loss import cross_entropy
from cs336_basics.optimizer import AdamW, gradient_clipping
from cs336_common.atomic import TEMP_GLOB
from cs336_lab.run_checkpoint import FORMAT, VERSION, load_run_checkpoint, read_run_checkpoint, save_run_checkpoint
from project_tests.basics.test_training_primitives import _model_and_optimizer


def load(path: Path, model: torch.nn.Module, optimizer: Any, *, restore_rng: bool = False) -> int:
    return load_run_checkpoint(read_run_checkpoint(path, map_location="cpu"), model, optimizer, restore_rng=restore_rng)


def test_checkpoint_payload_has_format_config_and_extra(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    path = tmp_path / "deep" / "dir" / "ckpt.pt"  # parent directories are created
    save_run_checkpoint(
        path, model, optimizer, 7, config={"width": 4, "name": "tiny"}, extra={"tokens_seen": 123, "best": math.inf}
    )
    payload = read_run_checkpoint(path)
    assert payload["format"] == FORMAT and payload["version"] == VERSION and payload["iteration"] == 7
    assert payload["config"] == {"width": 4, "name": "tiny"}
    assert payload["extra"] == {"tokens_seen": 123, "best": math.inf}
    assert payload["rng"] is None
    assert list(payload["model"]) == list(model.state_dict())


def test_checkpoint_rng_state_round_trip(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    save_run_checkpoint(tmp_path / "ckpt.pt", model, optimizer, 1, save_rng=True)
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    load(tmp_path / "ckpt.pt", model, optimizer, restore_rng=True)
    actual = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(actual[0], expected[0]) and np.array_equal(actual[1], expected[1])
    assert actual[2:] == expected[2:]
    save_run_checkpoint(tmp_path / "no-rng.pt", model, optimizer, 1)
    with pytest.raises(ValueError, match="without RNG states"):
        load(tmp_path / "no-rng.pt", model, optimizer, restore_rng=True)


def test_resume_with_global_rng_batches_is_exact(tmp_path: Path) -> None:
    """Batches drawn from torch's global RNG: saving and restoring it makes the resumed run identical."""
    dataset = np.random.default_rng(0).integers(0, 20, size=500).astype(np.uint16)

    def fresh(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Embedding(20, 16), torch.nn.Linear(16, 20))
        return model, AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)

    def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
        losses = []
        for _ in range(steps):
            x, y = get_batch(dataset, 4, 8, "cpu")
            loss = cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            gradient_clipping(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
        return losses

    model, optimizer = fresh(0)
    uninterrupted = train(model, optimizer, 12)
    model, optimizer = fresh(0)
    train(model, optimizer, 5)
    save_run_checkpoint(tmp_path / "ckpt.pt", model, optimizer, 5, save_rng=True)
    resumed_model, resumed_optimizer = fresh(99)  # also moves the global RNG elsewhere
    assert load(tmp_path / "ckpt.pt", resumed_model, resumed_optimizer, restore_rng=True) == 5
    assert train(resumed_model, resumed_optimizer, 7) == uninterrupted[5:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_and_checkpoints(tmp_path: Path) -> None:
    x, y = get_batch(np.arange(1000, dtype=np.uint16), 4, 16, "cuda", generator=torch.Generator().manual_seed(0))
    assert x.device.type == "cuda" and torch.equal(y, x + 1)
    model = torch.nn.Linear(4, 3, device="cuda")
    optimizer = AdamW(model.parameters())
    model(torch.randn(2, 4, device="cuda")).sum().backward()
    optimizer.step()
    torch.cuda.manual_seed(5)
    save_run_checkpoint(tmp_path / "gpu.pt", model, optimizer, 1, save_rng=True)
    expected = torch.rand(3, device="cuda")
    cpu_model = torch.nn.Linear(4, 3)
    cpu_optimizer = AdamW(cpu_model.parameters())
    load(tmp_path / "gpu.pt", cpu_model, cpu_optimizer, restore_rng=True)  # onto the model's device
    assert all(s["exp_avg"].device.type == "cpu" for s in cpu_optimizer.state.values())
    assert torch.equal(torch.rand(3, device="cuda"), expected), "the CUDA RNG state is restored"
    assert torch.equal(cpu_model.weight, model.weight.cpu())


def test_run_checkpoint_loads_with_the_assignments_load_checkpoint(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    save_run_checkpoint(tmp_path / "run.pt", model, optimizer, 3, config={"d_model": 4}, save_rng=True)
    fresh, fresh_optimizer = _model_and_optimizer(seed=1)
    assert load_checkpoint(tmp_path / "run.pt", fresh, fresh_optimizer) == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_a_failed_run_checkpoint_write_keeps_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    save_run_checkpoint(tmp_path / "ckpt.pt", model, optimizer, 1)
    good = (tmp_path / "ckpt.pt").read_bytes()
    with pytest.raises(Exception, match="lambda"):  # pickling fails after the header was written
        save_run_checkpoint(tmp_path / "ckpt.pt", model, optimizer, 2, extra={"unpicklable": lambda: 0})
    assert (tmp_path / "ckpt.pt").read_bytes() == good
    assert os.listdir(tmp_path) == ["ckpt.pt"] and not list(tmp_path.glob(TEMP_GLOB))


def test_run_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="found a directory"):
        read_run_checkpoint(tmp_path)
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cut.pt is not a readable checkpoint"):
        read_run_checkpoint(tmp_path / "cut.pt")
