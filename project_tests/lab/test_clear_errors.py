"""Confusing failures made plain (issue 23, "confusing"), from the outside: the `cs336` CLI in a subprocess.

Each case gets one line naming what was expected and what came, exit code 2 for the user's bad input and 1 for
the environment (a full disk), no traceback and no unsafe advice: a text file as `--train-data`, random bytes
or a 6-byte text as a checkpoint, a full disk while checkpointing (a real one: a tiny tmpfs in a mount
namespace), non-finite or out-of-range hyper-parameters, a non-UTF-8 split for `evaluate`, a diverged,
running or killed run in `cs336 compare`; and the further cases found while there (a folder as `--config`, a
resume after a metrics line was cut short).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cs336_lab.run_checkpoint import read_run_checkpoint
from project_tests.lab.test_distributed import child_env
from project_tests.lab.test_faults import cs336, data, metric_steps, start, train_args, wait_for

__all__ = ["data"]  # the fixture, shared with test_faults

ONE_TRAIN = ("--max-steps", "2")


def one_error_line(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one error line of a command that failed with exit code `code`, without a traceback (info lines, such
    as a start-up summary, may come before it)."""
    errors = [line for line in done.stderr.splitlines() if " error: " in line]
    assert done.returncode == code and len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and errors[0] == done.stderr.strip().splitlines()[-1], done.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run's folder."""
    out = tmp_path_factory.mktemp("trained") / "run"
    done = cs336(*train_args(data, out, *ONE_TRAIN))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


# ------------------------------------------------------------------------------- files of the wrong kind


def test_a_text_file_as_train_data_says_it_expected_a_token_array(data: Path, tmp_path: Path) -> None:
    args = train_args(data, tmp_path / "run", *ONE_TRAIN)
    args[args.index("--train-data") + 1] = str(data / "story.txt")
    line = one_error_line(cs336(*args))
    assert "train_data: expected a .npy token array" in line and str(data / "story.txt") in line
    assert "UTF-8 text of 960 bytes starting 'Once upon" in line and "pickle" not in line


def _random_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * 16)
    return path


@pytest.mark.parametrize("command", ["generate", "evaluate", "resume"])
def test_random_bytes_as_a_checkpoint_is_no_checkpoint_without_unsafe_advice(
    data: Path, tmp_path: Path, command: str
) -> None:
    ckpt = _random_checkpoint(tmp_path / "run" / "ckpt_latest.pt")
    args = {
        "generate": ["generate", "--checkpoint", str(ckpt)],
        "evaluate": ["evaluate", "--checkpoint", str(ckpt), "--data", str(data / "story.txt")],
        "resume": train_args(data, tmp_path / "run", *ONE_TRAIN, "--resume"),
    }[command]
    done = cs336(*args)
    line = one_error_line(done)
    assert f"{ckpt} is not a checkpoint: expected a file written by torch.save" in line
    assert "binary data of 4096 bytes" in line and "weights_only" not in done.stderr


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_a_six_byte_text_as_a_checkpoint_is_one_line(data: Path, tmp_path: Path, command: str) -> None:
    ckpt = tmp_path / "notes.pt"
    ckpt.write_text("hello\n")  # today: KeyError: 101 (the 'e'), a traceback, exit 1
    extra = ["--data", str(data / "story.txt")] if command == "evaluate" else []
    line = one_error_line(cs336(command, "--checkpoint", str(ckpt), *extra))
    assert f"{ckpt} is not a checkpoint" in line and "UTF-8 text of 6 bytes starting 'hello\\n'" in line


def test_a_folder_as_config_file_says_it_is_a_folder(tmp_path: Path) -> None:
    line = one_error_line(cs336("train", "--config", str(tmp_path)))
    assert f"config file {tmp_path}: expected a .toml or .json file, found a directory" in line


# ------------------------------------------------------------------------------------ hyper-parameters


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (["--weight-decay", "inf"], "--weight-decay (weight_decay) must be a finite number >= 0, got inf"),
        (["--lr-max", "inf", "--lr-min", "0"], "--lr-max (lr_max) must be a finite number > 0, got inf"),
        (["--adam-eps", "nan"], "--adam-eps (adam_eps) must be a finite number > 0, got nan"),
        (["--grad-clip", "inf"], "--grad-clip (grad_clip) must be a finite number >= 0"),
        (["--betas", "0.9", "1"], "--betas (betas) must be two numbers in [0, 1), got 0.9 1.0"),
    ],
    ids=["weight-decay", "lr-max", "adam-eps", "grad-clip", "betas"],
)
def test_a_non_finite_or_out_of_range_setting_is_refused_up_front(
    data: Path, tmp_path: Path, flag: list[str], expected: str
) -> None:
    line = one_error_line(cs336(*train_args(data, tmp_path / "run", *ONE_TRAIN, *flag)))
    assert expected in line
    assert not (tmp_path / "run" / "ckpt_latest.pt").exists()


# ------------------------------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_of_a_non_utf8_text_names_the_file_and_the_byte_offset(trained: Path, tmp_path: Path) -> None:
    text = tmp_path / "valid.txt"
    text.write_bytes(b"Once upon a time\n" * 3 + b"\xff\xfe and on\n")
    line = one_error_line(
        cs336("evaluate", "--checkpoint", str(trained / "ckpt_latest.pt"), "--data", str(text), "--no-progress")
    )
    assert f"{text} is not valid UTF-8: bytes b'\\xff' at byte offset 51" in line


