"""The trainer's switches of the modern recipe: `--optimizer muon` (`--muon-lr`, `--muon-momentum`), `--z-loss`,
`--lr-schedule wsd` (`--decay-fraction`): defaults, validation, the schedule, exact resume, old runs, and the
one-line refusal of a package without them."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import cs336_lab.train as train_mod
from cs336_lab.assignment import Assignment, AssignmentError
from cs336_lab.config import add_dataclass_arguments, config_from_args
from cs336_lab.run_checkpoint import read_run_checkpoint
from cs336_lab.train import TrainConfig, train

KEYS = ("step", "tokens", "lr", "train_loss", "grad_norm", "val_loss")


def _losses(history: list[dict]) -> list[tuple]:
    return [tuple(r.get(k) for k in KEYS) for r in history]


def test_defaults_are_todays_recipe() -> None:
    """AdamW, cosine, no z-loss: the defaults change nothing (the other tests of the trainer pin the numbers)."""
    config = TrainConfig()
    assert (config.optimizer, config.lr_schedule, config.z_loss) == ("adamw", "cosine", 0.0)
    assert (config.muon_lr, config.muon_momentum, config.decay_fraction) == (None, 0.95, 0.2)
    assert config.embedding_lr is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"muon_lr": -1.0}, r"--muon-lr \(muon_lr\) must be a finite number > 0 or none, got -1"),
        ({"muon_lr": float("nan")}, r"--muon-lr \(muon_lr\) must be a finite number > 0"),
        ({"embedding_lr": 0.0}, r"--embedding-lr \(embedding_lr\) must be a finite number > 0 or none, got 0"),
        ({"muon_momentum": 1.0}, r"--muon-momentum \(muon_momentum\) must be a finite number in \[0, 1\)"),
        ({"z_loss": -1e-4}, r"--z-loss \(z_loss\) must be a finite number >= 0"),
        ({"z_loss": float("inf")}, r"--z-loss \(z_loss\) must be a finite number >= 0"),
        ({"decay_fraction": 1.5}, r"--decay-fraction \(decay_fraction\) must be a finite number in \[0, 1\]"),
        ({"optimizer": "sgd"}, r"--optimizer \(optimizer\) must be one of \('adamw', 'muon'\), got 'sgd'"),
        ({"lr_schedule": "linear"}, r"--lr-schedule \(lr_schedule\) must be one of"),
    ],
    ids=[
        "muon-lr",
        "muon-lr-nan",
        "embedding-lr",
        "momentum",
        "z-loss",
        "z-loss-inf",
        "decay",
        "optimizer",
        "schedule",
    ],
)
def test_bad_values_name_their_flag(tiny_config: TrainConfig, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny_config, **changes)


def test_flags_reach_the_config(tiny_config: TrainConfig) -> None:
    flags = "--optimizer muon --muon-lr 0.02 --muon-momentum 0.9 --z-loss 1e-4 --lr-schedule wsd --decay-fraction 0.3"
    flags += " --embedding-lr 0.05"
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    config = config_from_args(TrainConfig, parser.parse_args(flags.split()))
    assert (config.optimizer, config.muon_lr, config.muon_momentum) == ("muon", 0.02, 0.9)
    assert (config.z_loss, config.lr_schedule, config.decay_fraction) == (1e-4, "wsd", 0.3)
    assert config.embedding_lr == 0.05


def test_wsd_schedule_in_the_run(tiny_config: TrainConfig) -> None:
    """12 steps, warm-up 2, decay over the last 25%: the lr of step k (set before it, at iteration k-1) is 0,
    1.5e-3, then 3e-3 up to iteration 9 (the decay's start), then 2.1e-3 and 1.2e-3 (hand-computed). Checked to
    fail on the decay starting at `decay_fraction · max_steps` (iteration 3)."""
    result = train(dataclasses.replace(tiny_config, lr_schedule="wsd", decay_fraction=0.25))
    expected = [0.0, 1.5e-3] + [3e-3] * 8 + [2.1e-3, 1.2e-3]
    assert [r["lr"] for r in result.history] == pytest.approx(expected, abs=1e-12)


def test_wsd_follows_the_time_clock(tiny_config: TrainConfig) -> None:
    """With `lr_clock="time"`, 95% of the time budget is iteration 95 of 100: 3/4 down the last 20%."""
    config = dataclasses.replace(
        tiny_config, lr_schedule="wsd", lr_clock="time", max_time_s=10.0, max_steps=100, warmup_steps=10
    )
    assert train_mod._lr_at(config, step=3, elapsed_s=9.5) == pytest.approx(3e-3 - 0.75 * 2.7e-3)
    assert train_mod._lr_at(config, step=3, elapsed_s=7.9) == pytest.approx(3e-3)


def test_z_loss_is_in_the_training_loss_only(
    tiny_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One step at lr 0 (the warm-up's first) leaves the model as initialised: the validation loss with a
    z-loss equals the plain one, and the training loss is larger by `z · mean(logsumexp²)` of the first batch
    (oracle: `torch.logsumexp` on the checkpoint's model). Checked to fail on the z-loss added to the
    validation loss, on its sign, and on `logsumexp` not squared."""
    config = dataclasses.replace(tiny_config, max_steps=1, warmup_steps=1, eval_every=1, log_every=1)
    plain = train(dataclasses.replace(config, out_dir=str(tmp_path / "plain"))).history[-1]
    real_sample, batches = Assignment.sample_batch, []
    monkeypatch.setattr(Assignment, "sample_batch", lambda *a, **k: batches.append(real_sample(*a, **k)) or batches[-1])
    with_z = train(dataclasses.replace(config, out_dir=str(tmp_path / "z"), z_loss=0.5)).history[-1]
    assert with_z["lr"] == 0.0
    assert with_z["val_loss"] == plain["val_loss"]
    model = train_mod.default_model_factory(config.model, torch.device("cpu"))
    model.load_state_dict(read_run_checkpoint(tmp_path / "z" / "ckpt_latest.pt")["model"])
    with torch.no_grad():
        z_term = 0.5 * torch.logsumexp(model(batches[0][0]), dim=-1).pow(2).mean().item()
    assert with_z["train_loss"] - plain["train_loss"] == pytest.approx(z_term, rel=1e-4)


def test_muon_run_learns_and_scales_the_muon_lr(tiny_config: TrainConfig) -> None:
    """The Muon groups follow the schedule at `muon_lr / lr_max` times the AdamW groups' lr."""
    result = train(dataclasses.replace(tiny_config, optimizer="muon", muon_lr=0.02))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] - 0.5
    groups = read_run_checkpoint(Path(tiny_config.out_dir) / "ckpt_latest.pt")["optimizer"]["param_groups"]
    (muon,) = [g for g in groups if g["use_muon"]]
    (adamw,) = [g for g in groups if not g["use_muon"]]
    assert muon["lr"] == pytest.approx(adamw["lr"] * 0.02 / 3e-3) and adamw["lr"] == result.history[-1]["lr"]
    assert muon["momentum"] == 0.95 and len(muon["params"]) == 2 * 7  # q, k, v, output, w1, w2, w3 per block


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_embedding_steps_at_its_own_lr(tiny_config: TrainConfig, optimizer: str) -> None:
    """AdamW's first step moves every entry that has a gradient by the group's lr exactly (m / sqrt(v) = ±1 for
    a nonzero gradient, no weight decay): after one step at the warm-up's lr, the largest change of the
    embedding is `lr · embedding_lr / lr_max` and a gain's is `lr`. Checked to fail on the embedding left at
    `lr_max`'s schedule, on its peak not scheduled, and on the embedding's group given to the gains."""
    config = dataclasses.replace(
        tiny_config, optimizer=optimizer, embedding_lr=0.03, weight_decay=0.0, max_steps=2, warmup_steps=2
    )
    torch.manual_seed(config.seed)
    before = train_mod.default_model_factory(config.model, torch.device("cpu")).state_dict()
    result = train(dataclasses.replace(config, checkpoint_every=2))  # lr 0, then lr_max / 2
    after = read_run_checkpoint(Path(config.out_dir) / "ckpt_latest.pt")["model"]
    lr = result.history[-1]["lr"]
    assert lr == pytest.approx(3e-3 / 2)
    moved = {k: (after[k] - before[k]).abs().max().item() for k in ("token_embeddings.weight", "ln_final.weight")}
    assert moved["token_embeddings.weight"] == pytest.approx(lr * 0.03 / 3e-3, rel=1e-3)
    assert moved["ln_final.weight"] == pytest.approx(lr, rel=1e-3)
    groups = read_run_checkpoint(Path(config.out_dir) / "ckpt_latest.pt")["optimizer"]["param_groups"]
    (embedding,) = [g for g in groups if g.get("role") == "embedding"]
    assert len(embedding["params"]) == 1 and len(groups) == (3 if optimizer == "muon" else 2)


