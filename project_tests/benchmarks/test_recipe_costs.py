"""bench/recipe_costs.py: each point is the baseline recipe with exactly its one idea, timed as the trainer steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import recipe_costs


def _differences(a: object, b: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            out.update(_differences(x, y, f"{f.name}."))
        elif x != y:
            out[prefix + f.name] = y
    return out


@pytest.mark.parametrize("idea", [name for name in recipe_costs.IDEAS if name != "baseline"])
def test_each_point_is_the_baseline_with_its_idea_only(idea: str) -> None:
    """A mistake: a `model.` key set on the trainer (or dropped), so the point times the baseline again."""
    base = recipe_costs.recipe_config("cpu_10min_baseline", {})
    point = recipe_costs.recipe_config("cpu_10min_baseline", recipe_costs.IDEAS[idea])
    assert _differences(base, point) == recipe_costs.IDEAS[idea]


def test_a_step_updates_the_model_as_the_trainer_would() -> None:
    """The timed function is a whole step: the weights move (a step that skipped the optimizer would time less)."""
    config = recipe_costs.recipe_config("cpu_10min", {})
    config = dataclasses.replace(
        config, batch_size=2, model=dataclasses.replace(config.model, context_length=16, num_layers=1)
    )
    torch.manual_seed(0)
    step = recipe_costs.training_step(config)
    cells = step.__closure__ or ()
    model = next(c.cell_contents for c in cells if isinstance(c.cell_contents, torch.nn.Module))
    before = [p.detach().clone() for p in model.parameters()]
    step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
