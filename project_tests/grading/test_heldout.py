"""Held-out graded cases and the canary (issue 20, items 5 and 6).

The handout ships the public snapshots; under a course secret the graded snapshot tests draw held-out cases
instead (`cs336_grading/grader/heldout.py`, `expected/draws.py`). Written from the attacker's side: a submission
that looks its inputs up in the public snapshots earns their points without a secret and nothing with one.
The canary (`cs336_grading/grader/canary.py`): a known-correct submission graded before a batch and at the start
of a Gradescope run, which stops grading with a message naming the environment when it loses a point.
Grading runs end to end are `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cs336_grading.expected.draws import BUILDERS, PUBLIC_SEEDS, draw
from cs336_grading.grader import heldout
from cs336_grading.grader.canary import CANARY_DIR
from cs336_grading.staff.autograder import SECRET_FILE, build_autograder
from cs336_grading.worker.client import ForkServer
from project_tests.grading.test_grader import REPO, problem_scores, write_tree
from tests.snapshot_io import read_npz

SECRETS = ("course-secret-one-2026", "course-secret-two-2026")
SNAPSHOT_TESTS = [
    "tests/test_model.py",
    "tests/test_functional.py",
    "tests/test_nn_utils.py",
    "tests/test_optimizer.py",
]


# ------------------------------------------------------------------------------------------ the draws


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_heldout_draw_has_the_public_layout_and_new_values(name: str) -> None:
    public = read_npz(REPO / "tests" / "_snapshots" / f"{name}.npz")
    drawn = draw(name, heldout.seed_for(SECRETS[0], name), heldout=True)
    assert sorted(drawn) == sorted(public)
    varied = {"model_linear": ("batched.", "vector."), "model_silu": ("float32.",)}.get(name, ())
    for key, array in public.items():
        assert drawn[key].dtype == array.dtype, key
        assert drawn[key].shape == array.shape or key.startswith(varied), key
    inputs = [k for k in public if public[k].dtype.kind == "f" and "expected" not in k and "hyper" not in k]
    assert inputs and all(not np.array_equal(drawn[k], public[k]) for k in inputs), "a held-out input is public"


def test_the_same_secret_draws_the_same_cases_and_another_secret_others() -> None:
    def arrays(secret: str) -> dict[str, np.ndarray]:
        return draw("model_softmax", heldout.seed_for(secret, "model_softmax"), heldout=True)

    first, again, other = arrays(SECRETS[0]), arrays(SECRETS[0]), arrays(SECRETS[1])
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["in_features"], other["in_features"])
    assert heldout.seed_for(SECRETS[0], "model_linear") != heldout.seed_for(SECRETS[0], "model_softmax")


def test_the_public_seed_rebuilds_the_committed_snapshots() -> None:
    # One home: the oracle's `make snapshots` writes these draws; the model snapshots are byte-identical.
    for name in (n for n in BUILDERS if n.startswith("model_")):
        public, rebuilt = read_npz(REPO / "tests" / "_snapshots" / f"{name}.npz"), draw(name, PUBLIC_SEEDS[name])
        assert all(np.array_equal(public[k], rebuilt[k]) for k in public), name


def test_heldout_cases_hold_the_shapes_and_inputs_that_catch_mistakes() -> None:
    for secret in SECRETS:
        linear = draw("model_linear", heldout.seed_for(secret, "model_linear"), heldout=True)
        d_out, d_in = linear["batched.weights"].shape
        assert d_out == d_in, "a square Linear shows a missing transpose"
        d_out, d_in = linear["vector.weights"].shape
        assert d_out != d_in
        silu = draw("model_silu", heldout.seed_for(secret, "model_silu"), heldout=True)
        assert np.abs(silu["float32.in_features"]).max() > 89, "beyond ±88.7 exp(x) overflows float32"


def test_docstring_examples() -> None:
    import doctest

    from cs336_grading.expected import draws

    assert doctest.testmod(heldout).failed == 0 and doctest.testmod(draws).failed == 0


def test_each_submission_draws_its_own_cases(tmp_path: Path) -> None:
    # A submission that leaked its held-out inputs (in an error message) and answers them next time changed
    # its files, so it is graded on other draws; the same files are graded on the same draws.
    from cs336_grading.grader.grade import _files
    from cs336_grading.grader.submission import Submission

    def salted(root: Path, body: str) -> str:
        write_tree(root, {"cs336_basics/__init__.py": body, "tests/adapters.py": "def run_softmax(x, dim): ..."})
        return heldout.for_submission(
            SECRETS[0], _files(Submission(root / "cs336_basics", root / "tests" / "adapters.py"))
        )

    first, same, changed = (
        salted(tmp_path / "a", "x = 1\n"),
        salted(tmp_path / "b", "x = 1\n"),
        salted(tmp_path / "c", "x = 2\n"),
    )
    assert first == same != changed
    assert heldout.seed_for(first, "model_softmax") != heldout.seed_for(changed, "model_softmax")


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16 characters, got 5"):
        heldout.check_secret("guess")
    path = heldout.write_secret(tmp_path / "s", SECRETS[0])
    assert heldout.read_secret(path) == SECRETS[0] and (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.slow
@pytest.mark.parametrize("oracle", [False, True], ids=["reference", "oracle"])
def test_correct_implementations_pass_the_heldout_cases(oracle: bool) -> None:
    # The independent check: the oracle's float32 torch built-ins (and the reference) meet the tolerances on
    # the held-out cases of two secrets, as they do on the public ones.
    for secret in SECRETS:
        env = {**os.environ, heldout.SECRET_ENV: secret}
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "snapshot",
            *(["-p", "oracle.use_oracle"] if oracle else []),
            *SNAPSHOT_TESTS,
        ]
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:]


# ------------------------------------------------------------------------------ the secret stays out


def test_the_fork_server_never_holds_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers fork from it: what it was started with is in every worker's /proc/self/environ.
    monkeypatch.setenv(heldout.SECRET_ENV, SECRETS[0])
    with ForkServer(tmp_path, warm=False) as server:
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes()
    assert SECRETS[0].encode() not in environ and heldout.SECRET_ENV.encode() not in environ


def test_the_autograder_ships_the_secret_and_the_canary_but_the_handout_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cs336_grading.staff.handout import build_handout

    archive = build_autograder(tmp_path / "a.zip", settings={"problems": ["softmax"]}, secret=SECRETS[0])
    with zipfile.ZipFile(archive) as zf:
        assert zf.read(SECRET_FILE).decode().strip() == SECRETS[0]
        assert (zf.getinfo(SECRET_FILE).external_attr >> 16) & 0o077 == 0, "the secret is readable by others"
        assert zf.read(f"{CANARY_DIR}/tests/adapters.py") == (REPO / "tests" / "adapters.py").read_bytes()
        assert zf.read(f"{CANARY_DIR}/cs336_basics/model.py") == (REPO / "cs336_basics" / "model.py").read_bytes()
        assert SECRETS[0].encode() not in zf.read("autograder.json")
    again = build_autograder(tmp_path / "b.zip", settings={"problems": ["softmax"]}, secret=SECRETS[0])
    assert again.read_bytes() == archive.read_bytes()
    with zipfile.ZipFile(build_autograder(tmp_path / "c.zip", with_canary=False)) as zf:
        assert not any(n.startswith(CANARY_DIR + "/") for n in zf.namelist())
        assert zf.read(SECRET_FILE).decode().strip() != SECRETS[0], "a fresh secret by default"
    # The kit: built while the secret is in the environment and a stray secret sits in the package.
    monkeypatch.setenv(heldout.SECRET_ENV, SECRETS[1])
    stray = REPO / "cs336_grading" / "left-behind.secret"
    stray.write_text(SECRETS[1])
    try:
        kit = build_handout(tmp_path / "kit")
    finally:
        stray.unlink()
    files = [p for p in kit.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name in (SECRET_FILE, stray.name) or CANARY_DIR in p.relative_to(kit).parts]
    assert not [p for p in files if SECRETS[1].encode() in p.read_bytes()]


# --------------------------------------------------------------------------------- graded end to end


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real harness with only the test files of the problems graded here (fewer pytest processes)."""
    keep = {"test_model.py", "test_functional.py", "test_optimizer.py"}
    tests = tmp_path_factory.mktemp("harness") / "tests"
    shutil.copytree(
        REPO / "tests",
        tests,
        ignore=lambda d, names: [
            n for n in names if n == "__pycache__" or (n.startswith("test_") and n.endswith(".py") and n not in keep)
        ],
    )
    return tests


