"""The grader (`cs336_grading.grader.grade`): isolation, scoring, results.json and the command line.

Most tests grade tiny fake submissions against a tiny fake harness built in `tmp_path` (no torch import
in the test processes, so each grading run takes a second or two). The tests that grade against the real
harness skip while the graded test files of the problems they need have not landed; grading the
reference in full is `slow`.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import zipfile
from pathlib import Path

import pytest

from cs336_grading import cli as grading_cli
from cs336_grading.grader import grade as grader
from cs336_grading.grader.grade import PROBLEMS, RESULT_FIELDS, TEST_FIELDS, GraderError, GradeResult, grade, problem_of
from cs336_grading.pytest_run.sandbox import SubmissionError, unpack_submission

REPO = Path(__file__).resolve().parents[2]

# A fake harness: three "problems" (linear, softmax, rmsnorm) whose tests call adapters of a toy package.
FAKE_TESTS = {
    "__init__.py": "",
    "conftest.py": textwrap.dedent(
        """
        from pathlib import Path
        import pytest

        @pytest.fixture
        def fixtures_dir():
            return Path(__file__).parent / "fixtures"
        """
    ),
    "adapters.py": textwrap.dedent(
        '''
        import cs336_basics as impl

        def run_linear(x: int) -> int:
            """Twice x."""
            return impl.double(x)

        def run_softmax(x: int) -> int:
            """x plus one."""
            return impl.inc(x)

        def run_rmsnorm(text: str) -> str:
            """Upper-case text."""
            return impl.upper(text)
        '''
    ),
    "test_fake.py": textwrap.dedent(
        """
        import pytest
        from .adapters import run_linear, run_rmsnorm, run_softmax

        @pytest.mark.parametrize("x", [1, 2, 3], ids=str)
        def test_linear(x):
            assert run_linear(x) == 2 * x

        def test_softmax_one():
            assert run_softmax(1) == 2

        def test_softmax_two():
            assert run_softmax(2) == 3

        def test_rmsnorm(fixtures_dir):
            text = (fixtures_dir / "words.txt").read_text()
            assert run_rmsnorm(text) == "HELLO WORLD"
        """
    ),
    "test_integrity.py": "def test_fixture_drift():\n    assert True\n",
    "fixtures/words.txt": "hello world",
}

GOOD_PACKAGE = textwrap.dedent(
    """
    def double(x):
        return 2 * x

    def inc(x):
        return x + 1

    def upper(text):
        return text.upper()
    """
)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def fake_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The fake tests need no pytest plugin but pytest-timeout: skip the ~2 s hypothesis import per process.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTEST_PLUGINS", "pytest_timeout")
    root = tmp_path / "harness"
    write_tree(root, {f"tests/{rel}": text for rel, text in FAKE_TESTS.items()})
    return root / "tests"


def make_submission(root: Path, package: str = GOOD_PACKAGE, adapters: str | None = None) -> Path:
    """A student directory: `cs336_basics/__init__.py` holding `package`, and the harness's adapters."""
    return write_tree(
        root,
        {"cs336_basics/__init__.py": package, "tests/adapters.py": adapters or FAKE_TESTS["adapters.py"]},
    )


FAKE_PROBLEMS = ["linear", "softmax", "rmsnorm"]


def grade_fake(submission: Path, harness: Path, **kwargs: object) -> GradeResult:
    options: dict[str, object] = {"timeout": 10.0, "memory_mb": 1024, "jobs": 2, "problems": FAKE_PROBLEMS}
    options.update(kwargs)
    return grade(submission, harness=harness, **options)  # type: ignore[arg-type]


def statuses(result: GradeResult) -> dict[str, str]:
    return {nodeid.split("::")[-1]: o.status for nodeid, o in result.outcomes.items()}


def problem_scores(result: GradeResult) -> dict[str, float]:
    return {p.problem.name: p.score for p in result.problems}


