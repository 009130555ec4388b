"""Batch grading (`cs336 grade DIR --out-dir OUT`): discovery, resume, isolation of failures, the summary.

The fast tests replace the grader process by a function (`runner=`); the slow one grades 13 generated
submissions (reference, handout, broken, hanging, crashing, cheating, ungradable) against the real harness
on two cheap problems, is interrupted once with SIGINT and resumed, and checks summary.csv cell by cell.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from cs336_common.atomic import atomic_write_json
from cs336_grading.staff import batch
from cs336_grading.staff.batch import Entry, discover, grade_batch, wants_batch

REPO = Path(__file__).resolve().parents[2]


def make_dir_submission(root: Path, adapters: str = "def run_linear(): pass\n") -> Path:
    (root / "cs336_basics").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "tests" / "adapters.py").write_text(adapters)
    return root


def zip_tree(source: Path, archive: Path, top: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, Path(top) / path.relative_to(source))
    return archive


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ fast: no grader processes


def fake_runner(scores: dict[str, float], calls: list[str], fail: set[str] = frozenset()):  # type: ignore[no-untyped-def]
    """A stand-in grader process: writes results.json and grading.json as `grade_one` does."""

    def run(entry: Entry, out: Path, settings: dict[str, Any], digest: str, stop: threading.Event) -> dict[str, Any]:
        calls.append(entry.student)
        if entry.student in fail:
            raise RuntimeError("the grader blew up")
        total = scores[entry.student]
        tests = [
            {"name": "linear", "score": min(total, 1.0), "max_score": 1},
            {"name": "softmax", "score": max(0.0, total - 1), "max_score": 1},
        ]
        atomic_write_json(out / batch.RESULTS, {"score": total, "tests": tests})
        state = {
            "student": entry.student,
            "source": str(entry.source),
            "fingerprint": digest,
            "status": "graded",
            "flags": ["timeout"] if total == 0 else [],
            "seconds": 1.5,
            "score": total,
        }
        atomic_write_json(out / batch.STATE, state)
        return state

    return run


@pytest.fixture
def class_dir(tmp_path: Path) -> Path:
    root = tmp_path / "class"
    for name in ("alice", "bob", "carol"):
        make_dir_submission(root / name, f"# {name}\n")
    zip_tree(make_dir_submission(tmp_path / "dave-src"), root / "dave.zip", top="hw1")
    (root / "notes.txt").write_text("not a submission")
    return root


def test_discover_and_batch_detection(class_dir: Path, tmp_path: Path) -> None:
    entries = discover([class_dir])
    assert [e.student for e in entries] == ["alice", "bob", "carol", "dave"]
    assert wants_batch([str(class_dir)], None) and not wants_batch([str(class_dir / "alice")], None)
    assert not wants_batch([str(class_dir / "dave.zip")], None) and wants_batch([str(class_dir / "dave.zip")], "out")
    assert [e.student for e in discover([class_dir / "bob", class_dir / "dave.zip"])] == ["bob", "dave"]
    with pytest.raises(ValueError, match="one submission per student.*'bob'"):
        discover([class_dir, class_dir / "bob"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([tmp_path / "nobody"])


def test_resume_grades_only_what_is_unfinished_or_changed(class_dir: Path, tmp_path: Path) -> None:
    out, calls = tmp_path / "grades", []
    scores = {"alice": 2.0, "bob": 1.0, "carol": 0.0, "dave": 1.5}
    states = grade_batch(discover([class_dir]), out, {"timeout": 5}, jobs=2, runner=fake_runner(scores, calls))
    assert sorted(calls) == ["alice", "bob", "carol", "dave"] and all(s["status"] == "graded" for s in states)
    calls.clear()
    grade_batch(discover([class_dir]), out, {"timeout": 5}, jobs=2, runner=fake_runner(scores, calls))
    assert calls == []  # everything finished: nothing graded again
    (out / "bob" / batch.STATE).unlink()  # as if interrupted while grading bob
    (class_dir / "carol" / "tests" / "adapters.py").write_text("# resubmitted\n")
    grade_batch(discover([class_dir]), out, {"timeout": 5}, jobs=1, runner=fake_runner(scores, calls))
    assert sorted(calls) == ["bob", "carol"]
    calls.clear()
    grade_batch(discover([class_dir]), out, {"timeout": 9}, jobs=1, runner=fake_runner(scores, calls))
    assert len(calls) == 4  # other settings: a different grade, so everything again


def test_one_failing_submission_never_stops_the_batch(class_dir: Path, tmp_path: Path) -> None:
    out, calls = tmp_path / "grades", []
    scores = {"alice": 2.0, "bob": 1.0, "carol": 0.0, "dave": 1.5}
    grade_batch(discover([class_dir]), out, {}, jobs=2, runner=fake_runner(scores, calls, fail={"bob"}))
    rows = {r["student"]: r for r in read_csv(out / batch.SUMMARY)}
    assert rows["bob"]["status"] == "failed" and rows["bob"]["total"] == "" and rows["bob"]["flags"] == "grading-failed"
    assert "the grader blew up" in json.loads((out / "bob" / batch.STATE).read_text())["error"]
    assert rows["dave"] == {
        "student": "dave",
        "linear": "1.0",
        "softmax": "0.5",
        "total": "1.5",
        "seconds": "1.5",
        "needs_review": "",
        "flags": "",
        "status": "graded",
    }
    assert rows["carol"]["flags"] == "timeout"
    calls.clear()
    grade_batch(discover([class_dir]), out, {}, jobs=2, runner=fake_runner(scores, calls))
    assert calls == ["bob"]  # a failed grading is retried
    assert read_csv(out / batch.SUMMARY)[1]["total"] == "1.0"
    assert (out / batch.HISTOGRAM).read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------------------ slow: the real thing

PROBLEMS = "softmax,cross_entropy"  # 1 + 2 points, two cheap test files
ADAPTER_OVERRIDES = {
    "wrong_softmax": "def run_softmax(in_features, dim):\n    return in_features\n",
    "wrong_cross_entropy": "def run_cross_entropy(inputs, targets):\n    return inputs.sum() * 0\n",
    "hanging": "def run_softmax(in_features, dim):\n    import time\n    while True:\n        time.sleep(1)\n",
    "crashing": "def run_softmax(in_features, dim):\n    import os\n    os._exit(3)\n",
    "skipping": "def run_softmax(in_features, dim):\n    import pytest\n    pytest.skip('cannot do it')\n",
    "tampering": (
        "def run_softmax(in_features, dim):\n    from pathlib import Path\n"
        "    for p in Path(__file__).parent.rglob('*.npz'):\n        try:\n            p.write_bytes(b'')\n"
        "        except OSError:\n            pass\n    return in_features\n"
    ),
}
# student -> (softmax, cross_entropy, total); flags checked where any grader must raise them
EXPECTED = {
    "reference": ("1.0", "2.0", "3.0"),
    "reference_zip": ("1.0", "2.0", "3.0"),
    "handout": ("0.0", "0.0", "0.0"),
    "handout_zip": ("0.0", "0.0", "0.0"),
    "broken_import": ("0.0", "0.0", "0.0"),
    "wrong_softmax": ("0.0", "2.0", "2.0"),
    "wrong_cross_entropy": ("1.0", "0.0", "1.0"),
    "hanging": ("0.0", "2.0", "2.0"),
    "crashing": ("0.0", "2.0", "2.0"),
    "skipping": ("0.0", "2.0", "2.0"),
    "tampering": ("0.0", "2.0", "2.0"),
    "no_adapters": ("", "", "0.0"),
    "not_a_zip": ("", "", "0.0"),
}


def make_class(root: Path, tmp: Path) -> None:
    from cs336_grading.staff.handout import stub_adapters

    adapters = (REPO / "tests" / "adapters.py").read_text()
    reference = tmp / "reference-src"
    shutil.copytree(REPO / "cs336_basics", reference / "cs336_basics", ignore=shutil.ignore_patterns("__pycache__"))
    (reference / "tests").mkdir()
    (reference / "tests" / "adapters.py").write_text(adapters)
    shutil.copytree(reference, root / "reference")
    zip_tree(reference, root / "reference_zip.zip", top="hw1")
    handout = make_dir_submission(tmp / "handout-src", stub_adapters(adapters))
    shutil.copytree(handout, root / "handout")
    zip_tree(handout, root / "handout_zip.zip")
    make_dir_submission(root / "broken_import", "from cs336_basics.nowhere import everything\n" + adapters)
    for name, override in ADAPTER_OVERRIDES.items():
        shutil.copytree(reference, root / name)
        (root / name / "tests" / "adapters.py").write_text(adapters + "\n\n" + override)
    with zipfile.ZipFile(root / "no_adapters.zip", "w") as zf:
        zf.writestr("README.md", "I forgot the code")
    (root / "not_a_zip.zip").write_bytes(b"this is not a zip file")


def finished(out: Path) -> dict[str, float]:
    states = {p.parent.name: batch.read_state(p.parent) for p in out.glob(f"*/{batch.STATE}")}
    return {
        name: (out / name / batch.STATE).stat().st_mtime
        for name, s in states.items()
        if s and s["status"] in batch.FINISHED
    }


def _interrupt_after_three(command: list[str], out: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the batch, send it SIGINT once 3 submissions are finished; (the process, what it printed).

    PYTHONFAULTHANDLER: a batch that outlives its Ctrl-C by 120 s is aborted and prints every thread's stack (a
    flake seen once in a full slow run, never alone: the next one says where it waited)."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while len(finished(out)) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    try:
        return first, first.communicate(timeout=120)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        alive = first.poll() is None
        first.send_signal(signal.SIGABRT)
        try:
            stacks = first.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:  # the batch is gone, but another process holds its output open
            first.kill()
            stacks = "(no end of output 60 s after SIGABRT: a process the batch started holds its stdout)"
        raise AssertionError(
            f"the batch did not exit within 120 s of SIGINT (still running then: {alive}); its threads:\n"
            f"{stacks[-6000:]}"
        ) from None


@pytest.mark.slow
def test_a_class_of_13_graded_interrupted_and_resumed(tmp_path: Path) -> None:
    root, out = tmp_path / "class", tmp_path / "grades"
    root.mkdir()
    make_class(root, tmp_path)
    command = [
        sys.executable,
        "-m",
        "cs336_lab.cli",
        "grade",
        str(root),
        "--out-dir",
        str(out),
        "--jobs",
        "2",
        "--problems",
        PROBLEMS,
        "--timeout",
        "10",
        "--harness",
        str(REPO / "tests"),
    ]
    first, log = _interrupt_after_three(command, out)
    assert first.returncode == 130, log
    before = finished(out)
    assert 3 <= len(before) < len(EXPECTED), log
    second = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(before)} finished before, {len(EXPECTED) - len(before)} to grade" in second.stderr
    assert {name: mtime for name, mtime in finished(out).items() if name in before} == before  # not graded again
    rows = {r["student"]: r for r in read_csv(out / batch.SUMMARY)}
    assert set(rows) == set(EXPECTED)
    got = {name: (r["softmax"], r["cross_entropy"], r["total"]) for name, r in rows.items()}
    assert got == EXPECTED
    assert "timeout" in rows["hanging"]["flags"].split(";")
    assert rows["no_adapters"]["flags"] == rows["not_a_zip"]["flags"] == "ungradable"
    assert all(r["status"] in batch.FINISHED for r in rows.values())
    assert json.loads((out / "reference" / batch.RESULTS).read_text())["score"] == 3.0
    assert (out / batch.HISTOGRAM).read_bytes().startswith(b"\x89PNG")
    leftovers = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "grader or test processes outlived the batch"
