"""`make gpu-check` (bench/gpu_check.py): its offline data, its config from a recipe, its verdict, and the whole
path (bf16 autocast, torch.compile, checkpoint, `cs336 generate`) run on the CPU in its smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench import gpu_check
from bench.common import REPO_ROOT
from cs336_common.model_spec import ModelSpec


def test_the_made_up_tokenizer_has_the_models_size_and_valid_merges() -> None:
    vocab, merges = gpu_check.made_up_tokenizer(1000)
    assert sorted(vocab) == list(range(1000)) and vocab[999] == b"<|endoftext|>"
    assert len(set(vocab.values())) == 1000
    rank = {token: i for i, token in vocab.items()}
    for left, right in merges:  # each merge joins two earlier tokens into the next new one
        assert rank[left] < rank[left + right] and rank[right] < rank[left + right]
    assert len(merges) == 1000 - 256 - 1


def test_the_synthetic_tokens_are_a_learnable_walk() -> None:
    tokens = gpu_check.synthetic_tokens(10_000, 512, seed=0).astype(np.int64)
    assert tokens.min() >= 0 and tokens.max() < 511  # the EOS id (511) never appears
    assert set(np.unique((tokens[1:] - tokens[:-1]) % 511)) == {1, 2, 3, 5}


def test_the_check_runs_the_recipe_with_bf16_compile_and_its_own_budget(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    text = (gpu_check.RECIPES / "tinystories_baseline.toml").read_text()
    recipe.write_text(text.replace('norm_position = "pre"', 'norm_position = "post"'))
    config = gpu_check.check_config(recipe, tmp_path / "out", smoke=True, steps=12)
    assert (config.device, config.precision, config.compile, config.threads) == ("cpu", "bf16", True, 1)
    assert (config.max_steps, config.lr_clock, config.checkpoint_every) == (12, "steps", 12)
    assert config.model.norm_position == "post"  # the recipe's switches stay
    assert config.lr_max == 2e-3 and config.model.vocab_size == 512
    assert np.load(config.train_data).max() < 511 and (Path(config.tokenizer_dir) / "vocab.json").is_file()
    gpu = gpu_check.check_config(recipe, tmp_path / "gpu", smoke=False, steps=300)
    assert (gpu.device, gpu.batch_size, gpu.model.vocab_size, gpu.model.context_length) == ("cuda", 128, 10_000, 256)


@pytest.mark.parametrize(
    ("device", "final", "rc", "ok"),
    [
        ("cpu", 5.9, 0, True),
        ("cpu", 6.2, 0, False),
        ("cpu", 2.0, 1, False),
        ("cuda", 5.3, 0, True),
        ("cuda", 5.9, 0, False),
    ],
)
def test_the_verdict_needs_the_loss_to_fall_and_the_sample(device: str, final: float, rc: int, ok: bool) -> None:
    """From the first training loss 6.4: down >= 0.3 nat in the CPU smoke run, >= 1 nat on the GPU; and a sample."""
    history = [{"train_loss": 6.4, "tokens_per_s": 10.0}, {"train_loss": 3.0, "tokens_per_s": 100.0}]
    result = SimpleNamespace(history=history, steps=2, elapsed_s=1.0, final_val_loss=final)
    config = SimpleNamespace(device=device, model=ModelSpec(), batch_size=8)
    sampled = subprocess.CompletedProcess([], rc, stdout="text", stderr="")
    summary = gpu_check.summarise(result, config, 2.0, sampled)
    assert summary["ok"] is ok and summary["tokens_per_s"] == 100.0  # the first window (compiling) left out


def test_default_recipe_prefers_the_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check, "RECIPES", tmp_path)
    assert gpu_check.default_gpu_recipe().name == "tinystories_baseline.toml"
    (tmp_path / "tinystories.toml").write_text("")
    assert gpu_check.default_gpu_recipe().name == "tinystories.toml"


@pytest.mark.slow
def test_cpu_smoke_runs_the_whole_check(tmp_path: Path) -> None:
    """The GPU check's code path on the CPU: bf16 autocast, torch.compile, the checkpoint sampled by
    `cs336 generate` (~2 min on a busy 2-core machine, most of it compiling)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--cpu-smoke", "--out-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "gpu-check (CPU smoke" in proc.stdout and "sample ok" in proc.stdout
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["loss_fell"] and summary["sample_ok"] and summary["steps"] == 30
    ran = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (ran["precision"], ran["compile"], ran["device"]) == ("bf16", True, "cpu")
    assert "torch.compile" in proc.stderr and "bf16 autocast" in proc.stderr
