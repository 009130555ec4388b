"""The trainer's checkpoint of a run: everything needed to resume exactly where it stopped.

A run checkpoint is one `torch.save` file holding a plain dict, written from `model.state_dict()` and
`optimizer.state_dict()`, so it works with any implementation of the assignment:

    {"format": "cs336-checkpoint", "version": 1, "iteration": int,
     "model": model state dict, "optimizer": optimizer state dict or None,
     "config": plain dict or None, "extra": plain data or None, "rng": RNG states or None}

It holds the handout's three keys (`model`, `optimizer`, `iteration`), so the assignment's own
`load_checkpoint` reads it too; and `read_run_checkpoint` accepts such a plain three-key file. Writes are
atomic and durable (`cs336_common/atomic.py`: temporary file, fsync, rename, fsync of the directory), so a crash or a
SIGKILL mid-save never leaves a half-written checkpoint. Loading uses `torch.load(weights_only=True)`: a
checkpoint holds only tensors and plain Python data, and a foreign pickle cannot run code.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cs336_common.atomic import atomic_open
from cs336_common.state_dict import unwrap_model
from cs336_lab.errors import describe_file

FORMAT = "cs336-checkpoint"
VERSION = 1

__all__ = ["FORMAT", "VERSION", "save_run_checkpoint", "read_run_checkpoint", "load_run_checkpoint"]


def _capture_rng() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        # NOTE: only the current device's state; get_rng_state_all() would create a CUDA context on every
        # GPU of the machine (hundreds of MB each) from every DDP rank.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }


def _restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"].cpu())
    state = rng["numpy"]
    np.random.set_state(
        {
            "bit_generator": state["bit_generator"],
            "state": {"key": state["key"].numpy().astype(np.uint32), "pos": state["pos"]},
            "has_gauss": state["has_gauss"],
            "gauss": state["gauss"],
        }
    )
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def save_run_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    iteration: int,
    *,
    config: dict[str, Any] | None = None,
    extra: Any = None,
    save_rng: bool = False,
) -> None:
    """Write a run checkpoint to `path` (atomically, durably); a wrapped model is saved without its wrapper.

    `config` and `extra` are plain data (numbers, strings, lists, dicts, tensors); `save_rng` also stores the
    torch, CUDA, numpy and Python RNG states for a bit-exact resume.
    """
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "iteration": int(iteration),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "config": config,
        "extra": extra,
        "rng": _capture_rng() if save_rng else None,
    }
    try:
        with atomic_open(path, "wb") as handle:
            torch.save(payload, handle)
    except RuntimeError as error:  # NOTE: torch reports a failed write (a full disk) as a RuntimeError
        if isinstance(error.__context__, OSError):
            cause = error.__context__
            raise OSError(cause.errno, cause.strerror, os.fspath(path)) from error
        raise


def read_run_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint's payload (see the module docstring for its keys)."""
    path = Path(path)
    if not path.is_file():
        found = "a directory" if path.is_dir() else "nothing"
        raise FileNotFoundError(f"checkpoint {path}: expected a checkpoint file, found {found}")
    _check_looks_like_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # NOTE: torch's message advises weights_only=False: unsafe, not ours
        refused = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        refused = refused.split(" was not an allowed global")[0][:200]  # the rest advises allowing it
        raise ValueError(
            f"{path} is not a checkpoint of tensors and plain data: it holds something a checkpoint never does "
            f"({refused}); refused, since loading it could run code"
        ) from error
    except Exception as error:  # a truncated or foreign file: torch raises RuntimeError, EOFError, KeyError...
        first = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        raise ValueError(f"{path} is not a readable checkpoint (truncated or damaged?): {first}") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not a checkpoint: expected a dict payload, got {type(payload).__name__}")
    if payload.get("format") != FORMAT:
        # Also accept the plain {"model", "optimizer", "iteration"} dict of the handout's save_checkpoint.
        if not {"model", "iteration"} <= payload.keys():
            raise ValueError(
                f"{path} is not a checkpoint: expected format {FORMAT!r} or keys 'model' and 'iteration', "
                f"got keys {sorted(map(str, payload))[:8]}"
            )
        payload = {"optimizer": None, "config": None, "extra": None, "rng": None, **payload}
    elif payload.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {payload['version']}; this code reads up to {VERSION}")
    return payload


def _check_looks_like_checkpoint(path: Path) -> None:
    """Refuse a file that is no `torch.save` file at all (a zip archive, or the old pickle format) by its bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path} is not a readable checkpoint: truncated or damaged (a zip archive without its end)"
            )
        return
    if not head.startswith(b"\x80"):  # the pickle protocol byte of torch's legacy format
        raise ValueError(
            f"{path} is not a checkpoint: expected a file written by torch.save (a zip archive), got {describe_file(path)}"
        )


def load_run_checkpoint(
    payload: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = False,
) -> int:
    """Restore `model` (and `optimizer`, and optionally the RNG states) from a payload; return the iteration."""
    # Check everything asked for is there before changing anything.
    if optimizer is not None and payload["optimizer"] is None:
        raise ValueError("the checkpoint holds no optimizer state, but an optimizer was given to restore")
    if restore_rng and payload.get("rng") is None:
        raise ValueError("restore_rng=True, but the checkpoint was saved without RNG states (save_rng=False)")
    try:
        unwrap_model(model).load_state_dict(payload["model"])
    except RuntimeError as error:
        raise ValueError(f"the checkpoint's weights do not fit this model: {error}") from error
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng:
        _restore_rng(payload["rng"])
    return int(payload["iteration"])
