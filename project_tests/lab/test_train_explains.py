"""Issue 23, "the CLI explains itself", for `cs336 train`, driven as a user would: a subprocess, real files.

The start-up summary (parameters, tokens per step, device, threads, precision, out dir; the step and checkpoint a
`--resume` continues from) and a default warm-up that never refuses a short run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

TINY = ["--vocab-size", "64", "--context-length", "16", "--d-model", "16", "--num-layers", "1", "--num-heads", "2"]


def _cs336(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cs336_lab.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _tokens(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    for name in ("train", "valid"):
        np.save(tmp_path / f"{name}.npy", rng.integers(0, 64, size=4_000, dtype=np.uint16))
    return ["--train-data", str(tmp_path / "train.npy"), "--valid-data", str(tmp_path / "valid.npy")]


def test_train_with_default_warmup_and_20_steps_succeeds_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*_tokens(tmp_path), *TINY, "--batch-size", "2", "--max-steps", "20", "--device", "cpu", "--out-dir"]
    done = _cs336("train", *args, str(out), "--eval-batches", "1", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["warmup_steps"] == 2  # min(100, 20 // 10)
    err = done.stderr
    params = sum(  # the model's parameters, counted by hand: embeddings, 1 block (attention, SwiGLU, 2 norms), head
        [64 * 16, 4 * 16 * 16, 3 * 16 * 64, 2 * 16, 16, 16 * 64]
    )
    assert f"{params:,} parameters" in err, err
    assert "32 tokens per step" in err  # batch 2 x context 16
    assert "device cpu" in err and "thread" in err and "precision fp32" in err
    assert str(out.resolve()) in err
    assert "warm-up 2" in err
    assert "resuming" not in err


def test_train_resume_says_where_it_continues(tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = [*_tokens(tmp_path), *TINY, "--batch-size", "2", "--device", "cpu", "--out-dir", str(out)]
    base += ["--eval-batches", "1", "--no-progress", "--warmup-steps", "1"]
    first = _cs336("train", *base, "--max-steps", "6", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = _cs336("train", *base, "--max-steps", "10", "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming from step 6 of {(out / 'ckpt_latest.pt').resolve()}" in second.stderr, second.stderr
    assert "stopped after 10 steps" in second.stderr
