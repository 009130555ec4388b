"""The one device resolver: what "auto" picks, and device names refused with the expected and the actual."""

from __future__ import annotations

import doctest

import pytest
import torch

import cs336_common.device
from cs336_common.device import select_device


def test_docstring_examples() -> None:
    result = doctest.testmod(cs336_common.device)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("cuda", "mps", "distributed", "expected"),
    [
        (True, True, False, "cuda:0"),
        (False, True, False, "mps"),
        (False, True, True, "cpu"),
        (False, False, False, "cpu"),
        (True, False, True, "cuda:1"),
    ],
    ids=["cuda-first", "mps-next", "no-mps-under-torchrun", "cpu-last", "rank-owns-its-gpu"],
)
def test_auto(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, distributed: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert select_device("auto", local_rank=1, distributed=distributed) == torch.device(expected)


@pytest.mark.parametrize(
    ("device", "distributed", "message"),
    [
        ("tpu:0", False, "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu:0'"),
        ("cuda", False, "device 'cuda' requested but CUDA is not available"),
        ("mps", False, "device 'mps' requested but MPS is not available"),
        ("mps", True, r"supports 'cuda' \(NCCL\) or 'cpu' \(gloo\), got 'mps'"),
    ],
    ids=["unknown", "no-cuda", "no-mps", "mps-under-torchrun"],
)
def test_refusals(monkeypatch: pytest.MonkeyPatch, device: str, distributed: bool, message: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        select_device(device, distributed=distributed)
