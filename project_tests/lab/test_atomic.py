"""Atomic writes: the new content appears whole, and a failure leaves the old file and no debris."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cs336_lab.atomic import atomic_open, atomic_write_bytes, atomic_write_text, sweep_temp_files, temp_path


def test_write_text_and_bytes_create_parents_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.txt"
    atomic_write_text(target, "first ünïcode\n")
    assert target.read_text(encoding="utf-8") == "first ünïcode\n"
    atomic_write_bytes(target, b"\x00\xffsecond")
    assert target.read_bytes() == b"\x00\xffsecond"
    assert os.listdir(target.parent) == ["file.txt"]  # no temporary file left behind


def test_failure_leaves_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(target) as f:
            f.write("half of the new conte")
            raise RuntimeError("disk on fire")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(tmp_path) == ["results.json"]


def test_unencodable_text_leaves_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "lone surrogate \ud800")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_rejects_read_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_open(tmp_path / "x", "r"):
            pass


@pytest.mark.skipif(os.name != "posix", reason="pid liveness is checked with POSIX signals")
def test_sweep_removes_only_the_temporary_files_of_dead_writers(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(gone.stdout)  # that process has exited (a reused pid would only make us keep the file)
    dead = tmp_path / f".ckpt.pt.{dead_pid}.0123abcd.tmp"
    mine = temp_path(tmp_path / "ckpt.pt")            # this live process is writing it
    other = tmp_path / ".notes.txt.tmp"               # hidden and .tmp, but not one of ours: not touched
    keep = tmp_path / "ckpt.pt"
    for path in (dead, mine, other, keep):
        path.write_bytes(b"x")
    assert sweep_temp_files(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, other, keep))
