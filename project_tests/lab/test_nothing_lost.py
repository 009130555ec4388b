"""Nothing a user made is lost or mixed (issue 23, "silent loss or wrong results"), from the outside.

Each case drives the `cs336` CLI in a subprocess on real files (and real signals): a run folder that holds a
run is refused without --resume/--start-over, two runs into one folder at once are refused with the holder's
pid, `cs336 tokenize` refuses name collisions and never overwrites a token file silently, `cs336 handout` never
erases a student's work, relative paths in a checkpoint resolve from anywhere, and a tokenizer that does not
match the model is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from cs336_lab.run_folder import RunFolderBusyError, lock_run_folder
from cs336_lab.tokenizer_files import save_tokenizer
from project_tests.lab.test_distributed import torchrun
from project_tests.lab.test_faults import VOCAB, cs336, data, metric_steps, one_error_line, start, train_args, wait_for

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


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_when_rank_zero_refuses_the_folder(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}\n")  # an earlier run
    output = torchrun(
        ["-m", "cs336_lab.cli", *train_args(data, out, "--max-steps", "2")],
        nproc=2,
        cwd=tmp_path,
        expect_failure=True,
        timeout=180,
    )  # a rank left waiting in a collective would time out
    assert "already holds a run (config.json)" in output
    assert (out / "config.json").read_text() == "{}\n" and not (out / "metrics.jsonl").exists()


def test_the_lock_is_held_inside_the_block_only(tmp_path: Path) -> None:
    with lock_run_folder(tmp_path / "run"):
        with pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()}"):
            with lock_run_folder(tmp_path / "run"):
                pass
    with lock_run_folder(tmp_path / "run"):  # released: a sweep's next point, a resumed run in one process
        pass


# ------------------------------------------------------------------------- 4: token files are never overwritten


def _tokenize(
    data: Path, out: Path, *inputs: Path | str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return cs336(
        "tokenize",
        *map(str, inputs),
        "--tokenizer",
        str(data / "tok"),
        "--out-dir",
        str(out),
        "--num-workers",
        "1",
        "--no-progress",
        *extra,
    )


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


# ------------------------------------------------------------------ 6: a checkpoint's paths resolve from anywhere


def _train_relative(data: Path, work: Path, tokenizer: Path | None = None, vocab_size: int = VOCAB) -> Path:
    """Train 2 steps from the folder `work` with relative paths only (the tokenizer copied to `work/tok`);
    return the checkpoint's absolute path."""
    work.mkdir()
    for name in ("train.npy", "valid.npy"):
        shutil.copyfile(data / name, work / name)
    shutil.copytree(tokenizer or data / "tok", work / "tok")
    args = train_args(data, Path("run"), "--max-steps", "2")
    for flag, value in (
        ("--train-data", "train.npy"),
        ("--valid-data", "valid.npy"),
        ("--tokenizer-dir", "tok"),
        ("--vocab-size", str(vocab_size)),
    ):
        args[args.index(flag) + 1] = value
    done = cs336(*args, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "run" / "ckpt_latest.pt"


def _bpe_like(path: Path, size: int, swap: bool = False) -> Path:
    """A tokenizer of `size` tokens: the 256 bytes (a and b swapped if `swap`), two-letter merges, <|endoftext|>."""
    vocab = {i: bytes([i]) for i in range(256)} | ({97: b"b", 98: b"a"} if swap else {})
    merges = [(b"a", bytes([97 + i % 26])) for i in range(size - 257)]
    vocab |= {256 + i: a + b for i, (a, b) in enumerate(merges)} | {size - 1: b"<|endoftext|>"}
    save_tokenizer(vocab, merges, path, ["<|endoftext|>"])
    return path


@pytest.mark.slow
def test_a_checkpoint_trained_with_relative_paths_generates_from_another_folder(data: Path, tmp_path: Path) -> None:
    ckpt = _train_relative(data, tmp_path / "work")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = cs336(
        "generate", "--checkpoint", str(ckpt), "--prompt", "ab", "--max-new-tokens", "3", "--seed", "0", cwd=elsewhere
    )
    assert done.returncode == 0 and done.stdout.startswith("ab"), done.stderr[-3000:]
    done = cs336(
        "evaluate", "--checkpoint", str(ckpt), "--data", str(data / "story.txt"), "--no-progress", cwd=elsewhere
    )
    assert done.returncode == 0 and json.loads(done.stdout)["bits_per_byte"] is not None, done.stderr[-3000:]

    # An older checkpoint recorded the relative path as given: the error names every path tried.
    payload = torch.load(ckpt, weights_only=True)
    payload["config"]["tokenizer_dir"] = "tok-gone"
    torch.save(payload, tmp_path / "old.pt")
    line = one_error_line(cs336("generate", "--checkpoint", str(tmp_path / "old.pt"), cwd=elsewhere))
    assert str(elsewhere / "tok-gone") in line and str(tmp_path / "tok-gone") in line and "--tokenizer" in line


# ------------------------------------------------------------------ 5: the tokenizer must be the model's


@pytest.mark.slow
def test_a_tokenizer_that_does_not_fit_the_model_is_refused_and_another_one_warned(data: Path, tmp_path: Path) -> None:
    # The case: a model of 300 tokens given a tokenizer of fewer (257, ids it cannot decode), or more.
    ckpt = _train_relative(data, tmp_path / "work", _bpe_like(tmp_path / "tok300", 300), vocab_size=300)
    story = str(data / "story.txt")
    for command in (("generate", "--prompt", "ab", "--max-new-tokens", "2"), ("evaluate", "--data", story)):
        for tokenizer, size in ((data / "tok", 257), (_bpe_like(tmp_path / "tok400", 400), 400)):
            line = one_error_line(cs336(*command, "--checkpoint", str(ckpt), "--tokenizer", str(tokenizer)))
            assert f"model's 300 tokens, got {size}" in line and str(tokenizer) in line, command
        other = _bpe_like(tmp_path / "other300", 300, swap=True)  # the model's size, another tokenizer
        done = cs336(*command, "--checkpoint", str(ckpt), "--tokenizer", str(other))
        assert done.returncode == 0, done.stderr[-3000:]
        assert (
            "is not the one the model was trained with" in done.stderr and str(tmp_path / "work" / "tok") in done.stderr
        )
        done = cs336(*command, "--checkpoint", str(ckpt))  # the recorded tokenizer: no warning
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-3000:]
