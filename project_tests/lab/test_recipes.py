"""The recipes (`configs/recipes/*.toml`): each is the whole `cs336 train` command but for the data, the output
folder and the device, and loads through the real config loader."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import typing
from pathlib import Path

import pytest

from cs336_common.model_spec import ModelSpec
from cs336_lab.config import add_dataclass_arguments, config_from_args
from cs336_lab.train_config import TrainConfig

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"
# What the command line gives (the data, the output folder, the device), or what is no part of a recipe
# (continuing, display, logging elsewhere, the GPU's peak for MFU).
PER_RUN = {"train_data", "valid_data", "tokenizer_dir", "out_dir", "device"}
NOT_RECIPE = {"resume", "start_over", "progress", "wandb", "wandb_project", "peak_flops"}
COMMAND = ["--train-data", "T.npy", "--valid-data", "V.npy", "--tokenizer-dir", "TOK", "--out-dir", "OUT"]


def _optional(cls: type, name: str) -> bool:
    """A field a TOML file cannot set to None: leaving it out is how a file fixes it at None."""
    return type(None) in typing.get_args(typing.get_type_hints(cls)[name])


def _recipes() -> list[Path]:
    found = sorted(RECIPES.glob("*.toml"))
    assert found, f"no recipe in {RECIPES}"
    return found


def _load(path: Path, *flags: str) -> TrainConfig:
    """`cs336 train --config PATH FLAGS...` as the CLI parses it."""
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    return config_from_args(TrainConfig, parser.parse_args(["--config", str(path), *flags]))


def test_the_baselines_are_there() -> None:
    names = {p.name for p in _recipes()}
    assert {"cpu_10min_baseline.toml", "tinystories_baseline.toml", "owt_leaderboard_baseline.toml"} <= names


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: p.stem)
def test_a_recipe_fixes_every_field_but_the_data_out_dir_and_device(path: Path) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    given = set(data) - {"model"}
    assert not given & (PER_RUN | NOT_RECIPE), f"{path.name} fixes what the command line gives"
    top = {f.name for f in dataclasses.fields(TrainConfig)} - PER_RUN - NOT_RECIPE - {"model"}
    missing = sorted(n for n in top - given if not _optional(TrainConfig, n))
    assert not missing, f"{path.name} leaves {missing} to the defaults"
    model = set(data.get("model", {}))
    missing = sorted(f.name for f in dataclasses.fields(ModelSpec) if f.name not in model)
    assert not missing, f"{path.name} leaves the model's {missing} to the defaults"

    config = _load(path, *COMMAND)  # the whole command: it loads, and the file's values are the run's
    assert (config.train_data, config.valid_data, config.tokenizer_dir, config.out_dir) == (
        "T.npy",
        "V.npy",
        "TOK",
        "OUT",
    )
    assert config.device == "auto"
    for name in given:
        expected = tuple(data[name]) if isinstance(data[name], list) else data[name]
        assert getattr(config, name) == expected, name
    for name, value in data["model"].items():
        assert getattr(config.model, name) == value, name
    assert _load(path, *COMMAND, "--device", "cpu").device == "cpu"


@pytest.mark.parametrize("path", [p for p in _recipes() if p.name.startswith("cpu_")], ids=lambda p: p.stem)
def test_a_cpu_recipe_runs_on_one_thread_for_ten_minutes(path: Path) -> None:
    config = _load(path, *COMMAND)
    assert config.threads == 1
    assert (config.max_time_s, config.lr_clock) == (600.0, "time")
    assert config.model.vocab_size == 4096


def test_the_gpu_recipes_fit_their_tasks() -> None:
    tinystories = _load(RECIPES / "tinystories_baseline.toml", *COMMAND)
    assert (tinystories.model.vocab_size, tinystories.model.context_length) == (10_000, 256)
    assert (tinystories.precision, tinystories.compile) == ("bf16", True)
    owt = _load(RECIPES / "owt_leaderboard_baseline.toml", *COMMAND)
    assert (owt.model.vocab_size, owt.model.context_length, owt.max_time_s) == (32_000, 512, 2700.0)


@pytest.mark.parametrize("sweep", ["recipe_ablations", "recipe_removals"])
def test_the_recipe_ablation_sweep_builds_every_point_on_a_step_budget(sweep: str) -> None:
    """configs/sweeps/recipe_{ablations,removals}.toml: a recipe as its base, two seeds per point, the budget in
    steps; each point differs from its base (a point that changes nothing would measure nothing)."""
    from cs336_lab.config import from_dict, merge_config_data
    from cs336_lab.sweep import expand_points, group_name, load_sweep_file

    path = RECIPES.parent / "sweeps" / f"{sweep}.toml"
    base, table = load_sweep_file(path)
    assert Path(table["base"]).parent.name == "recipes"
    points = expand_points(table.get("grid"), table.get("points"))
    groups = {group_name(name) for name, _, _ in points}
    assert len(points) == 2 * len(groups) and table["grid"]["seed"] == [0, 1]
    recipe = _load(RECIPES.parent / "sweeps" / table["base"], *COMMAND)
    built: dict[str, TrainConfig] = {}
    for name, values, _ in points:
        config = from_dict(TrainConfig, merge_config_data(TrainConfig, base, values, {"out_dir": name}))
        assert (config.lr_clock, config.max_steps, config.threads) == ("steps", 200, 1), name
        assert config.max_time_s > 10 * config.max_steps * 0.35  # a cap that does not bind
        assert config.model.vocab_size == recipe.model.vocab_size and config.train_data.endswith("train.npy")
        built[group_name(name)] = dataclasses.replace(config, out_dir="", seed=0)
    first, *others = built.values()
    assert all(config != first for config in others), "a point that changes nothing measures nothing"
