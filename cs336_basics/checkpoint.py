"""Checkpoints, as the handout asks: the model, the optimizer and the iteration in one file, and back.

    save_checkpoint(model, optimizer, iteration, "ckpt.pt")     # {"model", "optimizer", "iteration"}
    iteration = load_checkpoint("ckpt.pt", model, optimizer)

The file is one `torch.save` of a plain dict of state dicts, the layout most course solutions write, so a
checkpoint of any of them loads here. A write to a path is atomic (a temporary file beside it, then a rename):
a crash mid-save never leaves half a checkpoint behind. Loading uses `torch.load(weights_only=True)`: a
checkpoint holds only tensors and plain Python data, and a foreign pickle cannot run code.

The trainer's run checkpoints (config, RNG and sampler states, versioned) are the tools' business
(`cs336_lab/run_checkpoint.py`); they hold the same three keys, so `load_checkpoint` reads them too.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any, BinaryIO

import torch

COMPILE_PREFIX = "_orig_mod."

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind `torch.compile` (`_orig_mod`) and DistributedDataParallel (`module`) wrappers."""
    ddp = torch.nn.parallel.DistributedDataParallel
    while isinstance(getattr(model, "_orig_mod", None), torch.nn.Module) or isinstance(model, ddp):
        model = model.module if isinstance(model, ddp) else model._orig_mod
    return model


def strip_compile_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the `_orig_mod.` prefix that a `torch.compile`d model puts on every key.

    >>> list(strip_compile_prefix({"_orig_mod.lm_head.weight": 0, "ln_final.weight": 1}))
    ['lm_head.weight', 'ln_final.weight']
    """
    return {key.removeprefix(COMPILE_PREFIX): value for key, value in state.items()}


def save_checkpoint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int, out: PathOrFile
) -> None:
    """Save the model's and the optimizer's state dicts and the iteration (completed steps) to `out`.

    `out` is a path (written atomically, parent directories created) or a binary file object. A compiled or
    DDP-wrapped model is saved without its wrapper's key prefixes; `optimizer` may be None (weights only).
    """
    payload = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "iteration": int(iteration),
    }
    if not isinstance(out, str | os.PathLike):
        torch.save(payload, out)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same directory: the rename stays atomic
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(src: PathOrFile, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint's dict, checked to hold at least `model` and `iteration` (clear errors otherwise)."""
    name = os.fspath(src) if isinstance(src, str | os.PathLike) else getattr(src, "name", "<file object>")
    try:
        payload = torch.load(src, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {name} does not exist") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise ValueError(f"{name} is not a readable checkpoint (truncated or foreign file?): {error}") from error
    found = f"got {type(payload).__name__}" if not isinstance(payload, dict) else None
    if found is None and not {"model", "iteration"} <= payload.keys():
        found = f"expected keys 'model' and 'iteration', got keys {sorted(map(str, payload))[:8]}"
    if found is not None:
        raise ValueError(f"{name} is not a checkpoint: expected a dict payload, {found}")
    return {"optimizer": None, **payload}


def load_checkpoint(
    src: PathOrFile,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: str | torch.device | None = None,
) -> int:
    """Restore `model` (and `optimizer`) from `src`; return the saved iteration.

    Tensors are loaded onto `map_location`, by default the device of the model's parameters (CPU for a
    model without any), so a GPU checkpoint loads on a CPU-only machine.
    """
    if map_location is None:
        first = next(iter(model.parameters()), None)
        map_location = first.device if first is not None else torch.device("cpu")
    payload = read_checkpoint(src, map_location=map_location)
    try:
        _unwrap(model).load_state_dict(strip_compile_prefix(payload["model"]))
    except RuntimeError as error:
        raise ValueError(f"the checkpoint's weights do not fit this model: {error}") from error
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError("the checkpoint holds no optimizer state, but an optimizer was given to restore")
        optimizer.load_state_dict(payload["optimizer"])
    return int(payload["iteration"])
