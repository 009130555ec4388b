"""Hostile bytes, paths and files against the grader, from the attacker's side (issue 20, items 1-2).

Two kinds of attack:
- the submission as a file tree: links, FIFOs, devices, loops, bombs and broken zips. Unpacking refuses
  each with a one-line reason, and `cs336 grade` (single and batch) still writes a zero `results.json`;
- a worker that rewrites its own workspace while the grader uses it: a `.worker.log` swapped for a link to
  a host file or for a FIFO, links planted in `inbox/` where the grader puts file arguments, an `inbox/`
  that is itself a link, a reply trickled one byte at a time. The grader reads nothing through a link,
  writes nothing outside the worker's workspace, and waits a bounded time.

Root-only walls (a device node) are checked where the tests run as root and skipped elsewhere.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import stat
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cs336_grading import cli as grading_cli
from cs336_grading.grader import grade as grader
from cs336_grading.grader import submission as unpacking
from cs336_grading.pytest_run.sandbox import SubmissionError, unpack_submission
from cs336_grading.staff import batch
from project_tests.grading.test_grader import FAKE_TESTS, GOOD_PACKAGE, grade_fake, problem_scores, statuses, write_tree

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
SECRET = "TOP-SECRET-HOST-LINE"


@pytest.fixture
def fake_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTEST_PLUGINS", "pytest_timeout")
    tests = {**FAKE_TESTS, "test_paths.py": PATH_TESTS}
    return write_tree(tmp_path / "harness", {f"tests/{rel}": text for rel, text in tests.items()}) / "tests"


# A harness test that hands the worker a file twice (the grader puts it in the worker's inbox each time).
PATH_TESTS = textwrap.dedent(
    """
    from .adapters import run_rmsnorm

    def test_rmsnorm_of_a_file(fixtures_dir):
        assert run_rmsnorm(fixtures_dir / "words.txt") == "HELLO WORLD"
        assert run_rmsnorm(fixtures_dir / "words.txt") == "HELLO WORLD"
    """
)


def student(root: Path, package: str = GOOD_PACKAGE) -> Path:
    return write_tree(root, {"cs336_basics/__init__.py": package, "tests/adapters.py": FAKE_TESTS["adapters.py"]})


# ------------------------------------------------------------------------------------ hostile trees
def _zip(path: Path, members: dict[str, bytes], **infos: tuple[bytes, zipfile.ZipInfo]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for data, info in infos.values():
            zf.writestr(info, data)
    return path


def _good_members() -> dict[str, bytes]:
    return {"cs336_basics/__init__.py": GOOD_PACKAGE.encode(), "tests/adapters.py": FAKE_TESTS["adapters.py"].encode()}


def bomb_by_ratio(tmp: Path) -> Path:
    return _zip(tmp / "bomb.zip", {**_good_members(), "cs336_basics/data.bin": bytes(64 << 20)})


def bomb_by_many_small(tmp: Path) -> Path:
    # Each member at the ratio floor, so only the whole zip's ratio (or its total) can catch it.
    blank = bytes(unpacking.RATIO_FLOOR_BYTES)
    return _zip(tmp / "bombs.zip", {**_good_members(), **{f"cs336_basics/d{i}.bin": blank for i in range(40)}})


def too_many_files(tmp: Path) -> Path:
    many = {f"cs336_basics/m{i}.py": b"" for i in range(unpacking.MAX_FILES + 1)}
    return _zip(tmp / "many.zip", {**_good_members(), **many})


def deep_zip(tmp: Path) -> Path:
    return _zip(tmp / "deep.zip", {**_good_members(), "cs336_basics/" + "d/" * (unpacking.MAX_DEPTH + 2) + "x.py": b""})


def deep_directory(tmp: Path) -> Path:
    root = student(tmp / "deep")
    (root / "cs336_basics" / Path(*["d"] * (unpacking.MAX_DEPTH + 2))).mkdir(parents=True)
    return root


def dotdot_member(tmp: Path) -> Path:
    return _zip(tmp / "slip.zip", {**_good_members(), "cs336_basics/../../escaped.py": b"X = 1\n"})


def absolute_member(tmp: Path) -> Path:
    return _zip(tmp / "abs.zip", {**_good_members(), "/tmp/cs336-absolute-member.py": b"X = 1\n"})


def symlink_member(tmp: Path) -> Path:
    info = zipfile.ZipInfo("cs336_basics/shadow.txt")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip(tmp / "link.zip", _good_members(), link=(b"/etc/shadow", info))


def fifo_in_package(tmp: Path) -> Path:
    root = student(tmp / "fifo")
    os.mkfifo(root / "cs336_basics" / "pipe.py")
    return root


def fifo_as_adapters(tmp: Path) -> Path:
    root = student(tmp / "fifo_adapters")
    (root / "tests" / "adapters.py").unlink()
    os.mkfifo(root / "tests" / "adapters.py")
    return root


def link_to_host_file(tmp: Path) -> Path:
    secret = tmp / "host-secret.txt"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    root = student(tmp / "exfiltrate")
    (root / "cs336_basics" / "notes.txt").symlink_to(secret)
    (root / "cs336_basics" / "shadow.txt").symlink_to("/etc/shadow")
    return root


def adapters_link_to_host_file(tmp: Path) -> Path:
    root = student(tmp / "exfiltrate_adapters")
    (root / "tests" / "adapters.py").unlink()
    (root / "tests" / "adapters.py").symlink_to("/etc/passwd")
    return root


def symlink_loop(tmp: Path) -> Path:
    root = student(tmp / "loop")
    (root / "cs336_basics" / "loop.py").symlink_to("loop.py")
    (root / "cs336_basics" / "again").symlink_to(".")
    return root


def truncated_zip(tmp: Path) -> Path:
    whole = _zip(tmp / "whole.zip", _good_members()).read_bytes()
    (tmp / "truncated.zip").write_bytes(whole[: len(whole) // 2])
    return tmp / "truncated.zip"


def corrupt_member(tmp: Path) -> Path:
    # A directory that reads well, and a member whose compressed bytes are garbage.
    code = "".join(f"X{i} = {i * i}\n" for i in range(3000)).encode()
    data = bytearray(_zip(tmp / "whole.zip", {**_good_members(), "cs336_basics/m.py": code}).read_bytes())
    start = data.index(b"cs336_basics/m.py") + len("cs336_basics/m.py")  # the first (local) header's name
    data[start + 40 : start + 200] = bytes(range(160))
    (tmp / "corrupt.zip").write_bytes(bytes(data))
    return tmp / "corrupt.zip"


def device_in_package(tmp: Path) -> Path:
    root = student(tmp / "device")
    os.mknod(root / "cs336_basics" / "null.py", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null
    return root


# builder -> the words the one-line reason must hold
HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zip_bomb_ratio": (bomb_by_ratio, "inflates"),
    "zip_bomb_many_members": (bomb_by_many_small, "inflates"),
    "too_many_files": (too_many_files, f"more than {unpacking.MAX_FILES}"),
    "deep_zip": (deep_zip, "deeper than"),
    "deep_directory": (deep_directory, "deeper than"),
    "dotdot_member": (dotdot_member, "outside"),
    "absolute_member": (absolute_member, "outside"),
    "symlink_member": (symlink_member, "symbolic link"),
    "fifo_in_package": (fifo_in_package, "FIFO"),
    "fifo_as_adapters": (fifo_as_adapters, "FIFO"),
    "link_to_host_file": (link_to_host_file, "symbolic link"),
    "adapters_link_to_host_file": (adapters_link_to_host_file, "symbolic link"),
    "symlink_loop": (symlink_loop, "symbolic link"),
    "truncated_zip": (truncated_zip, "unreadable zip"),
    "corrupt_member": (corrupt_member, "unreadable zip"),
    "device_in_package": (device_in_package, "device"),
}
CASES = [pytest.param(name, marks=ROOT_ONLY if name == "device_in_package" else ()) for name in HOSTILE]


def _reason(payload: dict) -> str:
    """The single line after the total that says why the grade is zero."""
    lines = payload["output"].splitlines()
    assert len(lines) == 2 and lines[1].startswith("ungradable submission: "), payload["output"]
    return lines[1]


@pytest.mark.parametrize("case", CASES)
def test_unpacking_refuses_with_one_line(case: str, tmp_path: Path) -> None:
    build, words = HOSTILE[case]
    source = build(tmp_path)
    started = time.monotonic()
    with pytest.raises(SubmissionError, match=words) as refused:
        unpack_submission(source, tmp_path / "out")
    assert time.monotonic() - started < 10, "unpacking must refuse before it does the work"
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "escaped.py").exists() and not Path("/tmp/cs336-absolute-member.py").exists()
    copied = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert all(SECRET not in p.read_text(errors="replace") for p in copied)
    assert sum(p.stat().st_size for p in copied) < unpacking.MAX_TOTAL_BYTES


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    grading_cli.add_subcommand(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("case", CASES)
def test_cs336_grade_writes_a_zero_results_json(case: str, tmp_path: Path, fake_harness: Path) -> None:
    build, words = HOSTILE[case]
    out = tmp_path / "results.json"
    assert _cli(["grade", str(build(tmp_path)), "--harness", str(fake_harness), "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["score"] == 0 and payload["tests"] == []
    assert words in _reason(payload) and SECRET not in out.read_text()


def test_batch_records_every_refusal_in_results_and_summary(tmp_path: Path, fake_harness: Path) -> None:
    cases = ["fifo_in_package", "symlink_loop", "truncated_zip", "link_to_host_file", "dotdot_member"]
    class_dir = tmp_path / "class"
    class_dir.mkdir()
    for case in cases:
        (tmp_path / case).mkdir()
        source = HOSTILE[case][0](tmp_path / case)
        source.rename(class_dir / (case + source.suffix))
    student(class_dir / "honest")
    out = tmp_path / "grades"
    settings = {"harness": str(fake_harness), "problems": ["linear"], "timeout": 10.0, "memory_mb": 1024}
    states = batch.grade_batch(batch.discover([class_dir]), out, settings, jobs=2)
    assert {s["student"]: s["status"] for s in states} == {**{c: "ungradable" for c in cases}, "honest": "graded"}
    rows = {r["student"]: r for r in csv.DictReader(io.StringIO((out / batch.SUMMARY).read_text()))}
    for case in cases:
        payload = json.loads((out / case / batch.RESULTS).read_text())
        assert payload["score"] == 0 and HOSTILE[case][1] in _reason(payload)
        assert rows[case]["status"] == "ungradable" and HOSTILE[case][1] in rows[case]["reason"]
    assert rows["honest"]["total"] == "1.0" and rows["honest"]["reason"] == ""
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".png"]
    assert SECRET not in "".join(p.read_text(errors="replace") for p in written)


def test_an_honest_zip_with_a_small_data_file_is_not_refused(tmp_path: Path) -> None:
    # Text compresses 3-10x: far from the ratio cap. A blank file below the floor may compress 1000x.
    text = ("the quick brown fox jumps over the lazy dog %d\n" * 1).encode()
    members = {
        **_good_members(),
        "cs336_basics/blank.txt": bytes(100_000),
        "cs336_basics/corpus.txt": b"".join(text % i for i in range(60_000)),
    }
    sub = unpack_submission(_zip(tmp_path / "ok.zip", members), tmp_path / "out")
    assert (sub.package / "corpus.txt").stat().st_size > unpacking.RATIO_FLOOR_BYTES
    assert sub.adapters.read_text() == FAKE_TESTS["adapters.py"]


def test_links_outside_what_is_graded_are_ignored_not_followed(tmp_path: Path) -> None:
    # A whole checkout: a venv's interpreter link and a FIFO beside the package are never opened.
    root = student(tmp_path / "checkout")
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    os.mkfifo(root / "fifo")
    sub = unpack_submission(root, tmp_path / "out")
    assert (sub.package / "__init__.py").read_text() == GOOD_PACKAGE


# ------------------------------------------------------------------------------ a worker's workspace
def _gamed_inc(body: str) -> str:
    """A package whose `inc` (softmax's adapter) runs `body` first."""
    attacked = f"def inc(x):\n{textwrap.indent(body, '    ')}\n    return x + 1"
    return GOOD_PACKAGE.replace("def inc(x):\n    return x + 1", attacked)


def _all_messages(result: grader.GradeResult, path: Path) -> str:
    result.write_json(path)
    return path.read_text() + "".join(o.message for o in result.outcomes.values())


def test_a_worker_log_swapped_for_a_link_leaks_no_host_file(tmp_path: Path, fake_harness: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text(f"line one\n{SECRET}\n")
    secret.chmod(0o600)
    body = f"import os\nos.remove('.worker.log')\nos.symlink({str(secret)!r}, '.worker.log')\nos._exit(3)"
    result = grade_fake(student(tmp_path / "s", _gamed_inc(body)), fake_harness, problems=["softmax", "linear"])
    assert problem_scores(result) == {"softmax": 0, "linear": 1}
    assert set(statuses(result).values()) >= {"error"}
    assert SECRET not in _all_messages(result, tmp_path / "results.json")


def test_a_worker_log_swapped_for_a_fifo_does_not_block_the_grader(tmp_path: Path, fake_harness: Path) -> None:
    body = "import os\nos.remove('.worker.log')\nos.mkfifo('.worker.log')\nos._exit(3)"
    started = time.monotonic()
    result = grade_fake(student(tmp_path / "s", _gamed_inc(body)), fake_harness, problems=["softmax"], timeout=5.0)
    assert time.monotonic() - started < 20, "reading the worker's log blocked on a FIFO"
    assert set(statuses(result).values()) == {"error"}  # the worker died; no test ran into a time limit


def _planted_inbox(victim: Path) -> str:
    """`upper` (rmsnorm's adapter) of a file: first plants links to `victim` under every likely inbox name."""
    return GOOD_PACKAGE.replace(
        "def upper(text):\n    return text.upper()",
        textwrap.dedent(
            f"""
            def upper(text):
                import os, pathlib
                for i in range(300):
                    for name in (f"inbox/{{i}}-words.txt", f"inbox/{{i}}"):
                        try:
                            os.symlink({str(victim)!r}, name)
                        except OSError:
                            pass
                return pathlib.Path(text).read_text().upper()
            """
        ),
    )


def test_links_planted_in_the_inbox_never_make_the_grader_write_a_host_file(tmp_path: Path, fake_harness: Path) -> None:
    victim = tmp_path / "host-config"
    victim.write_text("ORIGINAL\n")
    victim.chmod(0o600)
    result = grade_fake(student(tmp_path / "s", _planted_inbox(victim)), fake_harness, problems=["rmsnorm"])
    assert victim.read_text() == "ORIGINAL\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert statuses(result)["test_rmsnorm_of_a_file"] == "passed"


def test_an_inbox_swapped_for_a_link_never_makes_the_grader_write_a_host_directory(
    tmp_path: Path, fake_harness: Path
) -> None:
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    package = GOOD_PACKAGE.replace(
        "def upper(text):\n    return text.upper()",
        f"def upper(text):\n    import os, pathlib\n    words = pathlib.Path(text).read_text()\n"
        f"    if not os.path.islink('inbox'):\n        os.rename('inbox', 'inbox.old')\n"
        f"        os.symlink({str(host_dir)!r}, 'inbox')\n    return words.upper()",
    )
    result = grade_fake(student(tmp_path / "s", package), fake_harness, problems=["rmsnorm"])
    assert list(host_dir.iterdir()) == []
    assert statuses(result)["test_rmsnorm_of_a_file"] != "passed"


def test_a_reply_trickled_byte_by_byte_is_cut_off_at_the_call_limit(tmp_path: Path, fake_harness: Path) -> None:
    # The worker writes a frame header promising 1000 bytes to its own socket, then one byte every 0.2 s.
    body = textwrap.dedent(
        """
        import os, stat, struct, time
        if x == 1:
            fds = [fd for fd in range(3, 256) if _is_socket(fd)]
            for fd in fds:
                os.write(fd, struct.pack(">Q", 1000))
            for _ in range(1000):
                time.sleep(0.2)
                for fd in fds:
                    os.write(fd, b" ")
        """
    )
    helper = textwrap.dedent(
        """
        import os, stat

        def _is_socket(fd):
            try:
                return stat.S_ISSOCK(os.fstat(fd).st_mode)
            except OSError:
                return False
        """
    )
    started = time.monotonic()
    package = student(tmp_path / "s", helper + _gamed_inc(body))
    result = grade_fake(package, fake_harness, problems=["softmax"], timeout=3.0)
    assert time.monotonic() - started < 25, "the grader kept reading a reply that never ends"
    assert statuses(result) == {"test_softmax_one": "timeout", "test_softmax_two": "passed"}


# ------------------------------------------------------------------------------------ the leaderboard
def test_a_leaderboard_file_linked_to_a_host_file_is_never_read(tmp_path: Path) -> None:
    from cs336_grading.staff.leaderboard import score
    from project_tests.grading.test_leaderboard import make_config, make_submission

    secret = tmp_path / "host-secret.txt"
    secret.write_text(f"{SECRET}\n")
    secret.chmod(0o600)
    submission = make_submission(tmp_path / "s")
    (submission / "leaderboard" / "merges.txt").unlink()
    (submission / "leaderboard" / "merges.txt").symlink_to(secret)
    result = score(make_config(tmp_path), submission)
    assert result.entry is None and SECRET not in result.message
    assert "merges.txt is a symbolic link" in result.message


# ------------------------------------------------------------------------------ the tamper check
def test_the_tamper_check_reads_no_link_and_blocks_on_no_fifo(tmp_path: Path) -> None:
    from cs336_grading.pytest_run.sandbox import Harness

    files = {"tests/conftest.py": b"X = 1\n", "tests/fixtures/words.txt": b"hello world", "tests/adapters.py": b""}
    harness = Harness(files)
    harness.write(tmp_path / "run")
    elsewhere = tmp_path / "same-bytes.txt"
    elsewhere.write_bytes(b"hello world")
    (tmp_path / "run" / "tests" / "fixtures" / "words.txt").unlink()
    (tmp_path / "run" / "tests" / "fixtures" / "words.txt").symlink_to(elsewhere)  # same bytes, through a link
    (tmp_path / "run" / "tests" / "conftest.py").unlink()
    os.mkfifo(tmp_path / "run" / "tests" / "conftest.py")
    started = time.monotonic()
    assert sorted(harness.tampered(tmp_path / "run")) == ["tests/conftest.py", "tests/fixtures/words.txt"]
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------------------------ SysV IPC
def _ipc_of_workers() -> list[str]:
    """SysV shared memory, message queues and semaphores created by a worker's user id (200000 and up)."""
    left = []
    for kind in ("shm", "msg", "sem"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        cuid = lines[0].split().index("cuid")
        left += [f"{kind} {line.split()[1]}" for line in lines[1:] if int(line.split()[cuid]) >= grader.WORKER_UID_BASE]
    return left


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/proc/sysvipc/shm").exists(),
    reason="workers have a user id of their own only as root",
)
def test_sysv_ipc_objects_of_a_worker_do_not_outlive_it(tmp_path: Path, fake_harness: Path) -> None:
    # A channel between tests (and between students): a segment, a queue and a semaphore set left behind.
    body = textwrap.dedent(
        """
        import ctypes
        libc = ctypes.CDLL(None)
        libc.shmget(0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
        libc.msgget(0, 0o1600)
        libc.semget(0, 1, 0o1600)
        """
    )
    before = set(_ipc_of_workers())  # NOTE: other grading runs on this host may hold some meanwhile
    result = grade_fake(student(tmp_path / "s", _gamed_inc(body)), fake_harness, problems=["softmax"])
    assert problem_scores(result) == {"softmax": 1}
    assert set(_ipc_of_workers()) - before == set(), "SysV IPC objects of a worker outlived the grading run"
