"""The training loop: outputs of a run, exact resume, non-finite loss, accumulation, budgets and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cs336_lab.train as train_mod
from cs336_lab.assignment import Assignment
from cs336_lab.run_checkpoint import read_run_checkpoint
from cs336_lab.run_log import bytes_per_token
from cs336_lab.train import NonFiniteLossError, TrainConfig, default_model_factory, train


def _with_model(config: TrainConfig, **fields) -> TrainConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **fields))


def _losses(history: list[dict]) -> list[tuple]:
    """The deterministic part of the metrics (wall-clock fields differ between runs)."""
    keys = ("step", "tokens", "lr", "train_loss", "grad_norm", "val_loss")
    return [tuple(r.get(k) for k in keys) for r in history]


def test_run_writes_config_metrics_curve_and_checkpoint(tiny_config: TrainConfig) -> None:
    result = train(tiny_config)
    out = Path(tiny_config.out_dir)
    assert result.steps == 12 and result.tokens_seen == 12 * 4 * 16
    assert json.loads((out / "config.json").read_text())["model"]["d_model"] == 32
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records == result.history
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"step", "tokens", "time_s", "lr", "train_loss", "grad_norm", "tokens_per_s"} <= records[0].keys()
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8, 12]
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.5  # it learns the repeated phrase
    assert result.final_val_loss == records[-1]["val_loss"]
    assert result.best_val_loss == min(r["val_loss"] for r in records if "val_loss" in r)
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = read_run_checkpoint(out / "ckpt_latest.pt")
    assert payload["iteration"] == 12 and payload["config"]["model"]["num_layers"] == 2
    assert payload["extra"]["tokens_seen"] == result.tokens_seen


def test_lr_follows_warmup_and_cosine(tiny_config: TrainConfig) -> None:
    lrs = [r["lr"] for r in train(tiny_config).history]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1.5e-3) and lrs[2] == pytest.approx(3e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] > tiny_config.lr_min


def test_resume_after_a_crash_reproduces_the_uninterrupted_losses(
    tiny_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = train(dataclasses.replace(tiny_config, out_dir=str(tmp_path / "whole")))

    # Crash in the middle of step 7 (the 7th training batch; evaluations at step 4 drew 2 more).
    real_get_batch, calls = Assignment.sample_batch, {"n": 0}

    def crashing_get_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7 + 2:
            raise KeyboardInterrupt("simulated kill")
        return real_get_batch(*args, **kwargs)

    monkeypatch.setattr(Assignment, "sample_batch", crashing_get_batch)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config)
    monkeypatch.setattr(Assignment, "sample_batch", real_get_batch)
    assert read_run_checkpoint(Path(tiny_config.out_dir) / "ckpt_latest.pt")["iteration"] == 4

    resumed = train(dataclasses.replace(tiny_config, resume=True))
    assert resumed.steps == 12
    assert _losses(resumed.history) == _losses(reference.history)  # exact on CPU, step 1 to 12


def test_resume_without_checkpoint_is_an_error(tiny_config: TrainConfig) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(dataclasses.replace(tiny_config, resume=True))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss, calls = Assignment.training_loss, {"n": 0}

    def poisoned_loss(self, logits, targets):
        calls["n"] += 1  # steps 1-4 use calls 1-4, the step-4 evaluation 5-6, step 7 is call 9
        loss = real_loss(self, logits, targets)
        return loss * math.nan if calls["n"] == 9 else loss

    monkeypatch.setattr(Assignment, "training_loss", poisoned_loss)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 7"):
        train(tiny_config)
    payload = read_run_checkpoint(Path(tiny_config.out_dir) / "ckpt_latest.pt")
    assert payload["iteration"] == 4
    assert all(torch.isfinite(t).all() for t in payload["model"].values())


def test_gradient_accumulation_matches_one_big_batch(tiny_config: TrainConfig, tmp_path: Path) -> None:
    # Two micro-batches of 4 draw the same windows as one batch of 8 (the sampler's stream is sequential).
    big = train(dataclasses.replace(tiny_config, batch_size=8, max_steps=3, out_dir=str(tmp_path / "big")))
    accum = train(dataclasses.replace(tiny_config, grad_accum_steps=2, max_steps=3, out_dir=str(tmp_path / "acc")))
    assert accum.tokens_seen == big.tokens_seen
    for a, b in zip(accum.history, big.history):
        # float32: the mean of two half-batch means differs from the full mean in the last bits.
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_time_budget_stops_cleanly_with_a_checkpoint(tiny_config: TrainConfig) -> None:
    config = dataclasses.replace(tiny_config, max_steps=100_000, warmup_steps=10, max_time_s=1.0, lr_clock="time")
    result = train(config)
    assert 1 <= result.steps < 100_000
    assert read_run_checkpoint(Path(config.out_dir) / "ckpt_latest.pt")["iteration"] == result.steps
    assert result.final_val_loss is not None  # the last step is always evaluated


@pytest.mark.parametrize(
    "switches",
    [{"use_rmsnorm": False}, {"norm_position": "post"}, {"position_embedding": "none"}, {"ffn_type": "silu"}],
    ids=["no-rmsnorm", "post-norm", "nope", "silu-ffn"],
)
def test_ablation_switches_reach_the_model(tiny_config: TrainConfig, switches: dict) -> None:
    config = dataclasses.replace(_with_model(tiny_config, **switches), max_steps=2)
    built = []

    def model_factory(spec, device):
        model = default_model_factory(spec, device)
        built.append(model.config)
        return model

    assert math.isfinite(train(config, model_factory=model_factory).final_val_loss)
    assert all(getattr(built[0], k) == v for k, v in switches.items())  # the package's ModelConfig got them


def test_custom_model_and_optimizer_factories(tiny_config: TrainConfig) -> None:
    from cs336_basics.model import ModelConfig, TransformerLM

    built = []

    def model_factory(spec, device):
        built.append(spec)
        return TransformerLM(ModelConfig(**spec.to_dict()), device=device)

    def optimizer_factory(params, config):
        return torch.optim.SGD(params, lr=config.lr_max)

    result = train(
        dataclasses.replace(tiny_config, max_steps=2), model_factory=model_factory, optimizer_factory=optimizer_factory
    )
    assert result.steps == 2 and built[0].d_model == 32


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"warmup_steps": 20}, "warmup_steps"),
        ({"lr_min": 1.0}, "lr_min <= lr_max"),
        ({"lr_clock": "time"}, "needs max_time_s"),
    ],
    ids=["batch", "warmup", "lr-order", "time-clock"],
)
def test_bad_config_values_are_named(tiny_config: TrainConfig, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny_config, **changes)


def test_missing_or_bad_data_is_a_clear_error(tiny_config: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        train(dataclasses.replace(tiny_config, train_data=str(tmp_path / "nope.npy")))
    np.save(tmp_path / "short.npy", np.arange(10, dtype=np.uint16))
    with pytest.raises(ValueError, match="need more than context_length"):
        train(dataclasses.replace(tiny_config, valid_data=str(tmp_path / "short.npy")))


def test_bytes_per_token_counts_vocabulary_bytes(tmp_path: Path) -> None:
    from cs336_lab.tokenizer_files import save_tokenizer

    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    save_tokenizer(vocab, [(b"a", b"b")], tmp_path / "tok")
    tokens = np.array([256, 97, 256, 98], dtype=np.uint16)  # "ab" "a" "ab" "b": 6 bytes in 4 tokens
    assert bytes_per_token(tmp_path / "tok", tokens) == pytest.approx(1.5)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_mod.add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_flags_and_config_file(tiny_config: TrainConfig, tmp_path: Path) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text("d_model = 16\nnum_heads = 2\nmax_steps = 3\n")
    out = tmp_path / "cli"
    code = _cli(
        [
            "train",
            "--config",
            str(config_file),
            "--train-data",
            tiny_config.train_data,
            "--valid-data",
            tiny_config.valid_data,
            "--vocab-size",
            "64",
            "--context-length",
            "16",
            "--num-layers",
            "1",
            "--batch-size",
            "2",
            "--warmup-steps",
            "1",
            "--max-steps",
            "2",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--out-dir",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--ffn-type",
            "silu",
        ]
    )
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    # flag beats file
    assert (saved["model"]["d_model"], saved["max_steps"], saved["model"]["ffn_type"]) == (16, 2, "silu")
    assert read_run_checkpoint(out / "ckpt_latest.pt")["iteration"] == 2


def test_cli_exit_codes_for_bad_input_and_divergence(
    tiny_config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _cli(["train", "--train-data", str(tmp_path / "missing.npy"), "--valid-data", "x"]) == 2
    monkeypatch.setattr(Assignment, "training_loss", lambda self, logits, targets: logits.sum() * math.inf)
    code = _cli(
        [
            "train",
            "--train-data",
            tiny_config.train_data,
            "--valid-data",
            tiny_config.valid_data,
            "--vocab-size",
            "64",
            "--context-length",
            "16",
            "--d-model",
            "16",
            "--num-heads",
            "2",
            "--num-layers",
            "1",
            "--batch-size",
            "2",
            "--warmup-steps",
            "0",
            "--max-steps",
            "2",
            "--out-dir",
            str(tmp_path / "nan"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 1


def test_bf16_autocast_on_cpu_trains(tiny_config: TrainConfig) -> None:
    # On CUDA "auto" means bf16; CPU autocast runs the same code path (matmuls in bf16, loss in float32).
    result = train(dataclasses.replace(tiny_config, precision="bf16", max_steps=4))
    assert math.isfinite(result.final_val_loss) and result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("CS336_TEST_COMPILE") != "1",
    reason="torch.compile on CPU takes ~1-3 minutes of compilation: set CS336_TEST_COMPILE=1 to run it",
)
def test_torch_compile_trains(tiny_config: TrainConfig) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    result = train(dataclasses.replace(tiny_config, compile=True, max_steps=4))
    payload = read_run_checkpoint(Path(tiny_config.out_dir) / "ckpt_latest.pt")
    assert not any(k.startswith("_orig_mod.") for k in payload["model"])  # saved without the wrapper's prefix
    assert math.isfinite(result.final_val_loss)


def test_token_ids_beyond_the_vocabulary_are_named(tiny_config: TrainConfig) -> None:
    with pytest.raises(ValueError, match=r"token id 62, expected ids in \[0, vocab_size=50\)"):
        train(_with_model(tiny_config, vocab_size=50))


def test_mfu_uses_the_peak_flops_the_user_gives(tiny_config: TrainConfig) -> None:
    from cs336_lab.accounting import training_flops_per_token

    config = dataclasses.replace(tiny_config, max_steps=3, warmup_steps=1, peak_flops=1e9)
    records = train(config).history
    flops = training_flops_per_token(config.model, config.model.context_length)
    for r in records:  # on CPU no peak is known: without peak_flops there would be no "mfu" at all
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops / 1e9, rel=1e-9)
    assert "mfu" not in train(dataclasses.replace(config, peak_flops=None, out_dir=config.out_dir + "2")).history[0]
    with pytest.raises(ValueError, match="peak_flops"):
        dataclasses.replace(config, peak_flops=0.0)


def test_threads_is_applied_during_the_run_logged_and_restored(
    tiny_config: TrainConfig, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`threads` (a recipe's "one CPU thread") holds while the run steps, is said at start-up, and the caller's
    count is back afterwards; None leaves torch's count alone."""
    seen: list[int] = []
    real_update = train_mod._update

    def spy(run, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_update(run, *args, **kwargs)

    monkeypatch.setattr(train_mod, "_update", spy)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    with caplog.at_level("INFO", logger="cs336_lab.train"):
        train(dataclasses.replace(tiny_config, max_steps=2, warmup_steps=1, threads=wanted))
    assert seen and set(seen) == {wanted}
    assert f"{wanted} CPU thread(s)" in caplog.text
    assert torch.get_num_threads() == before
    seen.clear()
    train(
        dataclasses.replace(tiny_config, max_steps=2, warmup_steps=1, threads=None, out_dir=tiny_config.out_dir + "2")
    )
    assert set(seen) == {before}
    with pytest.raises(ValueError, match="threads must be >= 1"):
        dataclasses.replace(tiny_config, threads=0)
