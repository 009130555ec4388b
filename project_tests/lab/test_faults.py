"""Faults and bad input, from the outside: the `cs336` CLI in a subprocess, real signals, real files (issue 17).

Each case of the issue has a test here: one negative token id, a divergence that must keep a healthy
checkpoint, SIGTERM/SIGINT during training, a resume with another architecture, the time clock under DDP,
durable checkpoint writes, and the messages of bad input (exit code 2, one line naming expected and actual).
`test_random_kills_always_leave_a_loadable_checkpoint` kills training at random moments, many times.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cs336_common.atomic import TEMP_GLOB
from cs336_lab.run_checkpoint import read_run_checkpoint, save_run_checkpoint
from cs336_lab.tokenizer_files import save_tokenizer
from project_tests.lab.test_distributed import TORCHRUN, child_env, torchrun

REPO = Path(__file__).resolve().parents[2]
VOCAB = 257  # the bytes and <|endoftext|>: the byte tokenizer below decodes every id


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token arrays (one 50-token phrase repeated) and a byte-level tokenizer that decodes them."""
    root = tmp_path_factory.mktemp("data")
    phrase = np.random.default_rng(0).integers(97, 123, size=50)
    np.save(root / "train.npy", np.tile(phrase, 100).astype(np.uint16))
    np.save(root / "valid.npy", np.tile(phrase, 20).astype(np.uint16))
    save_tokenizer({i: bytes([i]) for i in range(256)} | {256: b"<|endoftext|>"}, [], root / "tok", ["<|endoftext|>"])
    (root / "story.txt").write_text("Once upon a time there was a cat.\n<|endoftext|>\n" * 20)
    return root


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--train-data",
        str(data / "train.npy"),
        "--valid-data",
        str(data / "valid.npy"),
        "--tokenizer-dir",
        str(data / "tok"),
        "--vocab-size",
        str(VOCAB),
        "--context-length",
        "16",
        "--d-model",
        "32",
        "--num-layers",
        "1",
        "--num-heads",
        "2",
        "--batch-size",
        "4",
        "--warmup-steps",
        "0",
        "--eval-every",
        "100000",
        "--eval-batches",
        "1",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--out-dir",
        str(out),
        *extra,
    ]


