"""A model's weights without its wrappers: DistributedDataParallel's `module.`, torch.compile's `_orig_mod.`.

A model saved while wrapped carries the wrapper in every key (`module._orig_mod.layers.0.attn.q_proj.weight`),
and a wrapped model's `load_state_dict` wants them. The tools save and load the plain module, and read
whatever someone else saved by stripping the prefixes:

    torch.save(unwrap_model(model).state_dict(), path)        # keys as the plain model names them
    model.load_state_dict(strip_wrapper_prefixes(torch.load(path)))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

#: What each wrapper puts in front of every key: DistributedDataParallel, then torch.compile's OptimizedModule.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

V = TypeVar("V")


def strip_wrapper_prefixes(state: Mapping[Any, V]) -> dict[str, V]:
    """The state dict with every leading `module.` / `_orig_mod.` removed from its keys, in any nesting.

    >>> strip_wrapper_prefixes({"module._orig_mod.lm_head.weight": 0, "_orig_mod.ln_final.weight": 1})
    {'lm_head.weight': 0, 'ln_final.weight': 1}
    >>> strip_wrapper_prefixes({"layers.0.module.weight": 2})  # only leading prefixes: a layer may be named so
    {'layers.0.module.weight': 2}
    """
    out: dict[str, V] = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise ValueError(f"expected one tensor per name once wrapper prefixes are removed, got {name!r} twice")
        out[name] = value
    return out


def unwrap_model(model: Any) -> Any:
    """The plain module inside any nesting of DDP and `torch.compile`: its state-dict keys carry no prefix."""
    from torch import nn  # NOTE: here, not at the top: reading a state dict must not import torch
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


__all__ = ["WRAPPER_PREFIXES", "strip_wrapper_prefixes", "unwrap_model"]