# ---------------------------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("tests/test_model.py::test_linear", "linear"),
        ("tests/test_model.py::test_swiglu[3d]", "positionwise_feedforward"),
        ("tests/test_model.py::test_silu_matches_torch", "positionwise_feedforward"),
        ("tests/test_optimizer.py::test_get_lr_cosine_schedule", "learning_rate_schedule"),
        ("tests/test_data.py::test_get_batch_shapes", "data_loading"),
        ("tests/test_serialization.py::test_checkpointing", "checkpointing"),
        ("tests/test_tokenizer.py::TestRoundTrip::test_tokenizer_roundtrip[ascii]", "tokenizer"),
        ("tests/test_train_bpe.py::test_train_bpe_speed", "train_bpe"),
        ("tests/test_snapshots.py::test_snapshot_drift[linear]", None),
    ],
    ids=lambda v: str(v).split("::")[-1] if isinstance(v, str) and "::" in v else str(v),
)
def test_problem_of_maps_test_names(nodeid: str, expected: str | None) -> None:
    assert problem_of(nodeid) == expected


def test_points_match_the_assignment() -> None:
    assert len(PROBLEMS) == 18
    assert sum(p.points for p in PROBLEMS) == 63
    assert {p.name: p.points for p in PROBLEMS}["scaled_dot_product_attention"] == 5


# ---------------------------------------------------------------------------------------------- submissions


def test_unpack_tolerates_a_top_folder_zip_without_init_files(tmp_path: Path) -> None:
    archive = tmp_path / "alice.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("hw1/cs336_basics/model.py", "X = 1\n")
        zf.writestr("hw1/cs336_basics/sub/part.py", "Y = 2\n")
        zf.writestr("hw1/tests/adapters.py", "import cs336_basics\n")
        zf.writestr("__MACOSX/hw1/tests/._adapters.py", "junk")
    sub = unpack_submission(archive, tmp_path / "out")
    assert (sub.package / "model.py").read_text() == "X = 1\n"
    assert (sub.package / "__init__.py").exists() and (sub.package / "sub" / "__init__.py").exists()
    assert sub.adapters.read_text() == "import cs336_basics\n"


def test_unpack_rejects_a_submission_without_adapters(tmp_path: Path) -> None:
    write_tree(tmp_path / "bob", {"cs336_basics/__init__.py": ""})
    with pytest.raises(SubmissionError, match="adapters.py"):
        unpack_submission(tmp_path / "bob", tmp_path / "out")


