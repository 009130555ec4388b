"""Grade a student submission against the pristine harness: `cs336 grade SUBMISSION`.

    result = grade("alice.zip", jobs=2)       # a GradeResult; the library never prints
    result.write_json("results.json")         # Gradescope's format
    print(result.format_table())              # what the CLI shows

How a run goes:
1. The submission (directory or zip) is unpacked into a temporary directory: its `cs336_basics/` and
   `tests/adapters.py` (see `sandbox.unpack_submission` for the layouts tolerated). The fork server of the
   run's workers starts (`worker/server.py`), and the worker template is laid out: the submission and the
   harness's scenarios, nothing else.
2. The test ids are collected once from the pristine harness, whose `tests.adapters` is the plugin's proxy:
   the submission is not imported, so it cannot hide tests. Tests whose function name starts with no
   problem's prefix (integrity checks of the harness itself) are not run.
3. Each test file runs in its own pytest process (trusted: no student code ever runs there), in a fresh
   throw-away workspace. Every call into the submission goes to a sandboxed worker (`worker/client.py`, `worker/jail.py`)
   and is charged to the test's budget of worker seconds (`timings.py`: scaled from the reference's time);
   a hang, a crash, a memory blow-up, a skip or an exit from student code fails that test alone, with
   its reason, and the next test gets a fresh worker (forked in milliseconds). When a process changed a
   harness file, its tests are re-run one process each, and the test that did it gets an error.
   With a course secret (`secret=`, `--secret-file`, `$CS336_GRADING_SECRET`) the snapshot tests grade
   held-out cases drawn from it in those trusted processes (`grader/heldout.py`); the workers never see it.
4. The from-scratch audit: the static look (`grader/audit.py`) over the submitted files and the sealed kernels
   of the worker (`worker/seal.py`), whose evidence comes back with each call.
   A problem scores `points * passed / (tests - skipped)`, or 0 when it used a forbidden built-in.

Memory: the limit is on address space, not resident memory; importing torch alone maps ~1 GiB and each
thread reserves stack, so the default (6 GiB) leaves ample margin for every graded test while stopping
a runaway allocation long before the machine swaps. Measured on the graded suite: at most 1.2 GiB of
address space (0.35 GiB resident) per test file. CUDA reserves far more address space than it uses, so
on a GPU host the CUDA tests may fail to initialise under the limit: pass `memory_mb=None` (`--memory-mb 0`)
there (not verified on a GPU; Gradescope's autograders are CPU-only).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from cs336_grading.env import GRADING_ENV, LIMITS_ENV, SELECT_ENV, WORKER_ENV
from cs336_grading.grader import audit, heldout, timings
from cs336_grading.grader.report import (  # noqa: F401 - re-exported: grade()'s callers import them from here
    PROBLEMS,
    PROBLEMS_BY_NAME,
    RESULT_FIELDS,
    STATUS_LABELS,
    TEST_FIELDS,
    GraderError,
    GradeResult,
    Problem,
    ProblemScore,
    TestOutcome,
    problem_of,
)
from cs336_grading.pytest_run import sandbox
from cs336_grading.worker.client import ForkServer, WorkerConfig

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_MB = 6144
DEFAULT_TOTAL_TIMEOUT_S = 1800.0
WORKER_UID_BASE = 200_000  # workers run as 200000 + (their pytest process id mod 100000), when root


def default_harness() -> Path:
    """The pristine grading tests shipped with this package (`cs336_grading.harness`, the project's `tests/`)."""
    return Path(str(importlib.resources.files("cs336_grading.harness")))


@dataclass
class _GradingRun:
    """The state of one grading run that its steps share."""

    pristine: sandbox.Harness
    student: sandbox.Submission
    tmp: Path
    limits: sandbox.Limits
    isolate_each: bool
    results: dict[str, tuple[str, str]] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)
    graded: list[str] = field(default_factory=list)  # test ids, as the file processes collected them
    ungraded: list[str] = field(default_factory=list)
    abort: threading.Event = field(default_factory=threading.Event)  # on error or Ctrl-C: kill the processes

    def run_unit(self, ids: list[str], counter: Iterator[int]) -> list[list[str]]:
        """Run `ids` in one process; record outcomes; return the units still to run."""
        if time.monotonic() > self.limits.deadline:
            self.results.update(
                (n, ("timeout", "not run: the grading run's total time limit was reached")) for n in ids
            )
            return []
        run_dir = self.tmp / f"run-{next(counter):04d}"
        sandbox.build_workspace(run_dir, self.pristine, None, sandbox.GUARD_ADAPTERS)
        report = sandbox.run_guarded(run_dir, ids, self.limits, abort=self.abort)
        tampered = self.pristine.tampered(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        self.records.update(report.records)
        if len(ids) == 1 and "::" not in ids[0]:  # a whole test file: its tests are known now
            if not report.collected and report.collect_errors:
                raise GraderError(f"the harness does not collect: {ids[0]}: {report.collect_errors[0]}")
            ids = report.collected
            self.graded.extend(ids)
            self.ungraded.extend(report.ungraded)
        if tampered:
            if len(ids) > 1:
                return [[n] for n in ids]  # find out which test did it
            self.results[ids[0]] = ("error", f"the test modified the grading harness ({', '.join(tampered[:3])})")
            return []
        return _settle(ids, report, self.results, self.limits.timeout)

    def run_all(self, units: deque[list[str]], jobs: int) -> None:
        """Run the units (whole test files, or test ids) `jobs` at a time, re-queueing what they left."""
        counter = iter(range(1, 1 << 30))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            running: set[Future[list[list[str]]]] = set()
            try:
                while units or running:
                    while units and len(running) < jobs:
                        running.add(pool.submit(self.run_unit, units.popleft(), counter))
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        units.extend(future.result())
            except BaseException:
                self.abort.set()
                raise


def grade(
    submission: str | os.PathLike[str],
    *,
    harness: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_mb: int | None = DEFAULT_MEMORY_MB,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT_S,
    jobs: int | None = None,
    problems: Iterable[str] | None = None,
    isolate_each: bool = False,
    builtins: str = "zero",
    test_limits: dict[str, float] | None = None,
    secret: str | None = None,
) -> GradeResult:
    """Grade `submission` (a directory or a `.zip`); see the module docstring.

    `timeout` bounds each test's pytest process (seconds), `memory_mb` the address space of each test and
    worker process (None: no limit), `total_timeout` the whole run; `jobs` test processes run at once
    (default: CPU count); `problems` restricts grading to some problems; `isolate_each` starts one process
    per test; `builtins` is "zero" (a problem whose code used a forbidden torch built-in scores 0, with the
    evidence) or "warn" (the evidence is only reported); `test_limits` maps test ids to their budget of
    worker seconds (default: `timings.limits()`, from the reference's committed timings); `secret` is the
    course's grading secret (default: `$CS336_GRADING_SECRET`; none: the public snapshots): the snapshot
    tests then grade held-out cases drawn from it (`heldout.py`). Raises
    FileNotFoundError / SubmissionError (no submission or no `adapters.py`) and GraderError (a broken harness).
    """
    t0 = time.monotonic()
    selected = _select_problems(problems)
    jobs = _check_options(jobs, timeout, total_timeout, memory_mb, builtins)
    secret = heldout.check_secret(secret) if secret is not None else heldout.secret_from(None)
    # NOTE: the stack (the fork server) closes first: no worker outlives the workspace it writes in.
    with tempfile.TemporaryDirectory(prefix="cs336-grade-") as tmp, contextlib.ExitStack() as stack:
        tmp_dir = Path(tmp)
        pristine = _load_harness(harness)
        student = sandbox.unpack_submission(submission, tmp_dir / "submission")
        server = stack.enter_context(ForkServer(tmp_dir, warm=_uses_torch(student)))
        env = _worker_env(tmp_dir, pristine, student, server, memory_mb, timeout, test_limits, seal=builtins == "zero")
        # The pytest processes only; empty: the public snapshots.
        env[heldout.SECRET_ENV] = heldout.for_submission(secret, _files(student)) if secret else ""
        prefixes = [prefix for name in selected for prefix in PROBLEMS_BY_NAME[name].prefixes]
        env[SELECT_ENV] = json.dumps(prefixes)
        units = _units(pristine, tmp_dir, env, selected if isolate_each else None, timeout)
        planned = [u[0] for u in units] if isolate_each else None
        server.wait()
        limits = _pytest_limits(timeout, memory_mb, t0 + total_timeout, jobs, env)
        run = _GradingRun(pristine, student, tmp_dir, limits, isolate_each)
        run.run_all(units, jobs)
        graded = planned if planned is not None else run.graded
        _check_every_problem_ran(selected, run)
        evidence = _evidence(audit.scan(student.package, student.adapters), run.records)
        review = tuple(audit.review(student.package, student.adapters))
    scores = _scores(selected, graded, run, evidence, builtins)
    ungraded = tuple(sorted(set(run.ungraded)))
    warnings = tuple([*_warnings(limits, evidence, builtins), *_walls_note(run.records)])
    return GradeResult(scores, time.monotonic() - t0, ungraded, warnings, records=dict(run.records), review=review)


def _pytest_limits(
    timeout: float, memory_mb: int | None, deadline: float, jobs: int, env: dict[str, str]
) -> sandbox.Limits:
    """The limits of each pytest process. Its guard is looser than any worker budget: it only catches the
    harness hanging."""
    return sandbox.Limits(
        2 * timeout + 30,
        memory_mb,
        deadline,
        max(1, (os.cpu_count() or 1) // jobs),
        importlib.util.find_spec("pytest_timeout") is not None,
        env,
    )


def _check_every_problem_ran(selected: list[str], run: _GradingRun) -> None:
    missing = [name for name in selected if not any(problem_of(n) == name for n in run.results)]
    if missing:
        raise GraderError(f"the harness has no tests for problem(s) {', '.join(missing)}: it is broken")


def _scores(
    selected: list[str], graded: list[str], run: _GradingRun, evidence: dict[str, list[str]], builtins: str
) -> tuple[ProblemScore, ...]:
    """Each selected problem's outcomes, and whether its evidence of a forbidden built-in zeroes it."""
    return tuple(
        ProblemScore(
            PROBLEMS_BY_NAME[name],
            tuple(_outcome(n, name, run) for n in graded if problem_of(n) == name),
            evidence=tuple(evidence.get(name, ())),
            zeroed=builtins == "zero" and bool(evidence.get(name)),
        )
        for name in selected
    )


def _outcome(nodeid: str, problem: str, run: _GradingRun) -> TestOutcome:
    """A test's outcome; an advisory test's is reported but counts for nothing."""
    status, message = run.results[nodeid]
    if run.records.get(nodeid, {}).get("advisory"):
        return TestOutcome(
            nodeid, problem, "advisory", f"{STATUS_LABELS[status]}" + (f": {message}" if message else "")
        )
    return TestOutcome(nodeid, problem, status, message)


def _check_options(jobs: int | None, timeout: float, total_timeout: float, memory_mb: int | None, builtins: str) -> int:
    if importlib.util.find_spec("pytest") is None:
        raise GraderError("pytest is not installed in the grader's environment")
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1 or timeout <= 0 or total_timeout <= 0 or (memory_mb is not None and memory_mb <= 0):
        raise ValueError(
            f"expected positive jobs, timeouts and memory, got {jobs=} {timeout=} {total_timeout=} {memory_mb=}"
        )
    if builtins not in ("zero", "warn"):
        raise ValueError(f"expected builtins 'zero' or 'warn', got {builtins!r}")
    return jobs


def _uses_torch(student: sandbox.Submission) -> bool:
    """Whether to warm the workers' torch: any submitted file mentions it (the grader's toy tests: none)."""
    files = [student.adapters, *student.package.rglob("*.py")]
    return any(b"torch" in path.read_bytes() for path in files)


def _files(student: sandbox.Submission) -> dict[str, bytes]:
    """The submitted files by relative path (regular files only), for salting the secret."""
    files = {"tests/adapters.py": student.adapters.read_bytes()}
    for path in sorted(student.package.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files["cs336_basics/" + path.relative_to(student.package).as_posix()] = path.read_bytes()
    return files


def _load_harness(harness: str | os.PathLike[str] | None) -> sandbox.Harness:
    try:
        return sandbox.Harness.load(harness if harness is not None else default_harness())
    except FileNotFoundError as e:
        raise GraderError(f"{e}; pass the pristine tests with --harness") from e


def _worker_env(
    tmp: Path,
    pristine: sandbox.Harness,
    student: sandbox.Submission,
    server: ForkServer,
    memory_mb: int | None,
    timeout: float,
    test_limits: dict[str, float] | None,
    seal: bool = True,
) -> dict[str, str]:
    """The environment that points a pytest process at the workers and gives each test its budget."""
    template = sandbox.build_worker_template(tmp / "worker", pristine, student)
    (tmp / "ws").mkdir()
    os.chmod(tmp / "ws", 0o711)
    os.chmod(tmp, 0o711)  # NOTE: a jailed worker only sees its own workspace, so traversing is harmless
    config = WorkerConfig(
        server.path,
        str(template),
        str(tmp / "ws"),
        memory_mb=memory_mb,
        uid=WORKER_UID_BASE if os.geteuid() == 0 else None,
        seal=seal,
    )
    budgets = timings.limits() if test_limits is None else test_limits
    limits = {"default": timeout, "tests": {k: min(v, timeout) for k, v in budgets.items()}}
    return {WORKER_ENV: config.to_env(), LIMITS_ENV: json.dumps(limits), GRADING_ENV: "1"}


def _evidence(static: list[tuple[str, str]], records: dict[str, dict]) -> dict[str, list[str]]:
    """Forbidden built-ins per problem: what the files use (static) and what the tests saw run (dynamic)."""
    evidence: dict[str, list[str]] = {}
    for problem, line in static:
        evidence.setdefault(problem, []).append(line)
    for nodeid, record in sorted(records.items()):
        problem = problem_of(nodeid)
        for line in record.get("findings", []):
            if problem is not None and line not in evidence.get(problem, []):
                evidence.setdefault(problem, []).append(str(line)[:300])
    return {problem: lines[:5] for problem, lines in evidence.items()}


def _warnings(limits: sandbox.Limits, evidence: dict[str, list[str]], builtins: str) -> list[str]:
    warnings = [] if limits.pytest_timeout else ["note: pytest-timeout is not installed; hung tests are killed"]
    if builtins == "warn":
        warnings += [f"warning: {p} used forbidden built-ins: {'; '.join(lines)}" for p, lines in evidence.items()]
    elif "?" in evidence:
        warnings += [f"note: forbidden built-ins of no graded problem: {'; '.join(evidence['?'])}"]
    return warnings


def _walls_note(records: dict[str, dict]) -> list[str]:
    """Which walls stood around the workers, and how their memory was measured (the host decides both)."""
    walls = sorted({str(w) for r in records.values() for w in r.get("walls", [])})
    measures = sorted({str(r["memory_measure"]) for r in records.values() if r.get("memory_measure")})
    if not walls and not measures:
        return []
    return [
        f"note: the worker's walls: {', '.join(walls) or 'limits only'}; memory measured by "
        f"{' and '.join(measures) or 'the worker process alone'}"
    ]


def _select_problems(problems: Iterable[str] | None) -> list[str]:
    if problems is None:
        return [p.name for p in PROBLEMS]
    selected = list(problems)
    unknown = [name for name in selected if name not in PROBLEMS_BY_NAME]
    if unknown or not selected:
        raise ValueError(f"expected problem names among {', '.join(PROBLEMS_BY_NAME)}, got {selected}")
    return [p.name for p in PROBLEMS if p.name in selected]


def _units(
    pristine: sandbox.Harness, tmp: Path, env: dict[str, str], isolating: list[str] | None, timeout: float
) -> deque[list[str]]:
    """What the pytest processes run: every test file whole (it collects itself), or, isolating each test
    of the problems `isolating`, every test id (collected first; the submission is not imported)."""
    if isolating is not None:
        nodeids = _collect(pristine, tmp / "collect", timeout=max(timeout, 120.0), env=env)
        return deque([n] for n in nodeids if problem_of(n) in isolating)
    files = [rel for rel in pristine.files if re.fullmatch(r"tests/(.+/)?test_[^/]*\.py", rel)]
    if not files:
        raise GraderError("the harness has no test files")
    return deque([f] for f in sorted(files, key=lambda f: -len(pristine.files[f])))  # the biggest first


def _collect(pristine: sandbox.Harness, run_dir: Path, *, timeout: float, env: dict[str, str]) -> list[str]:
    """Collect the test ids from the pristine harness (the submission is not imported: the proxy stands in)."""
    sandbox.build_workspace(run_dir, pristine, None, sandbox.GUARD_ADAPTERS)
    try:
        return sandbox.collect_nodeids(run_dir, timeout=timeout, env=env)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        raise GraderError(str(e)) from e
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _settle(
    ids: Sequence[str], report: sandbox.ProcessReport, results: dict[str, tuple[str, str]], timeout: float
) -> list[list[str]]:
    """Record the outcomes of one process; the tests it never reached go back in the queue."""
    results.update((n, report.results[n]) for n in ids if n in report.results)
    if report.in_flight in ids and report.in_flight not in report.results:
        if report.ending == "timeout":
            results[report.in_flight] = ("timeout", f"no result after {timeout:g} s: the test process was killed")
        elif report.ending == "deadline":
            results[report.in_flight] = ("timeout", "the grading run's total time limit was reached")
        elif report.detail.startswith("memory: "):
            results[report.in_flight] = ("memory", report.detail.removeprefix("memory: "))
        else:
            results[report.in_flight] = ("error", report.detail or "the test process ended during the test")
    left = [n for n in ids if n not in results]
    if not left:
        return []
    if report.collect_errors:
        message = f"could not import the tests: {report.collect_errors[0]}"
    elif report.ending == "deadline":
        message = "not run: the grading run's total time limit was reached"
    elif report.in_flight in ids:
        return [left]  # the process died with a test; the others get a fresh one
    else:
        message = report.detail.removeprefix("memory: ") or "the test process ended before running this test"
        if report.ending == "timeout":
            message = f"the test process made no progress for {timeout:g} s (hung while importing?)"
    status = "timeout" if report.ending in ("timeout", "deadline") else "error"
    results.update((n, (status, message)) for n in left)
    return []