def cs336(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cs336_lab.cli", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cs336_lab.cli", *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Any, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run did not get there in time")
        time.sleep(0.05)


def metric_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line] if path.exists() else []


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refusal: exit 2, no traceback; progress notes before it (`12:03:04 using 1 CPU
    thread(s)`, the CLI's info format) are not part of the error."""
    info = re.compile(r"^\d\d:\d\d:\d\d (?!error: |warning: |critical: )")
    lines = [line for line in done.stderr.splitlines() if line.strip() and not info.match(line)]
    assert done.returncode == 2 and len(lines) == 1 and " error: " in lines[0], done.stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------ wrong results, lost work


@pytest.mark.slow
def test_one_negative_token_id_is_refused_before_any_output(data: Path, tmp_path: Path) -> None:
    tokens = np.load(data / "train.npy").astype(np.int32)
    tokens[1234] = -3
    np.save(tmp_path / "bad.npy", tokens)
    args = train_args(data, tmp_path / "run", "--max-steps", "3")
    args[args.index("--train-data") + 1] = str(tmp_path / "bad.npy")
    line = one_error_line(cs336(*args))
    assert "token id -3" in line and "expected ids in [0, vocab_size=257)" in line
    assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_divergence_keeps_the_last_healthy_checkpoint_which_generates(data: Path, tmp_path: Path) -> None:
    # Warm-up: step 1 runs at lr 0 (a healthy checkpoint), step 2 at lr 5e3 sends the weights to ~1e3-1e4.
    out = tmp_path / "run"
    done = cs336(
        *train_args(
            data,
            out,
            "--max-steps",
            "50",
            "--lr-max",
            "1e4",
            "--lr-min",
            "1e4",
            "--warmup-steps",
            "2",
            "--checkpoint-every",
            "1",
        )
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "diverged by step 2" in done.stderr and "keeps the last healthy state (step 1)" in done.stderr
    payload = read_run_checkpoint(out / "ckpt_latest.pt")
    assert payload["iteration"] == 1
    assert max(t.abs().max().item() for t in payload["model"].values()) < 100
    sample = cs336(
        "generate",
        "--checkpoint",
        str(out / "ckpt_latest.pt"),
        "--prompt",
        "ab",
        "--max-new-tokens",
        "4",
        "--seed",
        "0",
    )
    assert sample.returncode == 0 and sample.stdout.startswith("ab"), sample.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_the_step_saves_and_exits(data: Path, tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = start(*train_args(data, out, "--max-steps", "100000", "--checkpoint-every", "100000"))
    wait_for(lambda: len(metric_steps(out)) >= 3, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    step = metric_steps(out)[-1]
    assert f"stopped by {sig.name} after step {step}: checkpoint saved" in stderr
    assert read_run_checkpoint(out / "ckpt_latest.pt")["iteration"] == step  # nothing since the last step lost
    assert not list(out.glob(TEMP_GLOB))


@pytest.mark.slow
def test_resume_refuses_another_architecture(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cs336(*train_args(data, out, "--max-steps", "2")).returncode == 0
    saved = (out / "config.json").read_text()
    line = one_error_line(cs336(*train_args(data, out, "--max-steps", "4", "--num-heads", "4", "--resume")))
    assert "num_heads=2 in the checkpoint, 4 asked" in line
    assert (out / "config.json").read_text() == saved and read_run_checkpoint(out / "ckpt_latest.pt")["iteration"] == 2


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_time_clock_under_ddp_keeps_the_replicas_identical(data: Path, tmp_path: Path) -> None:
    """Rank 1 is slower and the ranks start at different moments; one shared clock gives one learning rate."""
    out = tmp_path / "run"
    out.mkdir()
    args = train_args(data, out, "--max-steps", "6", "--lr-clock", "time", "--max-time-s", "3", "--warmup-steps", "3")[
        1:
    ]
    torchrun([str(REPO / "project_tests" / "lab" / "ddp_clock_worker.py"), str(out), *args], nproc=2, cwd=tmp_path)
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the replicas drifted apart"
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(set(lrs)) > 1  # the schedule did move with the clock


def test_checkpoint_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name file descriptors")
    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_run_checkpoint(tmp_path / "ckpt.pt", torch.nn.Linear(2, 2), None, 1)
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".ckpt.pt.")) and synced[1] == str(tmp_path)


# ------------------------------------------------------------------------------------------------- bad input


def _bad_inputs(data: Path, tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "adir").mkdir()
    (tmp / "afile").write_text("x")
    (tmp / "empty.txt").write_text("")
    (tmp / "cut_tok").mkdir()
    (tmp / "cut_tok" / "vocab.json").write_text((data / "tok" / "vocab.json").read_text()[:200])
    (tmp / "cut_tok" / "merges.txt").write_text((data / "tok" / "merges.txt").read_text())
    ckpt = tmp / "run" / "ckpt_latest.pt"
    return [
        (
            ["train-bpe", str(tmp / "adir"), "--vocab-size", "300", "--out", str(tmp / "t")],
            "training text " + str(tmp / "adir") + ": expected a text file, found a directory",
        ),
        (["generate", "--checkpoint", str(tmp / "adir")], "expected a checkpoint file, found a directory"),
        (train_args(data, tmp / "afile", "--max-steps", "1"), "expected a directory, found a file"),
        (
            [
                "tokenize",
                str(data / "story.txt"),
                "--tokenizer",
                str(data / "tok"),
                "--out-dir",
                str(tmp / "afile" / "x"),
            ],
            "expected a directory, found a file (at " + str(tmp / "afile") + ")",
        ),
        (
            ["make-corpus", "--out", str(tmp / "afile"), "--num-train", "2", "--num-valid", "1"],
            "expected a directory, found a file",
        ),
        (["download", "tinystories", "--out", str(tmp / "afile")], "expected a directory, found a file"),
        (["generate", "--checkpoint", str(ckpt), "--tokenizer", str(tmp / "cut_tok")], "expected a JSON vocabulary"),
        (["train-bpe", str(tmp / "empty.txt"), "--vocab-size", "300", "--out", str(tmp / "t")], "got an empty file"),
        (
            [
                "train-bpe",
                str(data / "story.txt"),
                "--vocab-size",
                "300",
                "--out",
                str(tmp / "t"),
                "--num-workers",
                "0",
            ],
            "--num-workers must be >= 1",
        ),
        (["generate", "--checkpoint", str(ckpt), "--temperature", "nan"], "--temperature must be a finite number"),
        (["generate", "--checkpoint", str(ckpt), "--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    ]


@pytest.mark.slow
def test_every_command_maps_bad_input_to_exit_code_2_with_one_line(data: Path, tmp_path: Path) -> None:
    assert cs336(*train_args(data, tmp_path / "run", "--max-steps", "1")).returncode == 0
    for args, expected in _bad_inputs(data, tmp_path):
        line = one_error_line(cs336(*args))
        assert expected in line, f"cs336 {' '.join(args)}: {line}"


@pytest.mark.slow
def test_a_tokenizer_that_falls_short_of_the_vocabulary_says_so(data: Path, tmp_path: Path) -> None:
    done = cs336(
        "train-bpe",
        str(data / "story.txt"),
        "--vocab-size",
        "100000",
        "--out",
        str(tmp_path / "t"),
        "--num-workers",
        "1",
        "--no-progress",
    )
    assert done.returncode == 0
    assert "asked for 100000 tokens, got" in done.stderr and "no more pairs to merge" in done.stderr


# ------------------------------------------------------------------------------------------- fault injection


@pytest.mark.slow
def test_random_kills_always_leave_a_loadable_checkpoint(data: Path, tmp_path: Path) -> None:
    """SIGKILL, SIGTERM or SIGINT at a random moment, eight times: each time the newest checkpoint loads, the
    run resumes from it, and no temporary file is left behind (a SIGKILL mid-write leaves one, which the
    resumed run removes)."""
    rng = random.Random(17)
    out = tmp_path / "run"
    base = train_args(data, out, "--max-steps", "100000", "--checkpoint-every", "1")
    last = 0
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f".ckpt_latest.pt.{int(gone.stdout)}.0123abcd.tmp").write_bytes(b"half a checkpoint")  # a dead writer's
    for attempt in range(8):
        debris = list(out.glob(TEMP_GLOB))  # only a SIGKILL mid-write leaves any: the next run removes it
        proc = start(*base, *(["--resume"] if attempt else []))
        # step last+2 logged: the checkpoint of step last+1 is on disk (a step logs, then saves)
        wait_for(lambda last=last: bool(metric_steps(out)) and metric_steps(out)[-1] >= last + 2, proc)
        assert not [p for p in debris if p.exists()], "the resumed run kept a killed run's temporary files"
        time.sleep(rng.uniform(0.0, 0.6))
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGINT), stderr[-3000:]
        if sig != signal.SIGKILL:  # a graceful stop deletes its own; SIGKILL gives no chance to
            assert not list(out.glob(TEMP_GLOB)), f"temporary files left after {sig.name}"
        iteration = read_run_checkpoint(out / "ckpt_latest.pt")["iteration"]
        assert iteration > last, f"attempt {attempt} ({sig.name}): the resumed run made no progress"
        last = iteration
    done = cs336(
        *base[: base.index("--max-steps") + 1], str(last + 2), *base[base.index("--max-steps") + 2 :], "--resume"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_run_checkpoint(out / "ckpt_latest.pt")["iteration"] == last + 2
    assert not list(out.glob(TEMP_GLOB))


# ------------------------------------------------------------------------------------------------ cs336 grade


def _processes_inside(directory: Path) -> list[int]:
    """Processes whose working directory or command line lies under `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(directory)) or str(directory) in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_grade_sigterm_stops_its_test_processes_and_removes_the_workspace(tmp_path: Path) -> None:
    import shutil

    submission = tmp_path / "submission"
    shutil.copytree(REPO / "cs336_basics", submission / "cs336_basics")
    (submission / "tests").mkdir()
    shutil.copy(REPO / "tests" / "adapters.py", submission / "tests" / "adapters.py")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = child_env() | {"TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cs336_lab.cli", "grade", str(submission), "--out", str(tmp_path / "results.json")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: len(_processes_inside(scratch)) > 0, proc)  # test processes run in the workspace
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    deadline = time.monotonic() + 10
    while _processes_inside(scratch) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_inside(scratch) == [], "test processes outlived cs336 grade"
    assert list(scratch.iterdir()) == [], "the workspace was left behind"
