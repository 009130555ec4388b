"""What each idea of the modern recipe costs per training step on one CPU thread: the other half of the race.

    python -m bench.recipe_costs                 # ~2 minutes on one free core
    python -m bench.recipe_costs --repeats 3     # a quick look

The ablation sweeps (configs/sweeps/recipe_{ablations,removals}.toml, docs/lab/recipe.md) measure what an idea
gives per step; the race is on the wall clock, so an idea pays only if it gives more than it costs. Each point
here is the handout's baseline (`configs/recipes/cpu_10min_baseline.toml`) with one idea added (or the best
recipe, `cpu_10min.toml`), built by the trainer's own pieces (`cs336_lab.train`: the model factory, the
optimizer, the training loss the loop uses, clipping) and timed for one whole step (forward, loss, backward,
clipping, optimizer step) on random tokens, interleaved with the others (`bench.common.time_interleaved`), one
thread, median CPU time. Prints a Markdown table: ms per step and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import torch

from bench.common import REPO_ROOT, median, time_interleaved

RECIPES = REPO_ROOT / "configs" / "recipes"
# One idea each, as the ablation sweep `configs/sweeps/recipe_ablations.toml` adds it to the baseline.
IDEAS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "+muon": {"optimizer": "muon"},
    "+qk_norm": {"model.qk_norm": True},
    "+relu2": {"model.ffn_type": "relu2", "model.d_ff": 512},
    "+tie_embeddings": {"model.tie_embeddings": True},
    "+softcap_30": {"model.logit_softcap": 30.0},
    "+z_loss": {"z_loss": 1e-4},
}


def recipe_config(name: str, changes: dict[str, Any]) -> Any:
    """The recipe file `name` (configs/recipes/NAME.toml) with `changes` (`model.x` keys change the model)."""
    from cs336_lab.config import from_dict, merge_config_data, read_config_file
    from cs336_lab.train_config import TrainConfig

    data = merge_config_data(TrainConfig, read_config_file(RECIPES / f"{name}.toml"), {"out_dir": "unused"})
    config = from_dict(TrainConfig, data)
    model = {k.removeprefix("model."): v for k, v in changes.items() if k.startswith("model.")}
    trainer = {k: v for k, v in changes.items() if not k.startswith("model.")}
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **model), **trainer)


def training_step(config: Any, seed: int = 0) -> Callable[[], None]:
    """One step of the trainer's update for `config`, on a fixed random batch, as a function to time."""
    from cs336_lab.assignment import Assignment
    from cs336_lab.train import default_model_factory, default_optimizer

    torch.manual_seed(seed)
    model = default_model_factory(config.model, torch.device("cpu"))
    optimizer = default_optimizer(model, config)
    door = Assignment.load()
    spec = config.model
    tokens = torch.randint(0, spec.vocab_size, (config.batch_size, spec.context_length + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        logits = model(x)
        loss = (
            door.training_loss_with_z_loss(logits, y, config.z_loss) if config.z_loss else door.training_loss(logits, y)
        )
        loss.backward()
        door.clip_and_measure([p for p in model.parameters() if p.grad is not None], config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(repeats: int) -> list[dict[str, Any]]:
    """Median CPU ms per step of every idea and of the best recipe, interleaved; one thread."""
    torch.set_num_threads(1)
    configs = {name: recipe_config("cpu_10min_baseline", changes) for name, changes in IDEAS.items()}
    configs["best (cpu_10min.toml)"] = recipe_config("cpu_10min", {})
    steps = {name: training_step(config) for name, config in configs.items()}
    cpu: dict[str, list[float]] = {}
    time_interleaved(steps, repeats=repeats, warmup=2, cpu_times=cpu)
    base = median(cpu["baseline"])
    return [{"point": name, "ms": 1e3 * median(cpu[name]), "ratio": median(cpu[name]) / base} for name in steps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per point (default: 15)")
    args = parser.parse_args(argv)
    rows = measure(args.repeats)
    print("| point | CPU ms per step (median) | vs baseline |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['point']} | {row['ms']:.0f} | {row['ratio']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