def test_a_tied_embedding_takes_the_embedding_lr(tiny_config: TrainConfig) -> None:
    """Tied to the output layer, the one matrix is in the embedding's group, and in no other."""
    model = train_mod.default_model_factory(
        dataclasses.replace(tiny_config.model, tie_embeddings=True), torch.device("cpu")
    )
    groups = train_mod.embedding_group([{"params": list(model.parameters()), "lr": 1.0}], model)
    table = model.get_parameter("token_embeddings.weight")
    assert [g.get("role") for g in groups] == [None, "embedding"]
    assert groups[1]["params"] == [table] and groups[1]["lr"] == 1.0
    assert not any(p is table for p in groups[0]["params"])


def test_resuming_with_or_without_the_embedding_group_is_refused(tiny_config: TrainConfig) -> None:
    """The embedding's own group exists for the whole run or never: switching is refused in one line naming
    the flag; changing its value is not."""
    train(dataclasses.replace(tiny_config, max_steps=4, warmup_steps=1, embedding_lr=0.01))
    with pytest.raises(ValueError, match=r"expected --embedding-lr 0.01 as in the checkpoint .*got none"):
        train(dataclasses.replace(tiny_config, resume=True))
    assert train(dataclasses.replace(tiny_config, resume=True, embedding_lr=0.02)).steps == 12


