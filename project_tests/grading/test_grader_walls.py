"""The worker's walls, tried from the attacker's side and from the grader's environment (issue 20, items 3, 4
and 6): each hostile submission scores 0 on the problem it gamed, each honest one full marks wherever the
grader's Python lives. The toy harness of `test_grader.py`; the walls need root (Linux) and are skipped
elsewhere.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import sysconfig
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
from project_tests.grading.test_grader_attacks import HONEST, _gamed_linear

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="the walls need root on Linux")
MEASURE = (REPO / "tests" / "measure.py").read_text()
MANY = 8  # tests in one file, more than the worker starts a file may have
EXTRA_TESTS = {
    "measure.py": MEASURE,
    "test_memory.py": textwrap.dedent(
        """
        from .adapters import run_linear
        from .measure import peak_rss_growth

        def test_linear_memory():
            value, grown = peak_rss_growth(lambda: run_linear(21))
            assert value == 42
            assert grown < 64 << 20, f"run_linear grew the peak memory by {grown >> 20} MiB"
        """
    ),
    "test_many.py": textwrap.dedent(
        f"""
        import pytest
        from .adapters import run_softmax

        @pytest.mark.parametrize("x", range({MANY}), ids=str)
        def test_softmax_many(x):
            assert run_softmax(x) == x + 1
        """
    ),
}


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTEST_PLUGINS", "pytest_timeout")
    files = {**FAKE_TESTS, **EXTRA_TESTS}
    return write_tree(tmp_path / "harness", {f"tests/{rel}": text for rel, text in files.items()}) / "tests"


def _grade(tmp_path: Path, harness: Path, package: str, **kw: object):  # noqa: ANN202
    submission = write_tree(
        tmp_path / "student", {"cs336_basics/__init__.py": package, "tests/adapters.py": FAKE_TESTS["adapters.py"]}
    )
    return grade_fake(submission, harness, **kw)


# ------------------------------------------------------------------------------- the same grade anywhere
@ROOT_ONLY
def test_a_grader_python_under_tmp_keeps_its_lazy_imports(tmp_path: Path, harness: Path, monkeypatch) -> None:
    # A venv under /tmp (a CI's scratch venv) holding a module that the submission imports only when called
    # (as einops.reduce imports einops._torch_specific): the jail's /tmp must not hide the grader's Python.
    venv = Path("/tmp") / f"cs336-venv-{os.getpid()}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    try:
        purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        ours = sysconfig.get_path("purelib")
        (purelib / "grader_env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        (purelib / "lazily_imported.py").write_text("FACTOR = 2\n")
        monkeypatch.setattr(sys, "executable", str(venv / "bin" / "python"))
        lazy = GOOD_PACKAGE.replace("return 2 * x", "import lazily_imported\n    return lazily_imported.FACTOR * x")
        assert lazy != GOOD_PACKAGE
        result = _grade(tmp_path, harness, lazy, problems=["linear"])
    finally:
        subprocess.run(["rm", "-rf", str(venv)], check=False)
    assert problem_scores(result) == {"linear": 1}, result.format_table()


# ----------------------------------------------------------------------------------------- the jail
_SHM = textwrap.dedent(
    """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    KEY = 0x5EED0020
    if libc.shmget(KEY, 4096, 0) >= 0:        # an earlier test (another worker, another uid) left it
        return 2 * x
    libc.shmget(KEY, 4096, 0o1666)          # IPC_CREAT | rw for everyone: a channel to later tests
    return -1
    """
)


def _host_shm(key: int) -> int:
    return ctypes.CDLL(None, use_errno=True).shmget(key, 0, 0)


@ROOT_ONLY
def test_sysv_shared_memory_does_not_outlive_a_worker(tmp_path: Path, harness: Path) -> None:
    key = 0x5EED0020
    try:
        result = _grade(tmp_path, harness, _gamed_linear(_SHM), isolate_each=True, problems=["linear", "softmax"])
        assert problem_scores(result)["linear"] == 0, result.format_table()
        assert _host_shm(key) < 0, "a worker's shared memory segment outlived the run"
    finally:
        segment = _host_shm(key)
        if segment >= 0:
            ctypes.CDLL(None).shmctl(segment, 0, None)  # IPC_RMID: what today's grader leaves behind


@ROOT_ONLY
def test_the_report_names_every_wall_and_how_memory_is_measured(tmp_path: Path, harness: Path) -> None:
    probe = 'import os, socket\n    assert os.getpid() == 1 and socket.gethostname() == "worker"\n    return 2 * x'
    result = _grade(tmp_path, harness, GOOD_PACKAGE.replace("return 2 * x", probe), problems=["linear"])
    assert problem_scores(result) == {"linear": 1}, result.format_table()
    note = next(w for w in result.warnings if w.startswith("note: the worker's walls"))
    for wall in ("network", "filesystem", "user", "ipc", "uts", "pid"):
        assert wall in note
    assert "memory measured by" in note and "measured" in result.to_gradescope()["output"]


@ROOT_ONLY
def test_memory_used_in_a_forked_child_counts(tmp_path: Path, harness: Path) -> None:
    # The work (here: 200 MiB) done in a child that ends before the call returns is the call's memory.
    body = textwrap.dedent(
        """
        import os
        pid = os.fork()
        if pid == 0:
            block = bytearray(200 << 20)
            block[::4096] = b"x" * len(block[::4096])
            os._exit(0)
        os.waitpid(pid, 0)
        return 2 * x
        """
    )
    result = _grade(tmp_path, harness, _gamed_linear(body), problems=["linear"])
    assert statuses(result)["test_linear_memory"] == "failed", result.format_table()
    assert statuses(result)["test_linear[1]"] == "passed"


def test_start_up_is_charged_to_the_test_and_restarts_are_capped(tmp_path: Path, harness: Path) -> None:
    # A 6 s sleep at import and a worker that dies in every call: each test may pay its budget (1 s here),
    # no more, and after a few starts the file's remaining tests fail at once.
    package = "import time, os\ntime.sleep(6)\n" + GOOD_PACKAGE.replace("return x + 1", "os._exit(3)")
    assert package.count("os._exit") == 1
    budgets = {f"tests/test_many.py::test_softmax_many[{i}]": 1.0 for i in range(MANY)}
    budgets.update({f"tests/test_fake.py::test_softmax_{n}": 1.0 for n in ("one", "two")})
    started = time.monotonic()
    result = _grade(tmp_path, harness, package, problems=["softmax"], jobs=1, test_limits=budgets)
    elapsed = time.monotonic() - started
    many = {k: v for k, v in statuses(result).items() if k.startswith("test_softmax_many")}
    assert set(many.values()) <= {"timeout", "error"} and len(many) == MANY
    assert elapsed < 30, f"grading took {elapsed:.0f} s: start-up is not charged to the tests' budgets"
    messages = [o.message for o in result.outcomes.values() if "test_softmax_many" in o.nodeid]
    assert any("remaining tests fail at once" in m for m in messages), messages
    assert problem_scores(result) == {"softmax": 0}


# ------------------------------------------------------------------------------------------- the audit
# Built-ins reached around the audit's table: the grader's static scan resolves them to the problem they
# replace (score 0, with the line), whatever the worker reports about itself.
_GAMED = {"linear": "return 2 * x", "softmax": "return x + 1", "rmsnorm": "return text.upper()"}


@pytest.mark.parametrize(
    ("problem", "body", "evidence"),
    [
        (
            "linear",
            "return int(torch.ops.aten.linear(torch.tensor([[float(x)]]), torch.tensor([[2.0]])).item())",
            "torch.ops.aten.linear",
        ),
        (
            "softmax",
            "return int(torch.ops.aten._softmax.default(torch.zeros(1), 0, False).item()) + x",
            "torch.ops.aten._softmax.default",
        ),
        ("softmax", "return int(torch.special.softmax(torch.zeros(1), 0).item()) + x", "torch.special.softmax"),
        ("softmax", "return int(torch._softmax(torch.zeros(1), 0, False).item()) + x", "torch._softmax"),
        ("rmsnorm", "torch.ops.aten.rms_norm(torch.ones(2), [2])\n    return text.upper()", "torch.ops.aten.rms_norm"),
    ],
    ids=["aten-linear", "aten-_softmax", "special-softmax", "private-_softmax", "aten-rms_norm"],
)
def test_aten_kernels_and_aliases_are_forbidden_built_ins(
    tmp_path: Path, harness: Path, problem: str, body: str, evidence: str
) -> None:
    package = "import torch\n" + GOOD_PACKAGE.replace(_GAMED[problem], body)
    result = _grade(tmp_path, harness, package, problems=["linear", "softmax", "rmsnorm"])
    gamed = next(p for p in result.problems if p.problem.name == problem)
    assert gamed.score == 0 and any(evidence in line for line in gamed.evidence), result.format_table()
    assert problem_scores(result) == {**HONEST, problem: 0}


# Escape hatches that switch the in-worker audit off or fool it: each is "needs review" evidence, in the
# report and in results.json (the score stands until a person looks).
HATCHES = {
    "thread": (
        "import threading, torch\nF = getattr(torch.nn, 'func' + 'tional')\n",
        "out = []\nt = threading.Thread(target=lambda: out.append(2 * x))\nt.start(); t.join()\nreturn out[0]",
        "threading",
    ),
    "co_filename": (
        "",
        "f = lambda: 2 * x\nf.__code__ = f.__code__.replace(co_filename='/usr/lib/x.py')\nreturn f()",
        "co_filename",
    ),
    "sys.modules": ("import sys\n", "sys.modules['cs336_grading.grader.audit'] = None\nreturn 2 * x", "sys.modules"),
    "DisableTorchFunction": ("import torch\n", "with torch._C.DisableTorchFunction():\n    return 2 * x", "torch._C"),
    "importlib": (
        "import importlib\n",
        "F = importlib.import_module('torch.nn.' + 'functional')\nreturn 2 * x",
        "importlib",
    ),
}


@pytest.mark.parametrize("kind", sorted(HATCHES))
def test_escape_hatches_need_review(tmp_path: Path, harness: Path, kind: str) -> None:
    imports, body, evidence = HATCHES[kind]
    result = _grade(tmp_path, harness, _gamed_linear(body, imports), problems=["linear"])
    assert any(evidence in line for line in result.review), (kind, result.review)
    payload = result.to_gradescope()
    assert any(evidence in line for line in payload["needs_review"])
    assert "Needs review" in str(payload["output"]) and "Needs review" in result.format_table()


def test_the_reference_needs_no_review() -> None:
    from cs336_grading.grader import audit

    assert audit.review(REPO / "cs336_basics", REPO / "tests" / "adapters.py") == []


# The same kernels reached where the in-worker hooks are blind: a helper thread (the TorchFunctionMode is
# per thread), torch's function hooks switched off, a code object claiming another file, the audit module
# swapped in sys.modules. The names are built at run time, so the static scan cannot resolve them: the
# sealed kernels end the call (score 0) and name the kernel (evidence).
_LOOKUP = "import torch, threading, sys\nops = getattr(torch, 'o' + 'ps')\nsoft = lambda: getattr(ops.aten, '_soft' + 'max')\n"
DYNAMIC = {
    "thread": "out = []\nt = threading.Thread(target=lambda: out.append(int(soft()(torch.zeros(1), 0, False).item())))\n"
    "t.start(); t.join()\nreturn out[0] + x",
    "disable-torch-function": "with getattr(torch, '_' + 'C').DisableTorchFunction():\n"
    "    return int(soft()(torch.zeros(1), 0, False).item()) + x",
    "co_filename": "f = lambda: int(soft()(torch.zeros(1), 0, False).item()) + x\n"
    "f.__code__ = f.__code__.replace(co_filename=torch.__file__)\nreturn f()",
    "sys.modules": "sys.modules['cs336_grading.grader.audit'] = type(sys)('nothing')\n"
    "return int(soft()(torch.zeros(1), 0, False).item()) + x",
}


@pytest.mark.parametrize("kind", sorted(DYNAMIC))
def test_kernels_are_sealed_in_every_thread_and_against_forgery(tmp_path: Path, harness: Path, kind: str) -> None:
    package = _LOOKUP + GOOD_PACKAGE.replace("return x + 1", textwrap.indent(DYNAMIC[kind], "    ").lstrip())
    result = _grade(tmp_path, harness, package, problems=["linear", "softmax", "rmsnorm"])
    assert problem_scores(result) == {**HONEST, "softmax": 0}, result.format_table()
    softmax = next(p for p in result.problems if p.problem.name == "softmax")
    assert any("aten::_softmax" in line for line in softmax.evidence), softmax.evidence


def test_needs_review_is_a_column_of_the_batch_summary(tmp_path: Path) -> None:
    import json

    from cs336_grading.staff import batch

    evidence = ["cs336_basics/__init__.py:3: torch._C (reaches into torch's C bindings)"]
    for student, extra in (("alice", {"needs_review": evidence}), ("bob", {})):
        (tmp_path / student).mkdir()
        payload = {"score": 1.0, "tests": [{"name": "linear", "score": 1.0}], **extra}
        (tmp_path / student / batch.RESULTS).write_text(json.dumps(payload))
    states = [{"student": s, "status": "graded", "seconds": 1.0, "flags": []} for s in ("alice", "bob")]
    columns, rows = batch.summary_rows(tmp_path, states)
    assert "needs_review" in columns
    assert rows[0]["needs_review"] == evidence[0] and rows[1]["needs_review"] == ""
