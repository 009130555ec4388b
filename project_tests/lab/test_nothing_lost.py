"""Nothing a user made is lost or mixed (issue 23, "silent loss or wrong results"), from the outside.

Each case drives the `cs336` CLI in a subprocess on real files (and real signals): a run folder that holds a
run is refused without --resume/--start-over, two runs into one folder at once are refused with the holder's
pid, `cs336 tokenize` refuses name collisions and never overwrites a token file silently, `cs336 handout` never
erases a student's work, relative paths in a checkpoint resolve from anywhere, and a tokenizer that does not
match the model is an error.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from cs336_lab.run_folder import RunFolderBusyError, lock_run_folder
from project_tests.lab.test_faults import cs336, data, metric_steps, one_error_line, start, train_args, wait_for

__all__ = ["data"]  # the fixture, shared with test_faults


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------- 2: a run folder is never overwritten


@pytest.mark.slow
def test_train_into_a_finished_run_is_refused_and_start_over_moves_it_aside(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cs336(*train_args(data, out, "--max-steps", "2")).returncode == 0
    first = {k: v for k, v in snapshot(out).items() if not k.startswith(".")}
    assert {"config.json", "ckpt_latest.pt", "metrics.jsonl"} <= first.keys()

    line = one_error_line(cs336(*train_args(data, out, "--max-steps", "3", "--seed", "1")))
    assert str(out) in line and "already holds a run" in line and "ckpt_latest.pt" in line
    assert "--resume" in line and "--start-over" in line
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".")} == first  # untouched

    done = cs336(*train_args(data, out, "--max-steps", "3", "--seed", "1", "--start-over"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert metric_steps(out)[-1] == 3
    (aside,) = tmp_path.glob("run.old-*")
    assert {k: v for k, v in snapshot(aside).items()} == first  # the earlier run, byte for byte
    assert str(aside) in done.stderr


# ------------------------------------------------------------------------- 3: one run at a time in a folder


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--resume", "--start-over"])
def test_a_second_run_into_a_live_runs_folder_is_refused_with_its_pid(data: Path, tmp_path: Path, how: str) -> None:
    out = tmp_path / "run"
    first = start(*train_args(data, out, "--max-steps", "100000", "--checkpoint-every", "2"))
    try:
        wait_for(lambda: (out / "ckpt_latest.pt").is_file() and len(metric_steps(out)) >= 2, first)
        line = one_error_line(cs336(*train_args(data, out, "--max-steps", "100000", how), timeout=90))
        assert f"in use by another run (pid {first.pid})" in line and str(out) in line
        assert not list(tmp_path.glob("run.old-*"))  # --start-over moved nothing of the live run
        first.send_signal(signal.SIGKILL)  # a crash: the OS drops the lock
        first.wait(timeout=60)
    finally:
        first.kill()
    steps = metric_steps(out)
    assert steps == list(range(1, len(steps) + 1))  # one run's records, in order
    done = cs336(*train_args(data, out, "--max-steps", str(steps[-1] + 1), "--resume"))
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_lock_is_held_inside_the_block_only(tmp_path: Path) -> None:
    with lock_run_folder(tmp_path / "run"):
        with pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()}"):
            with lock_run_folder(tmp_path / "run"):
                pass
    with lock_run_folder(tmp_path / "run"):  # released: a sweep's next point, a resumed run in one process
        pass


# ------------------------------------------------------------------------- 4: token files are never overwritten


def _tokenize(data: Path, out: Path, *inputs: Path | str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return cs336("tokenize", *map(str, inputs), "--tokenizer", str(data / "tok"), "--out-dir", str(out),
                 "--num-workers", "1", "--no-progress", *extra)


@pytest.mark.slow
def test_tokenize_refuses_two_inputs_with_one_name_before_any_work(data: Path, tmp_path: Path) -> None:
    for folder, text in (("a", "first\n"), ("b", "second, longer\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.txt").write_text(text * 10)
    line = one_error_line(_tokenize(data, tmp_path / "T", tmp_path / "a" / "train.txt", tmp_path / "b" / "train.txt"))
    assert str(tmp_path / "a" / "train.txt") in line and str(tmp_path / "b" / "train.txt") in line
    assert str(tmp_path / "T" / "train.npy") in line
    assert not (tmp_path / "T").exists()  # refused before any work


@pytest.mark.slow
def test_tokenize_never_replaces_a_token_file_silently(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "T"
    assert _tokenize(data, out, data / "story.txt").returncode == 0
    first = (out / "story.npy").read_bytes()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "story.txt").write_text("another story\n" * 5)
    line = one_error_line(_tokenize(data, out, tmp_path / "other" / "story.txt"))
    assert str(out / "story.npy") in line and "--overwrite" in line
    assert (out / "story.npy").read_bytes() == first
    done = _tokenize(data, out, tmp_path / "other" / "story.txt", extra=("--overwrite",))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "story.npy").read_bytes() != first
