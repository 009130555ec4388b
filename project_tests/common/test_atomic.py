"""Atomic writes: the new content appears whole, and a failure leaves the old file and no debris."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cs336_common.atomic
from cs336_common.atomic import (
    atomic_open,
    atomic_save_figure,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    commit,
    sweep_temp_files,
    temp_path,
)


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
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(gone.stdout)  # that process has exited (a reused pid would only make us keep the file)
    dead = tmp_path / f".ckpt.pt.{dead_pid}.0123abcd.tmp"
    mine = temp_path(tmp_path / "ckpt.pt")  # this live process is writing it
    other = tmp_path / ".notes.txt.tmp"  # hidden and .tmp, but not one of ours: not touched
    keep = tmp_path / "ckpt.pt"
    for path in (dead, mine, other, keep):
        path.write_bytes(b"x")
    assert sweep_temp_files(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, other, keep))


def test_docstring_examples() -> None:
    result = doctest.testmod(cs336_common.atomic)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.skipif(os.name != "posix", reason="links and modes are POSIX")
def test_never_writes_through_a_link_and_keeps_asked_permissions(tmp_path: Path, monkeypatch) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    target = tmp_path / "results.json"
    planted = tmp_path / ".results.json.planted.tmp"
    planted.symlink_to(victim)
    monkeypatch.setattr(cs336_common.atomic, "temp_path", lambda path, suffix=".tmp": planted)  # a guessed name
    with pytest.raises(FileExistsError):
        atomic_write_text(target, "new\n")
    assert victim.read_text() == "precious\n" and not target.exists()
    monkeypatch.undo()
    target.symlink_to(victim)  # a link at the target itself is replaced, not followed
    with atomic_open(target, "w", permissions=0o600) as f:
        f.write("secret\n")
    assert not target.is_symlink() and target.read_text() == "secret\n" and victim.read_text() == "precious\n"
    assert target.stat().st_mode & 0o777 == 0o600


def test_json_and_figure(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"ü": [1, 2]}, indent=None)
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{"\\u00fc": [1, 2]}\n'
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    atomic_save_figure(fig, tmp_path / "plot.png")
    atomic_save_figure(plt.figure(), tmp_path / "plot.svg")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "plot.svg").read_bytes()[:400]
    assert sorted(os.listdir(tmp_path)) == ["a.json", "plot.png", "plot.svg"] and plt.get_fignums() == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_commit_of_a_file_written_elsewhere_fsyncs_it_first(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    part = tmp_path / "owt.txt.part"  # e.g. a download appended to over several runs
    part.write_bytes(b"all of it")
    commit(part, tmp_path / "owt.txt", sync_file=True)
    assert synced == [str(part), str(tmp_path)] and (tmp_path / "owt.txt").read_bytes() == b"all of it"
