"""Submissions that try to game the grader, graded end to end: each scores 0 for what it gamed (its honest
parts keep their points), finishes within its time bound, and leaves the harness byte-identical.

The toy harness of `test_grader.py` (three problems, a fixture) plus one test whose answers sit in a harness
file (`fixtures/answers.json`), which a cheater would love to read. The walls that need root (a filesystem
view without the harness, no network, a user id of its own) are checked where the tests run as root and
skipped elsewhere; everything else holds for any user. The real-harness attacks (built-ins, a submission
that hangs everywhere) are `slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from project_tests.grading.test_grader import (
    FAKE_TESTS,
    GOOD_PACKAGE,
    REPO,
    grade_fake,
    problem_scores,
    statuses,
    write_tree,
)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the filesystem and network walls need root")
ANSWERS = {"1": 2, "2": 4, "3": 6}
SECRET_TESTS = {
    **FAKE_TESTS,
    "test_secret.py": textwrap.dedent(
        """
        import json
        from pathlib import Path
        from .adapters import run_linear

        def test_linear_against_the_answer_file():
            # The answers live in a harness file: a submission that reads them instead of computing wins.
            answers = json.loads((Path(__file__).parent / "fixtures" / "answers.json").read_text())
            assert run_linear(7) == 14 and run_linear(5) == 10
            assert [run_linear(int(k)) for k in answers] == list(answers.values())
        """
    ),
    "fixtures/answers.json": json.dumps(ANSWERS),
}
HONEST = {"linear": 1, "softmax": 1, "rmsnorm": 1}


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTEST_PLUGINS", "pytest_timeout")
    return write_tree(tmp_path / "harness", {f"tests/{rel}": text for rel, text in SECRET_TESTS.items()}) / "tests"


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def attack(tmp_path: Path, harness: Path, *, package: str = GOOD_PACKAGE, adapters: str | None = None, **kw):
    """Grade a submission; check the harness is byte-identical afterwards; return the result."""
    before = _snapshot(harness.parent)
    submission = write_tree(
        tmp_path / "student",
        {"cs336_basics/__init__.py": package, "tests/adapters.py": adapters or FAKE_TESTS["adapters.py"]},
    )
    result = grade_fake(submission, harness, **kw)
    assert _snapshot(harness.parent) == before, "the harness changed during grading"
    return result


def _gamed_linear(body: str, imports: str = "") -> str:
    """A package whose `double` runs `body` (the attack) and then answers wrongly unless the attack worked."""
    return imports + GOOD_PACKAGE.replace(
        "def double(x):\n    return 2 * x", f"def double(x):\n{textwrap.indent(body, '    ')}"
    )


# ---------------------------------------------------------------------------------------------- forgery
def test_forging_the_report_gains_nothing(tmp_path: Path, harness: Path) -> None:
    # Every way to the report: the variable, the plugin's emitter, report files anywhere under /tmp.
    body = textwrap.dedent(
        """
        import glob, json, os, sys
        fake = lambda n: json.dumps({"event": "result", "nodeid": n, "status": "passed"}) + "\\n"
        ids = ["tests/test_fake.py::test_linear[%d]" % i for i in (1, 2, 3)]
        ids.append("tests/test_secret.py::test_linear_against_the_answer_file")
        targets = [os.environ.get("CS336_GRADER_REPORT", "")] + glob.glob("/tmp/**/report.jsonl", recursive=True)
        for target in filter(None, targets):
            try:
                open(target, "a").writelines(fake(n) for n in ids)
            except OSError:
                pass
        for module in list(sys.modules.values()):
            emit = getattr(module, "_emit", None)
            if callable(emit):
                for n in ids:
                    emit({"event": "result", "nodeid": n, "status": "passed"})
        try:
            import cs336_grading.pytest_run.plugin as plugin
            for n in ids:
                plugin._emit({"event": "result", "nodeid": n, "status": "passed"})
        except Exception:
            pass
        raise NotImplementedError
        """
    )
    result = attack(tmp_path, harness, package=_gamed_linear(body))
    assert problem_scores(result) == {**HONEST, "linear": 0}
    assert set(statuses(result)[f"test_linear[{i}]"] for i in (1, 2, 3)) == {"not_implemented"}


def test_neutered_assertions_do_not_reach_the_grader(tmp_path: Path, harness: Path) -> None:
    body = textwrap.dedent(
        """
        import builtins, sys
        for module in list(sys.modules.values()):
            for name in ("assert_close", "assert_allclose", "assert_equal", "approx"):
                if hasattr(module, name):
                    try:
                        setattr(module, name, lambda *a, **k: None)
                    except Exception:
                        pass
        builtins.AssertionError = type("Nothing", (Exception,), {})
        return 0
        """
    )
    result = attack(tmp_path, harness, package=_gamed_linear(body))
    assert problem_scores(result) == {**HONEST, "linear": 0}


# ---------------------------------------------------------------------------------------------- skips, exits
@pytest.mark.parametrize(
    "escape",
    [
        "import pytest; pytest.skip('cannot do this shape')",
        "import pytest; pytest.xfail('known')",
        "import pytest; pytest.exit('bye')",
        "raise SystemExit(0)",
        "raise KeyboardInterrupt",
        "import unittest; raise unittest.SkipTest('no')",
        "import os; os._exit(0)",
        "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    ],
    ids=["skip", "xfail", "pytest-exit", "sys-exit", "keyboard-interrupt", "unittest-skip", "os-exit", "sigterm"],
)
def test_only_the_harness_skips_or_exits(tmp_path: Path, harness: Path, escape: str) -> None:
    # The odd inputs "cannot be handled": skipping them must not shrink the denominator.
    body = f"if x % 2:\n    {escape}\nreturn 2 * x"
    result = attack(tmp_path, harness, package=_gamed_linear(body))
    outcomes = statuses(result)
    assert outcomes["test_linear[1]"] == outcomes["test_linear[3]"] == "error", outcomes
    assert outcomes["test_linear[2]"] == "passed"
    assert problem_scores(result) == {**HONEST, "linear": pytest.approx(1 / 4)}  # the answer-file test calls 7
    assert result.execution_time < 60


# ---------------------------------------------------------------------------------------------- reach
@pytest.mark.parametrize(
    "reach",
    [
        "from tests.oracle.adapters import *",
        "import oracle.adapters",
        "from tests.conftest import *",
        "import tests.test_fake",
        "import cs336_grading.expected.bpe",
        "import importlib.resources as r; r.files('cs336_grading.harness').joinpath('conftest.py').read_text()",
    ],
    ids=["tests-oracle", "oracle", "conftest", "test-module", "expected", "harness-resource"],
)
def test_the_answer_key_and_the_harness_are_out_of_reach(tmp_path: Path, harness: Path, reach: str) -> None:
    adapters = f"{reach}\n" + FAKE_TESTS["adapters.py"]
    result = attack(tmp_path, harness, adapters=adapters)
    assert result.score == 0, result.format_table()
    assert "rror" in next(iter(result.outcomes.values())).message  # ImportError / ModuleNotFoundError ...


@ROOT_ONLY
def test_reading_the_answers_from_disk_finds_nothing(tmp_path: Path, harness: Path) -> None:
    # Searches every file system the worker can see for the answers; without them it answers wrongly.
    body = textwrap.dedent(
        """
        import glob, json
        import os, sys
        roots = ["/tmp", "/work", "/home", "/root", os.path.expanduser("~"), sys.prefix, os.getcwd() + "/.."]
        for path in [p for root in roots for p in glob.glob(root + "/**/answers.json", recursive=True)]:
            try:
                return json.loads(open(path).read())[str(x)]
            except (OSError, ValueError, KeyError):
                pass
        return -1
        """
    )
    result = attack(tmp_path, harness, package=_gamed_linear(body))
    assert statuses(result)["test_linear_against_the_answer_file"] in ("failed", "timeout")
    assert problem_scores(result)["linear"] == 0


@ROOT_ONLY
def test_writing_anywhere_reaches_nothing_of_the_grader(tmp_path: Path, harness: Path) -> None:
    # Overwrites every conftest.py, words.txt and answers.json it can find, and litters /tmp.
    body = textwrap.dedent(
        """
        import glob
        for pattern in ("/tmp/**/conftest.py", "/tmp/**/words.txt", "/tmp/**/answers.json", "/work/**/answers.json"):
            for path in glob.glob(pattern, recursive=True):
                try:
                    open(path, "w").write("hacked")
                except OSError:
                    pass
        open("/tmp/planted.txt", "w").write("x")
        return 2 * x
        """
    )
    result = attack(tmp_path, harness, package=_gamed_linear(body))
    assert problem_scores(result) == HONEST
    assert not Path("/tmp/planted.txt").exists()


@ROOT_ONLY
def test_no_network_in_the_worker(tmp_path: Path, harness: Path) -> None:
    # A TCP server of this test process on 127.0.0.1: the worker, in its own network namespace, cannot reach it.
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    body = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n    return 2 * x\nexcept OSError:\n    return -1"
    result = attack(tmp_path, harness, package=_gamed_linear(body))
    server.close()
    assert problem_scores(result)["linear"] == 0


# ---------------------------------------------------------------------------------------------- resources
def _survivors() -> list[str]:
    """Live processes named "survivor" (the forking attack names its child so), as `ps` lists them."""
    ps = subprocess.run(["ps", "-eo", "stat=,comm=,pid="], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if "survivor" in line and not line.strip().startswith("Z")]


@ROOT_ONLY
def test_forked_children_do_not_outlive_their_worker(tmp_path: Path, harness: Path) -> None:
    # A child in a session of its own (out of the worker's process group), sleeping past the grading run.
    body = textwrap.dedent(
        """
        import ctypes, os, time
        if os.fork() == 0:
            os.setsid()
            ctypes.CDLL(None).prctl(15, b"survivor", 0, 0, 0)  # PR_SET_NAME: findable with ps
            time.sleep(60)
            os._exit(0)
        return 2 * x
        """
    )
    assert _survivors() == []
    result = attack(tmp_path, harness, package=_gamed_linear(body))
    assert problem_scores(result) == HONEST
    assert _survivors() == [], "a process forked by the submission outlived the grading run"


def test_printing_megabytes_costs_nothing_but_the_test(tmp_path: Path, harness: Path) -> None:
    body = "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)\n    sys.stderr.write('y' * 2**20)\nreturn 2 * x"
    result = attack(tmp_path, harness, package=_gamed_linear(body))
    assert problem_scores(result) == HONEST
    assert len(json.dumps(result.to_gradescope())) < 20_000
    assert result.execution_time < 120


def test_a_hang_with_every_signal_blocked_is_killed(tmp_path: Path, harness: Path) -> None:
    body = "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})\nwhile True:\n    pass"
    result = attack(tmp_path, harness, package=_gamed_linear(body), timeout=1.5)
    assert {statuses(result)[f"test_linear[{i}]"] for i in (1, 2, 3)} == {"timeout"}
    assert problem_scores(result) == {**HONEST, "linear": 0}
    assert result.execution_time < 60


# ---------------------------------------------------------------------------------------------- real harness
def _reference_with(tmp_path: Path, replacements: dict[str, str]) -> Path:
    """A copy of the reference submission whose adapters have some bodies replaced (name -> new body)."""
    import shutil

    student = tmp_path / "student"
    shutil.copytree(REPO / "cs336_basics", student / "cs336_basics", ignore=shutil.ignore_patterns("__pycache__"))
    adapters = (REPO / "tests" / "adapters.py").read_text()
    for body in replacements.values():
        adapters += f"\n\n{body}\n"  # a later definition of the same name wins
    (student / "tests").mkdir()
    (student / "tests" / "adapters.py").write_text(adapters)
    return student


@pytest.mark.slow
def test_builtins_score_zero_with_evidence_and_warn_only_warns(tmp_path: Path) -> None:
    from cs336_grading.grader.grade import grade

    student = _reference_with(
        tmp_path,
        {
            "run_softmax": "def run_softmax(in_features, dim):\n    import torch.nn.functional as F\n    return F.softmax(in_features, dim=dim)",
            "run_linear": "def run_linear(d_in, d_out, weights, in_features):\n    return in_features.matmul(weights.T)",
            "get_adamw_cls": "def get_adamw_cls():\n    import torch\n    return torch.optim.AdamW",
        },
    )
    problems = ["softmax", "linear", "adamw"]
    zero = grade(student, problems=problems, jobs=2)
    scores = problem_scores(zero)
    assert scores == {"softmax": 0, "linear": 1, "adamw": 0}, zero.format_table()
    softmax = next(p for p in zero.problems if p.problem.name == "softmax")
    assert any("torch.nn.functional.softmax" in line and "adapters.py" in line for line in softmax.evidence)
    warned = grade(student, problems=problems, jobs=2, builtins="warn")
    assert problem_scores(warned) == {"softmax": 1, "linear": 1, "adamw": 2}
    assert any("softmax" in w for w in warned.warnings)


@pytest.mark.slow
def test_a_submission_that_hangs_everywhere_grades_in_under_three_minutes(tmp_path: Path) -> None:
    from cs336_grading.grader.grade import PROBLEMS, grade

    hang = "import signal\n    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT})\n    while True:\n        pass"
    names = [
        line.split("(")[0][4:]
        for line in (REPO / "tests" / "adapters.py").read_text().splitlines()
        if line.startswith("def ")
    ]
    student = _reference_with(tmp_path, {n: f"def {n}(*args, **kwargs):\n    {hang}" for n in names})
    # NOTE: 3 minutes on this 2-core machine when it is not oversubscribed; shared by more runnable processes
    # than twice its cores, everything (the reference's grading too) slows down in proportion.
    bound = 180 * max(1.0, os.getloadavg()[0] / (2 * (os.cpu_count() or 1)))
    started = time.monotonic()
    result = grade(student, jobs=2)
    assert time.monotonic() - started < bound, result.format_table()
    assert result.score == 0 and len(result.problems) == len(PROBLEMS)


def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path, harness: Path) -> None:
    package = "import time\n" + GOOD_PACKAGE.replace("return 2 * x", "time.sleep(1000)")
    submission = write_tree(
        tmp_path / "student", {"cs336_basics/__init__.py": package, "tests/adapters.py": FAKE_TESTS["adapters.py"]}
    )
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cs336_lab.cli",
            "grade",
            str(submission),
            "--harness",
            str(harness),
            "--jobs",
            "1",
            "--problems",
            "linear",
            "--timeout",
            "100",
            "--out",
            str(tmp_path / "r.json"),
        ],
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    time.sleep(8)
    proc.terminate()
    assert proc.wait(timeout=30) == 143
    time.sleep(1)
    assert list((tmp_path / "tmp").iterdir()) == [], "the grading workspace was left behind"
    ps = subprocess.run(["ps", "-eo", "pid,pgid,args"], capture_output=True, text=True).stdout
    assert str(submission) not in ps and "cs336_grading.worker.server" not in "".join(
        line for line in ps.splitlines() if str(tmp_path) in line
    )
