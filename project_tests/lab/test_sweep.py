"""`cs336 sweep`: the grid, a directory per point, resuming after an interruption, diverging points."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cs336_basics.model import ModelConfig, TransformerLM
from cs336_lab.cli import main
from cs336_lab.sweep import grid_points, parse_set, point_name, sweep
from cs336_lab.train import train

VOCAB = 32


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`cs336 train` keys of a seconds-long run on a repeated random phrase (the loss falls fast)."""
    directory = tmp_path_factory.mktemp("sweep_tokens")
    tokens = np.tile(np.random.default_rng(1).integers(0, VOCAB, size=40), 60).astype(np.uint16)
    np.save(directory / "train.npy", tokens)
    np.save(directory / "valid.npy", tokens[:800])
    return {
        "train_data": str(directory / "train.npy"),
        "valid_data": str(directory / "valid.npy"),
        "vocab_size": VOCAB,
        "context_length": 8,
        "d_model": 16,
        "num_layers": 1,
        "num_heads": 2,
        "batch_size": 4,
        "max_steps": 8,
        "warmup_steps": 1,
        "lr_max": 3e-3,
        "lr_min": 3e-4,
        "eval_every": 4,
        "eval_batches": 2,
        "log_every": 1,
        "checkpoint_every": 4,
        "device": "cpu",
        "progress": False,
    }


def _val_losses(point_dir: Path) -> list[float]:
    lines = (point_dir / "metrics.jsonl").read_text().splitlines()
    return [r["val_loss"] for r in map(json.loads, lines) if "val_loss" in r]


def test_set_values_grid_and_names() -> None:
    assert parse_set("lr-max=1e-3,3e-3") == ("lr_max", [1e-3, 3e-3])
    assert parse_set("use_rmsnorm=true,false") == ("use_rmsnorm", [True, False])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set("lr_max")
    points = grid_points({"lr_max": [1e-3, 1e-2], "batch_size": [16, 64]})
    assert [point_name(p) for p in points] == [
        "lr_max=0.001+batch_size=16",
        "lr_max=0.001+batch_size=64",
        "lr_max=0.01+batch_size=16",
        "lr_max=0.01+batch_size=64",
    ]
    with pytest.raises(ValueError, match="non-empty list"):
        grid_points({"lr_max": []})