def lookup_cheater(root: Path) -> Path:
    """A submission with no implementation: it finds its input in the public snapshots (which the handout
    ships) and returns the stored answer; any other input gets zeros."""
    table = {}
    for name, pairs in (
        (
            "model_softmax",
            [("in_features", f"dim{d}") for d in (0, 1, 2, -1, -3)]
            + [("stable.in_features", "stable"), ("bf16.in_features", "bf16")],
        ),
        ("model_linear", [(f"{c}.in_features", c) for c in ("batched", "vector", "bf16")]),
    ):
        snap = read_npz(REPO / "tests" / "_snapshots" / f"{name}.npz")
        for key, case in pairs:
            dim = case.removeprefix("dim") if case.startswith("dim") else "-1"
            x = snap[key].astype(np.float32)
            expected = snap[f"{case}.expected"]
            table[f"{x.tobytes().hex()}:{dim}"] = (expected.tobytes().hex(), list(expected.shape))
    adapters = (
        "import numpy as np\nimport torch\nfrom cs336_basics.answers import TABLE\n\n"
        "def _look(x, tag, shape):\n"
        "    hit = TABLE.get(x.detach().float().numpy().tobytes().hex() + ':' + tag)\n"
        "    if hit is None:\n        return torch.zeros(shape)\n"
        "    return torch.from_numpy(np.frombuffer(bytes.fromhex(hit[0]), dtype=np.float32).reshape(hit[1]).copy())\n\n"
        "def run_softmax(in_features, dim):\n    return _look(in_features, str(dim), in_features.shape)\n\n"
        "def run_linear(d_in, d_out, weights, in_features):\n"
        "    return _look(in_features, '-1', (*in_features.shape[:-1], d_out))\n"
    )
    return write_tree(
        root,
        {
            "cs336_basics/__init__.py": "",
            "cs336_basics/answers.py": f"TABLE = {table!r}\n",
            "tests/adapters.py": adapters,
        },
    )