def test_unpack_rejects_zip_slip(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.py", "")
        zf.writestr("tests/adapters.py", "")
    with pytest.raises(SubmissionError, match="outside"):
        unpack_submission(archive, tmp_path / "out")
    assert not (tmp_path / "outside.py").exists()


def test_unknown_problem_is_a_value_error(tmp_path: Path, fake_harness: Path) -> None:
    with pytest.raises(ValueError, match="expected problem names"):
        grade(make_submission(tmp_path / "s"), harness=fake_harness, problems=["lineer"])


def test_a_problem_without_tests_is_reported_loudly(tmp_path: Path, fake_harness: Path) -> None:
    with pytest.raises(GraderError, match="no tests for problem.*adamw"):
        grade(make_submission(tmp_path / "s"), harness=fake_harness, problems=["linear", "adamw"])


# ---------------------------------------------------------------------------------------------- grading


def test_a_correct_submission_scores_full_marks(tmp_path: Path, fake_harness: Path) -> None:
    result = grade_fake(make_submission(tmp_path / "s"), fake_harness)
    assert set(statuses(result).values()) == {"passed"}, result.format_table()
    assert result.score == result.max_score == 3  # linear, softmax and rmsnorm: 1 point each
    assert result.ungraded == ("tests/test_integrity.py::test_fixture_drift",)


def test_a_broken_function_loses_points_in_its_problem_only(tmp_path: Path, fake_harness: Path) -> None:
    broken = GOOD_PACKAGE.replace("return x + 1", "return x + 2 if x == 2 else x + 1")
    result = grade_fake(make_submission(tmp_path / "s", broken), fake_harness)
    assert problem_scores(result) == {"linear": 1, "softmax": 0.5, "rmsnorm": 1}
    assert statuses(result)["test_softmax_two"] == "failed"
    assert "assert 4 == 3" in result.outcomes["tests/test_fake.py::test_softmax_two"].message


def test_not_implemented_and_import_errors_are_classified(tmp_path: Path, fake_harness: Path) -> None:
    package = GOOD_PACKAGE.replace("return 2 * x", "raise NotImplementedError")
    result = grade_fake(make_submission(tmp_path / "a", package), fake_harness)
    assert {statuses(result)[f"test_linear[{x}]"] for x in (1, 2, 3)} == {"not_implemented"}
    assert problem_scores(result)["linear"] == 0 and problem_scores(result)["softmax"] == 1

    result = grade_fake(make_submission(tmp_path / "b", "raise ImportError('no numpy')\n"), fake_harness)
    assert set(statuses(result).values()) == {"error"}
    assert all("no numpy" in o.message for o in result.outcomes.values())


def test_a_hanging_test_times_out_alone(tmp_path: Path, fake_harness: Path) -> None:
    package = "import time\n" + GOOD_PACKAGE.replace(
        "return x + 1", "time.sleep(1000) if x == 1 else None\n    return x + 1"
    )
    result = grade_fake(make_submission(tmp_path / "s", package), fake_harness, timeout=2.0)
    assert statuses(result)["test_softmax_one"] == "timeout"
    assert problem_scores(result) == {"linear": 1, "softmax": 0.5, "rmsnorm": 1}
    assert result.execution_time < 30


def test_a_hang_that_ignores_signals_is_killed(tmp_path: Path, fake_harness: Path) -> None:
    # Blocking SIGALRM defeats pytest-timeout; the grader's watchdog must still stop the process.
    package = "import signal, time\n" + GOOD_PACKAGE.replace(
        "return x + 1",
        "if x == 1:\n"
        "        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\n"
        "        time.sleep(1000)\n"
        "    return x + 1",
    )
    result = grade_fake(make_submission(tmp_path / "s", package), fake_harness, timeout=1.0)
    assert statuses(result)["test_softmax_one"] == "timeout"
    assert problem_scores(result) == {"linear": 1, "softmax": 0.5, "rmsnorm": 1}


def test_a_runaway_allocation_hits_the_memory_limit_alone(tmp_path: Path, fake_harness: Path) -> None:
    package = GOOD_PACKAGE.replace(
        "return 2 * x", "hog = [bytearray(2**26) for _ in range(10**6)] if x == 2 else None\n    return 2 * x"
    )
    result = grade_fake(make_submission(tmp_path / "s", package), fake_harness, memory_mb=512)
    assert statuses(result)["test_linear[2]"] == "memory"
    assert problem_scores(result)["linear"] == pytest.approx(2 / 3)
    assert problem_scores(result)["softmax"] == problem_scores(result)["rmsnorm"] == 1


def test_a_crash_costs_that_test_only(tmp_path: Path, fake_harness: Path) -> None:
    package = "import os\n" + GOOD_PACKAGE.replace("return 2 * x", "os._exit(3) if x == 1 else None\n    return 2 * x")
    result = grade_fake(make_submission(tmp_path / "s", package), fake_harness)
    assert statuses(result)["test_linear[1]"] == "error"
    assert "exit code 3" in result.outcomes["tests/test_fake.py::test_linear[1]"].message
    assert problem_scores(result) == {"linear": pytest.approx(2 / 3), "softmax": 1, "rmsnorm": 1}


def test_overwriting_fixtures_cannot_change_the_judgement(tmp_path: Path, fake_harness: Path) -> None:
    # The linear code rewrites the fixture that the rmsnorm test reads (and would make it pass). The worker
    # has no harness file to write (its workspace holds the submission only): the write itself fails.
    package = "from pathlib import Path\n" + GOOD_PACKAGE.replace(
        "return 2 * x", "Path('tests/fixtures/words.txt').write_text('hacked')\n    return 2 * x"
    ).replace("return text.upper()", "return 'HELLO WORLD' if text == 'hacked' else 'no'")
    before = {p: p.read_bytes() for p in fake_harness.rglob("*") if p.is_file()}
    result = grade_fake(make_submission(tmp_path / "s", package), fake_harness)
    assert {p: p.read_bytes() for p in fake_harness.rglob("*") if p.is_file()} == before
    assert statuses(result)["test_rmsnorm"] == "failed"
    assert {statuses(result)[f"test_linear[{x}]"] for x in (1, 2, 3)} == {"error"}
    assert "No such file" in result.outcomes["tests/test_fake.py::test_linear[1]"].message


def test_writing_outside_the_workspace_cannot_reach_later_tests(tmp_path: Path, fake_harness: Path) -> None:
    # The linear code rewrites every words.txt it can find under the grader's temporary directory.
    package = "from pathlib import Path\n" + GOOD_PACKAGE.replace(
        "return 2 * x",
        "[p.write_text('hacked') for p in Path.cwd().parent.rglob('words.txt')]\n    return 2 * x",
    ).replace("return text.upper()", "return 'HELLO WORLD' if text == 'hacked' else text.upper()")
    result = grade_fake(make_submission(tmp_path / "s", package), fake_harness, jobs=1)
    assert statuses(result)["test_rmsnorm"] == "passed"  # judged on the pristine fixture
    assert (fake_harness / "fixtures" / "words.txt").read_text() == "hello world"


def test_the_total_time_limit_stops_the_run(tmp_path: Path, fake_harness: Path) -> None:
    package = "import time\n" + GOOD_PACKAGE.replace("return 2 * x", "time.sleep(1000)")
    result = grade_fake(
        make_submission(tmp_path / "s", package), fake_harness, timeout=100.0, total_timeout=4.0, jobs=1
    )
    assert result.execution_time < 20
    assert statuses(result)["test_linear[1]"] == "timeout"
    assert result.score < result.max_score


# ---------------------------------------------------------------------------------------------- results


def test_results_json_has_the_documented_fields(tmp_path: Path, fake_harness: Path) -> None:
    result = grade_fake(make_submission(tmp_path / "s"), fake_harness, problems=["linear", "softmax"])
    payload = json.loads(result.write_json(tmp_path / "out" / "results.json").read_text())
    assert tuple(payload) == RESULT_FIELDS
    assert isinstance(payload["score"], float | int) and isinstance(payload["execution_time"], float | int)
    assert [t["name"] for t in payload["tests"]] == ["linear", "softmax"]
    for test in payload["tests"]:
        assert tuple(test) == TEST_FIELDS
        assert test["status"] in ("passed", "failed") and test["visibility"] == "visible"
        assert 0 <= test["score"] <= test["max_score"]
    assert payload["score"] == sum(t["score"] for t in payload["tests"]) == 2


def test_cli_grades_a_zip_and_writes_results(
    tmp_path: Path, fake_harness: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_submission(tmp_path / "s")
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in source.rglob("*.py"):
            zf.write(path, Path("top") / path.relative_to(source))
    import argparse

    parser = argparse.ArgumentParser()
    grading_cli.add_subcommand(parser.add_subparsers())
    out = tmp_path / "results.json"
    args = parser.parse_args(
        [
            "grade",
            str(archive),
            "--harness",
            str(fake_harness),
            "--out",
            str(out),
            "--problems",
            "linear,rmsnorm",
            "--jobs",
            "1",
        ]
    )
    assert args.func(args) == 0
    assert json.loads(out.read_text())["score"] == 2
    table = capsys.readouterr().out
    assert "linear" in table and "total" in table and "softmax" not in table


def test_cli_writes_a_zero_grade_for_an_ungradable_submission(tmp_path: Path, fake_harness: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    grading_cli.add_subcommand(parser.add_subparsers())
    (tmp_path / "empty").mkdir()
    out = tmp_path / "results.json"
    args = parser.parse_args(["grade", str(tmp_path / "empty"), "--harness", str(fake_harness), "--out", str(out)])
    assert args.func(args) == 0  # the grader ran; the submission is at fault
    payload = json.loads(out.read_text())
    assert payload["score"] == 0.0 and payload["tests"] == [] and "adapters.py" in payload["output"]
    args = parser.parse_args(["grade", str(tmp_path / "missing"), "--harness", str(fake_harness), "--out", str(out)])
    assert args.func(args) == 2  # a typo in the path is a usage error


# ---------------------------------------------------------------------------------------------- real harness


def _harness_has(*problems: str) -> bool:
    """Whether the real harness defines a graded test for each of `problems`."""
    text = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    return all(any(f"def {prefix}" in text for prefix in p.prefixes) for p in PROBLEMS if p.name in problems)


@pytest.mark.slow
@pytest.mark.skipif(not _harness_has("softmax", "linear"), reason="the graded softmax/linear tests have not landed")
def test_the_students_package_shadows_the_reference(tmp_path: Path) -> None:
    student = tmp_path / "student"
    shutil.copytree(REPO / "cs336_basics", student / "cs336_basics", ignore=shutil.ignore_patterns("__pycache__"))
    (student / "tests").mkdir()
    shutil.copyfile(REPO / "tests" / "adapters.py", student / "tests" / "adapters.py")
    functional = student / "cs336_basics" / "functional.py"
    functional.write_text(functional.read_text() + "\n\ndef softmax(x, dim):\n    return x\n")
    result = grade(student, problems=["softmax", "linear"], timeout=60.0)
    scores = problem_scores(result)
    assert scores["linear"] == 1, result.format_table()
    assert scores["softmax"] < 1, result.format_table()


@pytest.mark.slow
@pytest.mark.skipif(
    not _harness_has(*(p.name for p in PROBLEMS)), reason="not every problem's graded tests have landed"
)
def test_the_reference_scores_full_marks(tmp_path: Path) -> None:
    result = grade(REPO, timeout=300.0)
    assert result.score == pytest.approx(result.max_score), result.format_table()

    # Every test passes, the advisory ones (0 points, reported as "advisory") included.
    def passed(o: object) -> bool:
        return o.status in ("passed", "skipped") or (o.status == "advisory" and o.message.startswith("passed"))

    assert all(passed(o) for o in result.outcomes.values()), result.format_table()


def test_isolate_each_test_runs_one_process_per_test(tmp_path: Path, fake_harness: Path) -> None:
    # A test that poisons the interpreter for the tests after it in the same process.
    package = "import os\n" + GOOD_PACKAGE.replace("return 2 * x", "os.environ['POISON'] = '1'\n    return 2 * x")
    package = package.replace("return text.upper()", "return 'poisoned' if 'POISON' in os.environ else text.upper()")
    shared = grade_fake(make_submission(tmp_path / "a", package), fake_harness)
    isolated = grade_fake(make_submission(tmp_path / "b", package), fake_harness, isolate_each=True)
    assert statuses(shared)["test_rmsnorm"] == "failed"
    assert set(statuses(isolated).values()) == {"passed"}


def test_a_segfault_is_reported_with_its_signal(tmp_path: Path, fake_harness: Path) -> None:
    package = "import ctypes\n" + GOOD_PACKAGE.replace(
        "return x + 1", "ctypes.string_at(0) if x == 2 else None\n    return x + 1"
    )
    result = grade_fake(make_submission(tmp_path / "s", package), fake_harness)
    outcome = result.outcomes["tests/test_fake.py::test_softmax_two"]
    assert outcome.status == "error" and "SIGSEGV" in outcome.message
    assert "Fatal Python error" in outcome.message or "Segmentation fault" in outcome.message
    assert problem_scores(result) == {"linear": 1, "softmax": 0.5, "rmsnorm": 1}


def test_docstring_examples() -> None:
    import doctest

    assert doctest.testmod(grader).failed == 0


# ---------------------------------------------------------------------------------------------- worker


def test_every_graded_test_has_a_committed_time_budget() -> None:
    # A test without one gets the --timeout default (a minute): regenerate with `make timings`.
    import subprocess
    import sys

    from cs336_grading.grader import timings

    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    graded = {line.strip() for line in out.splitlines() if "::" in line and problem_of(line.strip())}
    missing = sorted(graded - set(timings.reference_seconds()))
    assert not missing, f"no committed timing for {len(missing)} graded tests (run `make timings`): {missing[:5]}"
    assert all(limit >= timings.FLOOR_S for limit in timings.limits().values())


def test_results_are_the_same_on_regrade(tmp_path: Path, fake_harness: Path) -> None:
    submission = make_submission(tmp_path / "s")
    first, second = (grade_fake(submission, fake_harness).to_gradescope() for _ in range(2))
    first.pop("execution_time"), second.pop("execution_time")
    assert first == second


@pytest.mark.slow
def test_property_tests_give_the_same_grade_every_time(tmp_path: Path) -> None:
    # A submission that is wrong on rare inputs: derandomized examples find the same ones every run.
    student = tmp_path / "student"
    shutil.copytree(REPO / "cs336_basics", student / "cs336_basics", ignore=shutil.ignore_patterns("__pycache__"))
    (student / "tests").mkdir()
    adapters = (REPO / "tests" / "adapters.py").read_text() + textwrap.dedent(
        """

        def run_cross_entropy(inputs, targets):
            loss = impl.cross_entropy(inputs, targets)
            return loss * 1.01 if inputs.shape[-1] % 7 == 3 else loss
        """
    )
    (student / "tests" / "adapters.py").write_text(adapters)
    runs = [grade(student, problems=["cross_entropy"], jobs=2).to_gradescope() for _ in range(2)]
    for run in runs:
        run.pop("execution_time")
    assert runs[0] == runs[1]
    assert runs[0]["score"] < 2


# ---------------------------------------------------------------------------------------------- audit


def test_the_static_audit_finds_nothing_in_the_reference() -> None:
    from cs336_grading.grader import audit

    assert audit.scan(REPO / "cs336_basics", REPO / "tests" / "adapters.py") == []


def test_the_static_audit_names_forbidden_uses_and_spares_allowed_ones(tmp_path: Path) -> None:
    from cs336_grading.grader import audit

    package = write_tree(
        tmp_path,
        {
            "cs336_basics/__init__.py": "",
            "cs336_basics/ok.py": textwrap.dedent(
                """
            import torch
            import torch.nn as nn
            from torch import einsum
            import torch.nn.functional as F          # an import alone is no use
            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.w = nn.Parameter(torch.empty(3, 3))
                    self.layers = nn.ModuleList([])
                    nn.init.trunc_normal_(self.w)
                def forward(self, x):
                    return torch.sigmoid(x) * torch.exp(x) + einsum("ij,jk->ik", x, self.w)
            def softmax(x, dim):                      # the student's own softmax, called by name
                return x.exp() / x.exp().sum(dim, keepdim=True)
            """
            ),
            "cs336_basics/bad.py": textwrap.dedent(
                """
            import torch
            from torch.nn.functional import scaled_dot_product_attention
            from torch import nn
            import torch.nn.functional as F
            def linear(x, w):
                return F.linear(x, w)
            layer = nn.Embedding(3, 4)
            opt = torch.optim.AdamW
            clip = torch.nn.utils.clip_grad_norm_
            """
            ),
            "tests/adapters.py": "import torch\ndef run_softmax(x, dim):\n    return torch.softmax(x, dim)\n",
        },
    )
    findings = audit.scan(package / "cs336_basics", package / "tests" / "adapters.py")
    assert {problem for problem, _ in findings} == {
        "scaled_dot_product_attention",
        "linear",
        "embedding",
        "adamw",
        "gradient_clipping",
        "softmax",
    }, findings
    assert all("ok.py" not in line for _, line in findings)
    assert ("linear", "uses torch.nn.functional.linear, cs336_basics/bad.py:7") in findings
