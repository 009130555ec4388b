"""Wrapper prefixes: DDP's `module.` and torch.compile's `_orig_mod.` come off, in any nesting, and nothing else does."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import cs336_common.state_dict
from cs336_common.state_dict import strip_wrapper_prefixes, unwrap_model


def tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_docstring_examples() -> None:
    result = doctest.testmod(cs336_common.state_dict)
    assert result.attempted > 0 and result.failed == 0


def test_a_compiled_models_state_dict_loads_into_the_plain_model() -> None:
    model = tiny()
    compiled = torch.compile(model)  # lazy: nothing is compiled until the first call
    saved = compiled.state_dict()
    assert next(iter(saved)).startswith("_orig_mod.")  # what torch.compile really writes
    fresh = tiny()
    fresh.load_state_dict(strip_wrapper_prefixes(saved))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert unwrap_model(compiled) is model and unwrap_model(model) is model


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "module.module."]
)
def test_both_prefixes_in_any_nesting(prefix: str) -> None:
    state = {f"{prefix}{name}": value for name, value in tiny().state_dict().items()}
    assert list(strip_wrapper_prefixes(state)) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_only_leading_prefixes_and_no_silent_collisions() -> None:
    assert list(strip_wrapper_prefixes({"blocks.module.weight": 0, "x._orig_mod.y": 1})) == [
        "blocks.module.weight",
        "x._orig_mod.y",
    ]
    with pytest.raises(ValueError, match="'lm_head.weight' twice"):
        strip_wrapper_prefixes({"lm_head.weight": 0, "module.lm_head.weight": 1})
