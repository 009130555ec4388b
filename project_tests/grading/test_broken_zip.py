"""A truncated or foreign zip given to `cs336 grade` (issue 23, "confusing"), from the outside.

A zip cut short (an interrupted upload) is still the student's zip: the grade says it is unreadable and
truncated, in one line, and still writes results.json (a zero grade that says why), whatever its name; a
batch grades it the same way instead of failing on it; Gradescope's folder with only a broken upload grades
that upload, not an empty folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cs336_grading.staff.autograder import find_submission
from cs336_grading.staff.batch import discover

REPO = Path(__file__).resolve().parents[2]


def _truncated_zip(path: Path) -> Path:
    """A two-file submission zip, cut in half."""
    whole = path.with_name("whole.zip")
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cs336_basics/__init__.py", "x = 1\n" * 20)
        zf.writestr("tests/adapters.py", "".join(f"# line {i}\n" for i in range(400)))
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    whole.unlink()
    return path


def _grade(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cs336_lab.cli", "grade", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("name", ["broken.zip", "broken-upload"], ids=["zip-suffix", "no-suffix"])
def test_a_truncated_zip_is_said_unreadable_and_still_gets_results_json(tmp_path: Path, name: str) -> None:
    archive = _truncated_zip(tmp_path / name)
    out = tmp_path / "results.json"
    done = _grade(str(archive), "--out", str(out), cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 0 and len(lines) == 1, done.stderr[-3000:]
    assert f"unreadable zip {name}: truncated or damaged" in lines[0]
    assert "expected a directory or a .zip file" not in lines[0] and "File is not a zip file" not in lines[0]
    payload = json.loads(out.read_text())
    assert payload["score"] == 0.0 and f"unreadable zip {name}: truncated or damaged" in payload["output"]


def test_a_foreign_file_named_zip_says_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "notes.zip").write_text("my notes\n")
    out = tmp_path / "results.json"
    done = _grade(str(tmp_path / "notes.zip"), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "unreadable zip notes.zip: not a zip archive: 9 bytes starting b'my notes\\n'"
        in json.loads(out.read_text())["output"]
    )


def test_a_batch_takes_a_truncated_zip_as_a_submission_and_refuses_a_plain_file(tmp_path: Path) -> None:
    archive = _truncated_zip(tmp_path / "alice.zip")
    assert [(e.student, e.source) for e in discover([archive])] == [("alice", archive)]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a submission folder or .zip file, or a folder of them, got a file"):
        discover([tmp_path / "notes.txt"])


def test_gradescope_grades_a_broken_upload_rather_than_an_empty_folder(tmp_path: Path) -> None:
    upload = _truncated_zip(tmp_path / "hw1.zip")
    assert find_submission(tmp_path) == upload