# -------------------------------------------------------------------------------------------- disk full


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


# NOTE: a real full disk, not a patched write: torch reports ENOSPC as a RuntimeError ("unexpected pos"), with
# the OSError only as its context, which a simulated OSError would never show. The tmpfs lives in a private
# mount namespace (`unshare -rm`: no root needed where user namespaces are allowed), so it vanishes with the
# command; the script copies the run folder out before it ends.
_FULL_DISK = """
set -u
mount -t tmpfs -o size=560k tmpfs "$1" || exit 99
shift
"$@" 2> "$SAVE/stderr"
echo $? > "$SAVE/rc"
cp -r "$MNT/run" "$SAVE/run"
"""


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` and a tmpfs mount (user namespaces)")
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(
    data: Path, tmp_path: Path
) -> None:
    # 560 KiB hold one checkpoint (~350 KB) and the run's small files, not a second one beside it.
    mnt, save = tmp_path / "mnt", tmp_path / "save"
    mnt.mkdir()
    save.mkdir()
    args = train_args(data, mnt / "run", "--max-steps", "6", "--checkpoint-every", "2")
    command = [sys.executable, "-m", "cs336_lab.cli", *args]
    env = {**child_env(), "SAVE": str(save), "MNT": str(mnt)}
    subprocess.run(["unshare", "-rm", "sh", "-c", _FULL_DISK, "sh", str(mnt), *command], env=env, timeout=300)
    stderr = (save / "stderr").read_text()
    done = subprocess.CompletedProcess(command, int((save / "rc").read_text()), stdout="", stderr=stderr)
    line = one_error_line(done, code=1)
    assert f"could not write to {mnt / 'run'}: No space left on device" in line
    assert f"{mnt / 'run' / 'ckpt_latest.pt'} keeps the last healthy state (step 2)" in line
    assert "free some space and continue with --resume" in line
    assert read_run_checkpoint(save / "run" / "ckpt_latest.pt")["iteration"] == 2  # the previous one, whole
    assert not list((save / "run").glob(".*.tmp"))
    outcome = json.loads((save / "run" / "outcome.json").read_text())
    assert outcome["status"] == "failed" and "No space left on device" in outcome["error"]


@pytest.mark.slow
def test_resume_drops_a_metrics_line_cut_short(trained: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train_lo')  # a full disk, or a kill, in the middle of a line
    done = cs336(*train_args(data, out, "--max-steps", "3", "--resume"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "metrics.jsonl line 3 is not a JSON record (cut short?): dropped" in done.stderr
    assert metric_steps(out) == [1, 2, 3]


# -------------------------------------------------------------------------------------------- compare


def _compare_row(run: Path, tmp_path: Path) -> dict[str, str]:
    """The run's row of the `cs336 compare` table, by column name."""
    done = cs336("compare", str(run), "--out", str(tmp_path / "compare.png"))
    assert done.returncode == 0, done.stderr[-3000:]
    header, _, row = done.stdout.splitlines()[:3]
    return dict(zip(*([cell.strip() for cell in line.strip("|").split("|")] for line in (header, row))))


@pytest.mark.slow
def test_compare_shows_a_diverged_run_as_diverged_with_its_steps(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    diverging = ("--max-steps", "50", "--lr-max", "1e4", "--lr-min", "1e4", "--warmup-steps", "2")
    done = cs336(*train_args(data, out, *diverging, "--checkpoint-every", "1", "--log-every", "100"))
    assert done.returncode == 1, done.stderr[-3000:]
    row = _compare_row(out, tmp_path)
    assert row["steps"] == "2" and row["tokens"] == "128"  # the run wrote no metrics record
    assert row["status"].startswith("diverged: the model diverged by step 2"), row


@pytest.mark.slow
def test_compare_shows_a_running_run_then_a_killed_one(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = start(*train_args(data, out, "--max-steps", "100000", "--checkpoint-every", "2"))
    try:
        wait_for(lambda: (out / "ckpt_latest.pt").is_file(), run)
        assert _compare_row(out, tmp_path)["status"] == "running"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        run.kill()
    row = _compare_row(out, tmp_path)
    assert row["status"] == "killed" and int(row["steps"]) >= 2


# ------------------------------------------------------------------------------ further cases found here


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "empty"])
def test_evaluate_of_a_folder_or_an_empty_text_names_it(trained: Path, tmp_path: Path, kind: str) -> None:
    data = tmp_path / ("split" if kind == "folder" else "empty.txt")
    data.mkdir() if kind == "folder" else data.write_text("")
    line = one_error_line(
        cs336("evaluate", "--checkpoint", str(trained / "ckpt_latest.pt"), "--data", str(data), "--no-progress")
    )
    expected = "found a directory" if kind == "folder" else "expected a text of at least 2 tokens"
    assert f"--data {data}: " in line and expected in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no folder can be made")
def test_an_out_dir_that_cannot_be_created_is_named(data: Path) -> None:
    line = one_error_line(cs336(*train_args(data, Path("/proc/no-such-pid/run"), *ONE_TRAIN)))
    assert "out_dir /proc/no-such-pid/run: could not create it (No such file or directory)" in line
