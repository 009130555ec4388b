"""Issue 23: progress bars only on a terminal. With stderr redirected to a file (a log, a batch job), `cs336
train-bpe`, `tokenize` and `evaluate` write plain lines (what they do, then how long it took), never a `\\r` bar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from project_tests.lab.tiny_run import VOCAB_SIZE, make_tiny_run


def _logged(tmp_path: Path, name: str, *argv: str) -> str:
    """Run `cs336 ARGV` with stderr redirected to a file; return what the file holds."""
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "cs336_lab.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
    text = log.read_bytes().decode()
    assert done.returncode == 0, text[-2000:]
    return text


@pytest.mark.slow
def test_redirected_output_has_plain_lines_and_no_carriage_returns(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path / "tiny")
    train_text = run.valid_text.with_name("train.txt")
    bpe = _logged(
        tmp_path, "bpe", "train-bpe", str(train_text), "--vocab-size", str(VOCAB_SIZE), "--out", str(tmp_path / "tok")
    )
    tokenize = _logged(
        tmp_path,
        "tokenize",
        "tokenize",
        "--tokenizer",
        str(tmp_path / "tok"),
        "--out-dir",
        str(tmp_path / "ids"),
        str(train_text),
        "--num-workers",
        "1",
    )
    evaluate = _logged(
        tmp_path, "evaluate", "evaluate", "--checkpoint", str(run.checkpoint), "--data", str(run.valid_text)
    )
    for name, text in {"train-bpe": bpe, "tokenize": tokenize, "evaluate": evaluate}.items():
        assert "\r" not in text, f"cs336 {name} wrote a progress bar into a file: {text[-500:]!r}"
    assert "training a 300-token BPE tokenizer" in bpe and " s -> " in bpe
    assert "encoding:" in tokenize and "done in" in tokenize
    assert "evaluate:" in evaluate and "windows done in" in evaluate


def test_off_a_terminal_progress_is_periodic_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    from cs336_lab.progress import LogProgress, progress

    with caplog.at_level("INFO", logger="cs336_lab"):
        bar = progress(10, "encoding", "B", unit_scale=True)  # pytest's stderr is no terminal
        assert isinstance(bar, LogProgress)
        with LogProgress(4, "evaluate", "windows", every_s=0.0) as bar:
            for _ in range(4):
                bar.update(1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate")]
    assert lines[0] == "evaluate: 4 windows to do"
    assert lines[1:4] == [f"evaluate: {n} of 4 windows ({n / 4:.0%})" for n in (1, 2, 3)]
    assert lines[4].startswith("evaluate: 4 windows done in")