@pytest.mark.slow
def test_looking_answers_up_in_the_public_snapshots_scores_nothing_under_a_secret(
    tmp_path: Path, harness: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cs336_grading.grader.grade import grade

    monkeypatch.delenv(heldout.SECRET_ENV, raising=False)
    cheater = lookup_cheater(tmp_path / "cheater")
    options = {"problems": ["softmax", "linear"], "jobs": 2, "harness": harness}
    public = grade(cheater, **options)
    snapshot_tests = {
        n: o for n, o in public.outcomes.items() if "snapshot" in n or "stable" in n or "softmax_bf16" in n
    }
    assert len(snapshot_tests) == 10 and all(o.status == "passed" for o in snapshot_tests.values()), (
        public.format_table()
    )
    runs = [grade(cheater, **options, secret=SECRETS[0]) for _ in range(2)]
    assert problem_scores(runs[0]) == {"softmax": 0.0, "linear": 0.0}, runs[0].format_table()
    first, second = (r.to_gradescope() for r in runs)
    assert [t["score"] for t in first["tests"]] == [t["score"] for t in second["tests"]]  # type: ignore[index]
    assert all(runs[0].outcomes[n].message == runs[1].outcomes[n].message for n in snapshot_tests), "other draws"
    for nodeid in snapshot_tests:  # under grading a failure summarises: the worst element, never the tensors
        message = runs[0].outcomes[nodeid].message
        assert "worst at" in message and "tensor(" not in message and len(message) < 600, (nodeid, message)


@pytest.mark.slow
def test_the_reference_scores_full_marks_under_two_secrets(harness: Path) -> None:
    from cs336_grading.grader.grade import grade

    for secret in SECRETS:
        result = grade(REPO, problems=["linear", "softmax", "adamw"], jobs=2, secret=secret, harness=harness)
        assert result.score == result.max_score, result.format_table()


def _batch(
    tmp_path: Path, harness: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    students = write_tree(
        tmp_path / "students",
        {"alice/tests/adapters.py": "def run_softmax(x, dim):\n    return x\n", "alice/cs336_basics/__init__.py": ""},
    )
    command = [
        sys.executable,
        "-m",
        "cs336_lab.cli",
        "grade",
        str(students),
        "--out-dir",
        str(tmp_path / "out"),
        "--problems",
        "softmax",
        "--jobs",
        "2",
        "--harness",
        str(harness),
        *extra,
    ]
    return subprocess.run(
        command, cwd=tmp_path, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600
    )


def broken_canary(root: Path) -> Path:
    """The reference, but its softmax broken: what a correct submission looks like in a broken environment."""
    files = {
        f"cs336_basics/{p.relative_to(REPO / 'cs336_basics').as_posix()}": p.read_text()
        for p in (REPO / "cs336_basics").rglob("*.py")
    }
    adapters = (
        REPO / "tests" / "adapters.py"
    ).read_text() + "\n\ndef run_softmax(in_features, dim):\n    return in_features\n"
    return write_tree(root, files | {"tests/adapters.py": adapters})


@pytest.mark.slow
def test_a_canary_that_loses_a_point_stops_the_batch(tmp_path: Path, harness: Path) -> None:
    proc = _batch(tmp_path, harness, "--canary", str(broken_canary(tmp_path / "canary")))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "the canary (a known-correct submission) scored 0.00 / 1" in proc.stderr
    assert f"Python {sys.version.split()[0]} at {sys.executable}" in proc.stderr, "the message names the environment"
    assert not (tmp_path / "out" / "alice").exists(), "no submission was graded"
    proc = _batch(tmp_path, harness, "--canary", str(tmp_path / "canary"), "--no-canary")
    assert proc.returncode == 0 and (tmp_path / "out" / "alice" / "results.json").exists(), proc.stderr[-2000:]


@pytest.mark.slow
def test_an_environment_that_breaks_the_test_processes_stops_the_batch(tmp_path: Path, harness: Path) -> None:
    proc = _batch(tmp_path, harness, env={"CS336_TEST_THREADS": "many"})  # the harness's conftest cannot start
    assert proc.returncode == 1 and "the canary (a known-correct submission) could not be graded" in proc.stderr
    assert "grading environment: Python" in proc.stderr and not (tmp_path / "out" / "alice").exists()


@pytest.mark.slow
def test_the_gradescope_run_stops_on_a_broken_canary_and_says_so(tmp_path: Path, harness: Path) -> None:
    archive = build_autograder(
        tmp_path / "autograder.zip", harness=harness, settings={"problems": ["softmax"], "jobs": 2}, secret=SECRETS[0]
    )
    root = tmp_path / "root"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root / "source")
    canary = root / "source" / CANARY_DIR
    broken = broken_canary(tmp_path / "broken") / "tests" / "adapters.py"
    (canary / "tests" / "adapters.py").write_text(broken.read_text())  # as if softmax broke in this environment
    write_tree(root / "submission", {"tests/adapters.py": "def run_softmax(x, dim):\n    return x\n"})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"CS336_AUTOGRADER_ROOT": str(root), "CS336_AUTOGRADER_PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 0.0 and results["tests"] == []
    assert results["output"].startswith("Grading stopped before your submission ran: the canary")
    assert "grading environment: Python" in results["output"] and "not your fault" in results["output"]
