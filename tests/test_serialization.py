"""Graded tests of checkpointing: save after N steps, reload into fresh objects, continue identically.

The training and the save/load round trips run as scenarios (`tests/scenarios.py`), where student code runs.
The optimizer is torch's own AdamW: checkpointing is graded on its own, whether or not the student's AdamW
works (any `torch.optim.Optimizer` must round-trip through save/load).
"""

from __future__ import annotations

import pytest
import torch

from tests import scenarios


def _assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert list(got) == list(want), f"{what}: parameter names {list(got)} != {list(want)}"
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs {what}"


@pytest.mark.parametrize("kind", ["path", "str-path", "file-object"], ids=str)
def test_checkpointing_resume_is_exact(kind: str) -> None:
    run = scenarios.run("checkpoint_resume", kind)
    assert run["iteration"] == 8
    _assert_same_state(run["loaded"], run["saved"], "after loading")
    # The same float32 operations on the same values: the continued losses are identical, not just close.
    resumed, uninterrupted = run["resumed"], run["uninterrupted"][8:]
    assert resumed == uninterrupted, f"resumed losses {resumed} != uninterrupted {uninterrupted}"
    _assert_same_state(run["final_resumed"], run["final_uninterrupted"], "from the uninterrupted run")


def test_checkpointing_restores_the_optimizer_state() -> None:
    saved, loaded = scenarios.run("checkpoint_optimizer_state")
    assert saved["param_groups"] == loaded["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys()
    for index, state in saved["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, loaded["state"][index][key]), f"state[{index}][{key!r}] differs"
            else:
                assert value == loaded["state"][index][key], f"state[{index}][{key!r}] differs"


def test_checkpointing_iteration_round_trips() -> None:
    assert scenarios.run("checkpoint_iterations", [0, 1, 123_456]) == [123_456, 1, 0]