def test_muon_resume_reproduces_the_uninterrupted_losses(
    tiny_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed in step 7, resumed from step 4: the same losses as an uninterrupted run, exactly (CPU). Checked
    to fail on a checkpoint without the Muon momentum buffers."""
    config = dataclasses.replace(tiny_config, optimizer="muon", muon_lr=0.02, z_loss=1e-3, lr_schedule="wsd")
    reference = train(dataclasses.replace(config, out_dir=str(tmp_path / "whole")))
    real_sample, calls = Assignment.sample_batch, {"n": 0}

    def crashing_sample(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7 + 2:  # the 7th training batch (the evaluation at step 4 drew 2 more)
            raise KeyboardInterrupt("simulated kill")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(Assignment, "sample_batch", crashing_sample)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(Assignment, "sample_batch", real_sample)
    resumed = train(dataclasses.replace(config, resume=True))
    assert _losses(resumed.history) == _losses(reference.history)


def test_a_run_from_before_the_switches_resumes(tiny_config: TrainConfig) -> None:
    """A checkpoint and config.json written before these fields existed resume as an AdamW/cosine run."""
    train(dataclasses.replace(tiny_config, max_steps=8))
    out = Path(tiny_config.out_dir)
    new_fields = ("optimizer", "muon_lr", "muon_momentum", "z_loss", "lr_schedule", "decay_fraction", "embedding_lr")
    payload = torch.load(out / "ckpt_latest.pt", weights_only=False)
    payload["config"] = {k: v for k, v in payload["config"].items() if k not in new_fields}
    torch.save(payload, out / "ckpt_latest.pt")
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in stored.items() if k not in new_fields}))
    assert train(dataclasses.replace(tiny_config, resume=True)).steps == 12


def test_resuming_with_another_optimizer_is_refused(tiny_config: TrainConfig) -> None:
    train(dataclasses.replace(tiny_config, max_steps=4, warmup_steps=1))
    with pytest.raises(ValueError, match="expected the checkpoint's --optimizer adamw, got --optimizer muon"):
        train(dataclasses.replace(tiny_config, resume=True, optimizer="muon"))


@pytest.mark.parametrize(
    ("missing", "changes", "flag"),
    [
        ("MuonAdamW", {"optimizer": "muon"}, "--optimizer muon needs cs336_basics.MuonAdamW"),
        ("cross_entropy_with_z_loss", {"z_loss": 1e-4}, "--z-loss 0.0001 needs cs336_basics.cross_entropy_with_z_loss"),
        ("wsd_lr_schedule", {"lr_schedule": "wsd"}, "--lr-schedule wsd needs cs336_basics.wsd_lr_schedule"),
    ],
    ids=["muon", "z-loss", "wsd"],
)
def test_a_package_without_the_extra_is_refused_in_one_line(
    tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch, missing: str, changes: dict, flag: str
) -> None:
    """A student's package without the name: an AssignmentError naming the flag, before anything is written."""
    door = dataclasses.replace(Assignment.load(), **{missing: None})
    monkeypatch.setattr(Assignment, "load", classmethod(lambda cls, package="cs336_basics": door))
    with pytest.raises(AssignmentError, match=flag) as caught:
        train(dataclasses.replace(tiny_config, **changes))
    assert "\n" not in str(caught.value)
    assert not (Path(tiny_config.out_dir) / "ckpt_latest.pt").exists()
