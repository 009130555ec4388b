"""Where and how the grader runs a submission: unpacking, throw-away workspaces, guarded pytest processes.

A grading run never touches the pristine harness: every pytest process gets a fresh workspace,

    run-0007/
        pyproject.toml            # the harness's pytest settings (markers, warning filters)
        tests/                    # a fresh copy of the pristine tests, fixtures and snapshots
        tests/adapters.py         # a guard: the plugin's proxy to the worker stands in for it

written from the harness held in memory, compared with it byte for byte when the process ends, then
deleted. The pytest process never imports student code: that runs in workers (`worker/server.py`), each in a
copy of the worker template (`build_worker_template`), which holds the submission and the scenarios only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import resource
except ImportError:  # not POSIX: no resource limits (the worker's walls need Linux anyway)
    resource = None  # type: ignore[assignment]

from cs336_grading import untrusted
from cs336_grading.env import REPORT_ENV
from cs336_grading.grader.submission import IGNORED as _IGNORED
from cs336_grading.grader.submission import Submission, SubmissionError, unpack_submission  # noqa: F401 - the API
from cs336_grading.worker.client import MEMORY_MARKERS

log = logging.getLogger(__name__)
MAX_EVENT_BYTES = 16 << 20  # the most of a test process's report read at one poll
MAX_LOG_BYTES = 1 << 20  # the most of a test process's output read when it ends (its tail says why)
PLUGIN_MODULE = "cs336_grading.pytest_run.plugin"  # loaded by `-p`: importable from wherever the grader is installed
# The `tests/adapters.py` of a grading process: the plugin's proxy replaces it, so it must never run.
GUARD_ADAPTERS = (
    b'"""Under `cs336 grade`, `tests.adapters` is the proxy to the sandboxed worker (cs336_grading.pytest_run.plugin)."""\n'
    b'raise ImportError("the grading process never imports the submission; the plugin\'s proxy is missing")\n'
)


@dataclass(frozen=True)
class Harness:
    """The pristine grading tests, held in memory: `tests/...` files and the `pyproject.toml` for pytest.

    Every workspace is written from these bytes, so the run judges against one consistent harness even if
    the source changes meanwhile, and nothing on disk that a submission could reach feeds later tests.
    """

    files: dict[str, bytes]  # path relative to the project root ("tests/conftest.py", ...) -> content

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Harness:
        """Read the harness at `directory`: the tests directory itself, or a project root holding `tests/`.

        The tests directory may have any name (installed, it is `cs336_grading/harness/`); its files are
        laid out as `tests/...` in every workspace. A `pyproject.toml` beside it (a checkout) is kept for its
        pytest settings; the tests' own `conftest.py` registers what they need without it.
        """
        path = Path(directory).resolve()
        tests = path / "tests" if (path / "tests" / "conftest.py").is_file() else path
        if not (tests / "conftest.py").is_file() or not (tests / "adapters.py").is_file():
            raise FileNotFoundError(
                f"expected a grading harness (a tests directory with conftest.py and adapters.py) at {path}, found none"
            )
        files = {
            "tests/" + p.relative_to(tests).as_posix(): p.read_bytes()
            for p in sorted(tests.rglob("*"))
            if p.is_file() and not _is_ignored(p)
        }
        if tests.name == "tests" and (tests.parent / "pyproject.toml").is_file():
            files["pyproject.toml"] = (tests.parent / "pyproject.toml").read_bytes()
        return cls(files=files)

    @property
    def adapters(self) -> bytes | None:
        return self.files.get("tests/adapters.py")

    def write(self, root: Path) -> None:
        """Write every harness file but `tests/adapters.py` under `root`."""
        for rel, content in self.files.items():
            if rel != "tests/adapters.py":
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(content)

    def tampered(self, root: Path) -> list[str]:
        """Harness files under `root` that were modified, deleted, or swapped for a link or a FIFO since `write`."""
        files = self.files.items()
        return [rel for rel, content in files if rel != "tests/adapters.py" and _changed(root / rel, content)]


def _changed(path: Path, content: bytes) -> bool:
    """Whether `path` no longer holds `content` as a regular file (read without following a link, bounded)."""
    try:
        return untrusted.read_regular(path, len(content)) != content
    except OSError:
        return True


def _is_ignored(path: Path) -> bool:
    return any(part in {"__pycache__", ".pytest_cache", ".hypothesis"} for part in path.parts) or path.suffix == ".pyc"


def build_workspace(run_dir: Path, harness: Harness, package: Path | None, adapters: bytes) -> None:
    """Lay out one throw-away workspace (see the module docstring)."""
    run_dir.mkdir(parents=True)
    harness.write(run_dir)
    (run_dir / "tests" / "adapters.py").write_bytes(adapters)
    if package is not None:
        shutil.copytree(package, run_dir / "cs336_basics", ignore=_IGNORED)
    if "pyproject.toml" not in harness.files:
        (run_dir / "pytest.ini").write_text("[pytest]\n")
    (run_dir / ".tmp").mkdir()


# The harness files a worker gets beside the submission: procedures and inputs, never an expected value.
WORKER_HARNESS_FILES = ("tests/scenarios.py",)


def build_worker_template(dest: Path, harness: Harness, submission: Submission) -> Path:
    """The workspace every worker starts from: the student's package and adapters, and the scenarios.

    dest/
        cs336_basics/           # the student's package
        tests/__init__.py       # empty
        tests/adapters.py       # the student's adapters
        tests/scenarios.py      # the harness's scenarios (drive adapters; hold no answers)
    """
    (dest / "tests").mkdir(parents=True)
    shutil.copytree(submission.package, dest / "cs336_basics", ignore=_IGNORED)
    (dest / "tests" / "__init__.py").write_bytes(b"")
    shutil.copyfile(submission.adapters, dest / "tests" / "adapters.py")
    for rel in WORKER_HARNESS_FILES:
        if rel in harness.files:
            (dest / rel).write_bytes(harness.files[rel])
    return dest


def pytest_command(run_dir: Path, args: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        PLUGIN_MODULE,
        "-q",
        "--no-header",
        "-o",
        "addopts=",
        "--rootdir",
        str(run_dir),
        "--basetemp",
        str(run_dir / ".tmp" / "pytest"),
        # Capture Python-level output only: what a crashing process writes to its file descriptors (an
        # abort message, faulthandler's traceback) then reaches the grader's log instead of a lost buffer.
        "--capture=sys",
        *args,
    ]


def subprocess_env(run_dir: Path, report: Path, threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(run_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["TMPDIR"] = str(run_dir / ".tmp")
    env[REPORT_ENV] = str(report)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(threads))
    return env


@dataclass
class ProcessReport:
    """What one guarded pytest process left behind."""

    results: dict[str, tuple[str, str]] = field(default_factory=dict)  # nodeid -> (status, message)
    records: dict[str, dict] = field(default_factory=dict)  # nodeid -> worker seconds, peak MiB, findings, advisory
    in_flight: str | None = None  # the test that was running when the process ended
    collect_errors: list[str] = field(default_factory=list)
    collected: list[str] = field(default_factory=list)  # a whole file's run: the tests it found
    ungraded: list[str] = field(default_factory=list)  # ... and those it deselected
    ending: str = "exited"  # "exited" | "timeout" | "deadline" | "crashed"
    detail: str = ""  # signal / exit code and the tail of the output, for crashes
    seconds: float = 0.0


@dataclass(frozen=True)
class Limits:
    """What guards one pytest process (see `run_guarded`)."""

    timeout: float  # seconds per test
    memory_mb: int | None  # address space of the process
    deadline: float  # monotonic end of the whole grading run
    threads: int
    pytest_timeout: bool  # pytest-timeout is installed
    env: dict[str, str] = field(default_factory=dict)  # added to the process's environment


def run_guarded(
    run_dir: Path,
    nodeids: Sequence[str],
    limits: Limits | None = None,
    abort: threading.Event | None = None,
    **options: Any,
) -> ProcessReport:
    """Run `nodeids` in one pytest process under `run_dir`, with a memory limit and per-test watchdog.

    The watchdog kills the process group when a test has run for `timeout` plus a grace period
    (pytest-timeout, when installed, stops most hung tests at `timeout` and the process carries on), when
    no test has started `timeout` + 60 s after launch (imports hang), or when the monotonic `deadline` of
    the whole grading run passes. `limits` may also be given as its fields (`timeout=...`, ...).
    """
    limits = limits if limits is not None else Limits(**options)
    report_path = run_dir / ".tmp" / "report.jsonl"
    log_path = run_dir.parent / f"{run_dir.name}.log"
    args = [f"--timeout={limits.timeout:g}", "--timeout-method=signal"] if limits.pytest_timeout else []
    report = ProcessReport()
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            pytest_command(run_dir, [*args, *nodeids]),
            cwd=run_dir,
            env=subprocess_env(run_dir, report_path, limits.threads, limits.env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_limiter(limits.memory_mb),
            start_new_session=True,  # its own process group: killing it also kills worker processes
        )
        _watch(proc, report_path, report, limits, abort)
    report.seconds = time.monotonic() - started
    output = untrusted.read_tail(log_path.parent, log_path.name, {os.geteuid()}, MAX_LOG_BYTES).decode(errors="replace")
    log_path.unlink()
    _explain_ending(report, proc.returncode, output.replace(f"{run_dir}{os.sep}", ""), len(nodeids))
    return report


def _limiter(memory_mb: int | None) -> Callable[[], None] | None:
    """What runs in the child between fork and exec: the memory limit, no core files (None: no RLIMIT here)."""
    if resource is None:
        log.warning("no RLIMIT on this platform: the %s MB memory limit is not enforced", memory_mb)
        return None

    def limit() -> None:
        if memory_mb is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return limit


def _watch(
    proc: subprocess.Popen[bytes],
    report_path: Path,
    report: ProcessReport,
    limits: Limits,
    abort: threading.Event | None,
) -> None:
    """Follow the report while the process runs; kill it on a hang, the deadline or an abort."""
    grace = min(10.0, 1.0 + limits.timeout / 2)
    offset, last_event = 0, time.monotonic()
    while True:
        code = proc.poll()
        offset, changed = _read_events(report_path, offset, report)
        now = time.monotonic()
        last_event = now if changed else last_event
        if code is not None:
            return
        if abort is not None and abort.is_set():
            _kill_group(proc)
            proc.wait()
            raise RuntimeError("grading was interrupted")
        allowance = limits.timeout + (grace if report.results or report.in_flight else 60.0)
        if now > limits.deadline or now - last_event > allowance:
            report.ending = "deadline" if now > limits.deadline else "timeout"
            _kill_group(proc)
            proc.wait()
            _read_events(report_path, offset, report)
            return
        time.sleep(0.05)


def _explain_ending(report: ProcessReport, returncode: int, output: str, expected: int) -> None:
    """Say why a process ended early: its signal or exit code and the tail of what it printed."""
    if report.ending == "exited" and (returncode < 0 or report.in_flight is not None):
        report.ending = "crashed"
        how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        memory = any(marker in output[-2000:] for marker in MEMORY_MARKERS)
        why = _crash_summary(output)
        report.detail = ("memory: " if memory else "") + f"the test process died ({how})" + (f": {why}" if why else "")
    elif report.ending == "exited" and len(report.results) < expected and not report.collect_errors:
        report.detail = next((line.strip() for line in reversed(output.splitlines()) if "ERROR" in line), output[-300:])


def _crash_summary(output: str) -> str:
    """The fatal-error line of a crashed process and its innermost frame (faulthandler prints it first)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        for marker in ("Fatal Python error", "terminate called"):
            if marker in line:  # NOTE: may follow pytest's progress dots on the same line
                frame = next((f for f in lines[i + 1 : i + 6] if f.startswith("File ")), "")
                return f"{line[line.index(marker) :]} {frame}".strip()[:300]
    return " | ".join(lines[-2:])[-300:]


