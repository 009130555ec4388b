"""The tools' one reading of a device name: "auto", "cpu", "cuda", "cuda:N", "mps" -> a checked `torch.device`.

`cs336 train --device`, the distributed helpers and the benchmarks all resolve a device here, so "auto" means
the same thing everywhere. NOTE: `cs336_basics.data` checks the device given to `get_batch` by itself: the
assignment stands alone and never imports this package.
"""

from __future__ import annotations

import torch


def select_device(device: str = "auto", *, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """Map the user's device string to this process's device: "auto" picks CUDA, else MPS (one process), else CPU.

    Under `torchrun` (`distributed=True`) a rank owns `cuda:{local_rank}` and only CUDA or CPU is allowed.

    >>> select_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif not distributed and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if distributed:
            # NOTE: under torchrun every rank owns exactly one GPU, chosen by LOCAL_RANK; an explicit index
            # ("cuda:1") would put all ranks of a node on the same GPU.
            if local_rank >= torch.cuda.device_count():
                raise ValueError(
                    f"LOCAL_RANK {local_rank} needs at least {local_rank + 1} GPUs, found {torch.cuda.device_count()}"
                )
            dev = torch.device("cuda", local_rank)
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif distributed and dev.type != "cpu":
        raise ValueError(f"distributed training supports 'cuda' (NCCL) or 'cpu' (gloo), got {device!r}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    return dev


__all__ = ["select_device"]
