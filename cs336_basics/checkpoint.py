"""Checkpoints: everything needed to resume training exactly where it stopped.

A checkpoint is one `torch.save` file holding a plain dict:

    {"format": "cs336-checkpoint", "version": 1, "iteration": int,
     "model": model state dict, "optimizer": optimizer state dict or None,
     "config": plain dict or None, "extra": plain data or None, "rng": RNG states or None}

Writes to a path are atomic (a temporary file in the same directory, then a rename), so a crash mid-save
never leaves a half-written checkpoint behind. Loading uses `torch.load(weights_only=True)`: a checkpoint
holds only tensors and plain Python data, and a foreign pickle cannot run code.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import torch

FORMAT = "cs336-checkpoint"
VERSION = 1
_COMPILED_PREFIX = "_orig_mod."

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind `torch.compile` and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _strip_compiled_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the `_orig_mod.` prefix that a `torch.compile`d model puts on every key.

    >>> list(_strip_compiled_prefix({"_orig_mod.lm_head.weight": 0, "ln_final.weight": 1}))
    ['lm_head.weight', 'ln_final.weight']
    """
    return {key.removeprefix(_COMPILED_PREFIX): value for key, value in state.items()}


def _config_to_dict(config: Any) -> dict[str, Any] | None:
    if config is None or isinstance(config, dict):
        return config
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    raise TypeError(f"config must be a dataclass, a dict or None, got {type(config).__name__}")


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


def save_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    iteration: int,
    out: PathOrFile,
    *,
    config: Any = None,
    extra: Any = None,
    save_rng: bool = False,
) -> None:
    """Save the model, the optimizer, the iteration and optionally a config, extra data and RNG states.

    Args:
        model: the model (a `torch.compile`d or DDP-wrapped one is saved without its wrapper's prefixes).
        optimizer: the optimizer, or None.
        iteration: the number of completed training steps.
        out: a path (written atomically) or a binary file object opened for writing.
        config: a dataclass (saved through its `to_dict()` when it has one) or a plain dict.
        extra: any plain data (numbers, strings, lists, dicts, tensors) to store alongside.
        save_rng: also store the torch, CUDA, numpy and Python RNG states for a bit-exact resume.
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "iteration": int(iteration),
        "model": _strip_compiled_prefix(_unwrap(model).state_dict()),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "config": _config_to_dict(config),
        "extra": extra,
        "rng": _capture_rng() if save_rng else None,
    }
    if not isinstance(out, str | os.PathLike):
        torch.save(payload, out)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits beside the target (same file system, so the rename is atomic) and is created
    # with open() rather than mkstemp so that it gets the usual permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(src: PathOrFile, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint's raw payload (see the module docstring for its keys)."""
    name = os.fspath(src) if isinstance(src, str | os.PathLike) else getattr(src, "name", "<file object>")
    if isinstance(src, str | os.PathLike) and not Path(src).is_file():
        raise FileNotFoundError(f"checkpoint {name} does not exist")
    try:
        payload = torch.load(src, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise ValueError(f"{name} is not a readable checkpoint (truncated or foreign file?): {error}") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{name} is not a checkpoint: expected a dict payload, got {type(payload).__name__}")
    if payload.get("format") != FORMAT:
        # Also accept the plain {"model", "optimizer", "iteration"} dict that most course solutions write.
        if not {"model", "iteration"} <= payload.keys():
            raise ValueError(
                f"{name} is not a checkpoint: expected format {FORMAT!r} or keys 'model' and 'iteration', "
                f"got keys {sorted(map(str, payload))[:8]}"
            )
        payload = {"optimizer": None, "config": None, "extra": None, "rng": None, **payload}
    elif payload.get("version", 0) > VERSION:
        raise ValueError(f"{name} has checkpoint version {payload['version']}; this code reads up to {VERSION}")
    return payload


def load_checkpoint(
    src: PathOrFile,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: str | torch.device | None = None,
    restore_rng: bool = False,
) -> int:
    """Restore `model` (and `optimizer`, and optionally the RNG states) from `src`; return the iteration.

    Tensors are loaded onto `map_location`, by default the device of the model's parameters (CPU for a
    model without any), so a GPU checkpoint loads on a CPU-only machine.
    """
    if map_location is None:
        first = next(iter(model.parameters()), None)
        map_location = first.device if first is not None else torch.device("cpu")
    payload = read_checkpoint(src, map_location=map_location)
    try:
        _unwrap(model).load_state_dict(_strip_compiled_prefix(payload["model"]))
    except RuntimeError as error:
        raise ValueError(f"the checkpoint's weights do not fit this model: {error}") from error
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError("the checkpoint holds no optimizer state, but an optimizer was given to restore")
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng:
        if payload.get("rng") is None:
            raise ValueError("restore_rng=True, but the checkpoint was saved without RNG states (save_rng=False)")
        _restore_rng(payload["rng"])
    return int(payload["iteration"])