def test_a_bad_point_fails_before_anything_trains(base: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sweep point norm_position=sideways"):
        sweep(base, {"norm_position": ["pre", "sideways"]}, tmp_path / "s", train_fn=pytest.fail)
    assert not (tmp_path / "s" / "norm_position=pre" / "metrics.jsonl").exists()


class CrashingLM(TransformerLM):
    """Our LM, killed (KeyboardInterrupt) at its `crash_at`-th forward pass: a sweep stopped mid-point."""

    crash_at = 0
    calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        CrashingLM.calls += 1
        if CrashingLM.calls == CrashingLM.crash_at:
            raise KeyboardInterrupt("simulated kill")
        return super().forward(*args, **kwargs)


@pytest.mark.slow  # five short trainings and two plots: about 10 s
def test_interrupted_sweep_resumes_and_skips_finished_points(base: dict[str, Any], tmp_path: Path) -> None:
    grid = {"lr_max": [1e-3, 1e-2]}
    reference = sweep(base, grid, tmp_path / "whole")
    first, second = (tmp_path / "s" / point_name(p) for p in grid_points(grid))

    # The first point finishes; the second is killed in step 6 (forward calls: steps 1-4, the step-4
    # evaluation's 2 batches, step 5, then step 6), after its step-4 checkpoint.
    CrashingLM.calls, CrashingLM.crash_at = -8 - 2 - 2, 8  # the first point's 8 steps and 2 evaluations pass
    crashing = lambda config: train(  # noqa: E731
        config,
        model_factory=lambda spec, device: CrashingLM(ModelConfig(**spec.to_dict()), device=device, fused_kernels=True),
    )
    with pytest.raises(KeyboardInterrupt):
        sweep(base, grid, tmp_path / "s", train_fn=crashing)
    assert json.loads((first / "status.json").read_text())["status"] == "done"
    assert not (second / "status.json").exists() and (second / "ckpt_latest.pt").is_file()
    first_metrics = (first / "metrics.jsonl").read_bytes()

    calls: list[Any] = []
    statuses = sweep(base, grid, tmp_path / "s", train_fn=lambda config: calls.append(config) or train(config))
    assert [c.out_dir for c in calls] == [str(second)] and calls[0].resume  # first skipped, second resumed
    assert (first / "metrics.jsonl").read_bytes() == first_metrics
    assert [s["status"] for s in statuses] == ["done", "done"]
    for name, ref in zip((first, second), reference):
        assert _val_losses(name) == _val_losses(tmp_path / "whole" / name.name)  # exact on CPU
        assert json.loads((name / "status.json").read_text())["final_val_loss"] == ref["final_val_loss"]
    assert (tmp_path / "s" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "lr_max=0.01" in (tmp_path / "s" / "compare.md").read_text()


def test_diverging_point_is_marked_and_the_sweep_goes_on(base: dict[str, Any], tmp_path: Path) -> None:
    # lr 1e6 without clipping: the weights overflow within two steps and the loss turns nan.
    grid = {"lr_max": [3e-3, 1e6, 1e-2]}
    statuses = sweep({**base, "grad_clip": 0.0, "lr_min": 0.0}, grid, tmp_path / "s")
    assert [s["status"] for s in statuses] == ["done", "diverged", "done"]
    assert "non-finite" in statuses[1]["error"]
    table = (tmp_path / "s" / "compare.md").read_text()
    assert "lr_max=1e+06 (diverged)" in table and table.count("| done |") == 2
    assert re.search(r"\| diverged: non-finite (loss|gradient norm) at step \d+ \|", table)
    # Run again: nothing retrains, the diverged point included.
    assert sweep({**base, "grad_clip": 0.0, "lr_min": 0.0}, grid, tmp_path / "s", train_fn=pytest.fail) == statuses


def test_a_changed_config_retrains_the_point(base: dict[str, Any], tmp_path: Path) -> None:
    sweep(base, {"seed": [0]}, tmp_path / "s")
    calls: list[Any] = []
    sweep({**base, "max_steps": 4}, {"seed": [0]}, tmp_path / "s", train_fn=lambda c: calls.append(c) or train(c))
    assert len(calls) == 1 and not calls[0].resume
    assert len(_val_losses(tmp_path / "s" / "seed=0")) == 1


def test_cli_reads_the_grid_from_the_file_and_from_set(base: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "sweep.toml"
    lines = [f"{k} = {json.dumps(v)}" for k, v in base.items()]
    lines += [
        "[sweep]",
        f"out = {json.dumps(str(tmp_path / 'out'))}",
        "metric = 'train_loss'",
        "[sweep.grid]",
        "ffn_type = ['swiglu', 'silu']",
    ]
    config.write_text("\n".join(lines) + "\n")
    assert main(["sweep", "--config", str(config), "--set", "num_layers=1,2", "--set", "max_steps=4"]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert names == [
        "ffn_type=silu+num_layers=1+max_steps=4",
        "ffn_type=silu+num_layers=2+max_steps=4",
        "ffn_type=swiglu+num_layers=1+max_steps=4",
        "ffn_type=swiglu+num_layers=2+max_steps=4",
    ]
    assert "final train_loss" in (tmp_path / "out" / "compare.md").read_text()
    assert main(["sweep", "--config", str(config), "--set", "no_such_key=1"]) == 2


def test_listed_points_are_named_and_crossed_with_the_grid(base: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in base.items()) + "\n")
    (tmp_path / "ablations.toml").write_text(
        "max_steps = 4\n[sweep]\nbase = 'base.toml'\n[sweep.grid]\nseed = [0]\n"
        "[[sweep.points]]\nname = 'baseline'\n[[sweep.points]]\nname = 'post-norm'\nnorm_position = 'post'\n"
        "[[sweep.points]]\nposition_embedding = 'none'\n"
    )
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(tmp_path / "ablations.toml"), "--out", str(out), "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "baseline+seed=0",
        "position_embedding=none+seed=0",
        "post-norm+seed=0",
    ]
    config = json.loads((out / "post-norm+seed=0" / "config.json").read_text())
    assert (config["model"]["norm_position"], config["max_steps"], config["model"]["d_model"]) == ("post", 4, 16)
    rows = (out / "compare.md").read_text().splitlines()[2:]
    # Every point is labelled by its folder; the settings that differ between the runs are columns of the table.
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| baseline+seed=0", "pre", "rope"],
        ["| post-norm+seed=0", "post", "rope"],
        ["| position_embedding=none+seed=0", "pre", "none"],
    ]


def test_an_interrupted_point_whose_config_changed_starts_afresh(base: dict[str, Any], tmp_path: Path) -> None:
    sweep(base, {"seed": [0]}, tmp_path / "s")
    (tmp_path / "s" / "seed=0" / "status.json").unlink()  # as if killed after its last checkpoint
    calls: list[Any] = []
    record = lambda c: calls.append(c) or train(c)  # noqa: E731
    sweep(base, {"seed": [0]}, tmp_path / "s", train_fn=record)
    assert calls[-1].resume  # same config: resumed
    (tmp_path / "s" / "seed=0" / "status.json").unlink()
    sweep({**base, "lr_max": 1e-2}, {"seed": [0]}, tmp_path / "s", train_fn=record)
    assert not calls[-1].resume  # another config: the checkpoint is not this point's


def test_docstring_examples() -> None:
    import doctest

    import cs336_lab.compare
    import cs336_lab.sweep

    assert doctest.testmod(cs336_lab.sweep).failed == 0 and doctest.testmod(cs336_lab.compare).failed == 0


def test_ctrl_c_stops_the_sweep_and_the_point_resumes(base: dict[str, Any], tmp_path: Path) -> None:
    # A real SIGINT early in the run: `train` finishes its step, saves and returns; the sweep must stop (not mark the
    # point done and go on), and the next run resumes the point from that checkpoint.
    calls = {"n": 0}

    class SignallingLM(TransformerLM):
        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return super().forward(*args, **kwargs)

    grid = {"lr_max": [1e-3, 1e-2]}
    signalling = lambda config: train(  # noqa: E731
        config, model_factory=lambda spec, device: SignallingLM(ModelConfig(**spec.to_dict()), device=device)
    )
    with pytest.raises(KeyboardInterrupt, match=r"stopped by SIGINT after step \d"):
        sweep(base, grid, tmp_path / "s", train_fn=signalling)
    first = tmp_path / "s" / "lr_max=0.001"
    assert not (first / "status.json").exists() and not (tmp_path / "s" / "lr_max=0.01").exists()
    resumed: list[Any] = []
    statuses = sweep(base, grid, tmp_path / "s", train_fn=lambda c: resumed.append(c) or train(c))
    assert [c.resume for c in resumed] == [True, False] and [s["status"] for s in statuses] == ["done", "done"]
    assert len(_val_losses(first)) == 2  # steps 4 and 8: the resumed point ran to the end


def test_a_recipe_is_the_base_and_seeds_are_summarised(base: dict[str, Any], tmp_path: Path) -> None:
    """`[sweep] base = "../recipes/r.toml"` (a recipe: no data paths), the data on the command line, two seeds
    per point: summary.md has one row per point with the mean ± sd of the seeds' final bits/byte."""
    from cs336_lab.tokenizer_files import save_tokenizer

    save_tokenizer({i: bytes([65 + i]) * (1 + i % 3) for i in range(VOCAB)}, [], tmp_path / "tok")
    data = {k: base[k] for k in ("train_data", "valid_data")}
    recipe = {k: v for k, v in base.items() if k not in data}
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.toml").write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in recipe.items()))
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "s.toml").write_text(
        "max_steps = 4\n[sweep]\nbase = '../recipes/r.toml'\n[sweep.grid]\nseed = [0, 1]\n"
        "[[sweep.points]]\nname = 'baseline'\n[[sweep.points]]\nname = 'wide'\nd_model = 32\n"
    )
    out = tmp_path / "out"
    flags = [
        "--train-data",
        data["train_data"],
        "--valid-data",
        data["valid_data"],
        "--tokenizer-dir",
        str(tmp_path / "tok"),
    ]
    assert main(["sweep", "--config", str(tmp_path / "sweeps" / "s.toml"), "--out", str(out), *flags]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "baseline+seed=0",
        "baseline+seed=1",
        "wide+seed=0",
        "wide+seed=1",
    ]
    rows = [line.split(" | ") for line in (out / "summary.md").read_text().splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("| baseline", "2 (2)"), ("| wide", "2 (2)")]
    means = {}
    for point in ("baseline", "wide"):
        bpb = [json.loads((out / f"{point}+seed={s}" / "status.json").read_text())["final_val_bpb"] for s in (0, 1)]
        assert bpb[0] != bpb[1]  # the seeds differ
        means[point] = np.mean(bpb)
        expected = f"{np.mean(bpb):.4f} ± {np.std(bpb, ddof=1):.4f}"
        assert [r[2] for r in rows if r[0] == f"| {point}"] == [expected]
    assert rows[1][3] == f"{means['wide'] - means['baseline']:+.4f}"
    assert main(["sweep", "--config", str(tmp_path / "sweeps" / "s.toml"), "--out", str(tmp_path / "nodata")]) == 2
