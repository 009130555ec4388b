"""The race row (`python -m bench --race`): the recipe through the real `cs336 train` command line, the anchor as
the quality bench's oracle side, and the row built from the race's report."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench import bench_race, race
from bench.common import machine_info
from bench.quality import make_config
from cs336_lab.config import add_dataclass_arguments, config_from_args
from cs336_lab.train_config import TrainConfig

BASELINE = race.RECIPES / "cpu_10min_baseline.toml"
DATA = (Path("TOK"), Path("T.npy"), Path("V.npy"))


def _parse_train_command(cmd: list[str]) -> TrainConfig:
    """The config `cs336 train` builds from the command line after `-m cs336_lab.cli train`."""
    assert cmd[1:4] == ["-m", "cs336_lab.cli", "train"]
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    return config_from_args(TrainConfig, parser.parse_args(cmd[4:]))


def test_the_baseline_recipe_is_the_anchor() -> None:
    """cpu_10min_baseline.toml through the race's command line is the quality bench's anchor config, field for
    field, but for the paths, the device, the progress bar and the thread count (the anchor's process sets it)."""
    config = _parse_train_command(race.recipe_command(BASELINE, 600.0, Path("OUT"), DATA))
    anchor = make_config("oracle", 600.0, *DATA)
    per_run = {"train_data", "valid_data", "tokenizer_dir", "out_dir", "device", "progress", "threads"}
    differ = {f.name for f in dataclasses.fields(TrainConfig) if getattr(config, f.name) != getattr(anchor, f.name)}
    assert differ <= per_run, f"the baseline recipe differs from the anchor in {sorted(differ - per_run)}"
    assert (config.train_data, config.valid_data, config.tokenizer_dir) == ("T.npy", "V.npy", "TOK")
    assert (config.out_dir, config.device, config.progress, config.threads) == ("OUT", "cpu", False, 1)


def test_the_budget_and_one_thread_replace_the_recipes(tmp_path: Path) -> None:
    config = _parse_train_command(race.recipe_command(BASELINE, 60.0, Path("OUT"), DATA))
    assert (config.max_time_s, config.lr_clock) == (60.0, "time")
    two_threads = tmp_path / "r.toml"
    two_threads.write_text(BASELINE.read_text().replace("threads = 1", "threads = 2"))
    assert _parse_train_command(race.recipe_command(two_threads, 600.0, Path("OUT"), DATA)).threads == 1


def test_the_default_recipe_is_the_best_when_there_is_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(race, "RECIPES", tmp_path)
    assert race.default_race_recipe() == tmp_path / "cpu_10min_baseline.toml"
    (tmp_path / "cpu_10min.toml").write_text("")
    assert race.default_race_recipe() == tmp_path / "cpu_10min.toml"


def _side(side: str, bpb: float, steps: int, tokens_per_s: float) -> dict[str, Any]:
    return {"side": side, "final_val_bpb": bpb, "steps": steps, "tokens_per_s": tokens_per_s}


def test_the_row_compares_bits_per_byte_with_the_goal() -> None:
    report = {
        "recipe": "configs/recipes/cpu_10min.toml",
        "budget_s": 600.0,
        "recipe_side": _side("recipe", 1.30, 900, 3000.0),
        "anchor_side": _side("anchor", 1.45, 1700, 5900.0),
    }
    row = bench_race.race_row(report)
    assert row["ratio"] == pytest.approx(1.30 / 1.45) and row["goal"] == "<= 0.92x" and row["met"] is True
    assert (row["ours"], row["peer_value"], row["unit"]) == (1.30, 1.45, "bits/byte")
    assert "cpu_10min.toml" in row["work"] and "600 s" in row["work"]
    assert row["notes"] == "steps recipe 900 vs anchor 1700; tokens/s recipe 3000 vs anchor 5900"
    report["recipe_side"]["final_val_bpb"] = 1.34  # 0.924x: just over the goal
    assert bench_race.race_row(report)["met"] is False


def test_a_race_without_a_report_fails_the_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A failed race leaves no report; the last race's report must not be turned into this run's row."""
    monkeypatch.setattr(race, "RESULTS", tmp_path)
    (tmp_path / "race.json").write_text("{}")  # the last race's
    calls: list[list[str]] = []
    monkeypatch.setattr(bench_race.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    with pytest.raises(RuntimeError, match="the race wrote no report"):
        bench_race.run(quick=True, recipe="r.toml")
    assert calls[0][-4:] == ["--budget-s", "60.0", "--recipe", "r.toml"]


def test_bench_race_flags_run_the_row_with_the_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_run(names, *, quick, options=None):
        seen.update(names=names, options=options)
        return {"machine": machine_info(), "quick": quick, "benchmarks": names, "seconds": {}, "rows": [], "errors": {}}

    monkeypatch.setattr(bench_main, "run_benchmarks", fake_run)
    bench_main.main(["--race", "--race-recipe", "x.toml", "--out-dir", str(tmp_path), "--docs-dir", str(tmp_path)])
    assert "race" in seen["names"] and seen["options"]["race"] == {"recipe": Path("x.toml")}
    bench_main.main(["--out-dir", str(tmp_path), "--docs-dir", str(tmp_path)])
    assert "race" not in seen["names"]  # opt-in