def _read_events(path: Path, offset: int, report: ProcessReport) -> tuple[int, bool]:
    """Apply the complete JSON lines appended to `path` since `offset`; returns (new offset, any new)."""
    try:
        with os.fdopen(untrusted.open_regular(path), "rb") as f:  # no link, no FIFO, a bounded read per poll
            f.seek(offset)
            chunk = f.read(MAX_EVENT_BYTES)
    except OSError:
        return offset, False
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a submission scribbling into the report cannot crash the grader
        if event.get("event") == "start":
            report.in_flight = event.get("nodeid")
        elif event.get("event") == "result":
            report.results[event["nodeid"]] = (event.get("status", "error"), event.get("message", ""))
            report.records[event["nodeid"]] = {
                k: event[k]
                for k in ("worker_seconds", "peak_mib", "findings", "advisory", "walls", "memory_measure")
                if k in event
            }
            report.in_flight = None
        elif event.get("event") == "collect_error":
            report.collect_errors.append(event.get("message", ""))
        elif event.get("event") == "collected":
            report.collected = [str(n) for n in event.get("nodeids", [])]
            report.ungraded = [str(n) for n in event.get("ungraded", [])]
    return offset + len(complete), bool(complete)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def collect_nodeids(run_dir: Path, *, timeout: float, env: dict[str, str] | None = None) -> list[str]:
    """Node ids of every test of the workspace (`pytest --collect-only -q`)."""
    env = subprocess_env(run_dir, run_dir / ".tmp" / "collect.jsonl", threads=1, extra=env)
    proc = subprocess.run(
        pytest_command(run_dir, ["--collect-only", "tests"]),
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    nodeids = [line.strip() for line in proc.stdout.splitlines() if line.startswith("tests/") and "::" in line]
    if proc.returncode != 0 or not nodeids:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"collecting the harness tests failed (exit code {proc.returncode}):\n{tail}")
    return nodeids
