"""The student starter kit (`cs336_grading.staff.handout`): stub adapters, layout, and that it fails the right way.

The slow tests run the kit's whole test suite (against its empty package) and grade it: every graded
test must fail with `NotImplementedError`, none with an import or missing-file error, and none may pass.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cs336_grading.grader.grade import grade, problem_of
from cs336_grading.staff import handout
from cs336_grading.staff.handout import MARKER, build_handout, stub_adapters

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One handout built from this checkout, shared by the module's tests (read-only use)."""
    return build_handout(tmp_path_factory.mktemp("kit") / "handout")


def functions(source: str) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}


# ---------------------------------------------------------------------------------------------- stubs


def test_stubbed_adapters_keep_every_signature_and_docstring() -> None:
    source = (REPO / "tests" / "adapters.py").read_text()
    original, stubbed = functions(source), functions(stub_adapters(source))
    assert list(stubbed) == list(original) and original
    for name, fn in stubbed.items():
        assert ast.dump(fn.args) == ast.dump(original[name].args), name
        assert ast.dump(fn.returns) == ast.dump(original[name].returns) if fn.returns else True, name
        assert ast.get_docstring(fn) == ast.get_docstring(original[name]), name
        body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
        assert [ast.unparse(s) for s in body] == ["raise NotImplementedError"], name


def test_stubbed_adapters_drop_only_the_reference_imports() -> None:
    source = (REPO / "tests" / "adapters.py").read_text()
    tree = ast.parse(stub_adapters(source))
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any(name.startswith("cs336_basics") for name in imported)
    assert "torch" in imported  # annotations still need the other imports


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f(x): return x\n", "def f(x): raise NotImplementedError\n"),
        ("async def f():\n    await g()\n    return 1\n", "async def f():\n    raise NotImplementedError\n"),
        (
            'def f():\n    """Only a docstring."""\n',
            'def f():\n    """Only a docstring."""\n    raise NotImplementedError\n',
        ),
        (
            "from cs336_basics.model import TransformerLM\nimport os\n\n"
            "@deco\ndef f(a: 'é' = 1) -> int:\n    # how\n    return TransformerLM(a)\n",
            "import os\n\n@deco\ndef f(a: 'é' = 1) -> int:\n    # how\n    raise NotImplementedError\n",
        ),
        (
            'def f():\n    """Doc."""\n    # a hint that must go\n    x = 1\n    return x\n\n\nX = 1  # kept\n',
            'def f():\n    """Doc."""\n    raise NotImplementedError\n\n\nX = 1  # kept\n',
        ),
    ],
    ids=["one-line", "async", "docstring-only", "decorated-unicode-import", "comment-in-body"],
)
def test_stub_adapters_edge_cases(source: str, expected: str) -> None:
    assert stub_adapters(source) == expected


def test_stub_adapters_refuses_module_level_use_of_the_reference() -> None:
    with pytest.raises(ValueError, match="impl"):
        stub_adapters("import cs336_basics as impl\n\nLinear = impl.Linear\n")


# ---------------------------------------------------------------------------------------------- layout


def test_handout_layout(kit: Path) -> None:
    tests = REPO / "tests"
    expected = {
        str(p.relative_to(tests))
        for p in tests.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".hypothesis" not in p.parts
    } - {"test_snapshots.py"}  # the maintainers' drift check stays out of the kit
    copied = {str(p.relative_to(kit / "tests")) for p in (kit / "tests").rglob("*") if p.is_file()}
    assert copied == expected
    for rel in expected - {"adapters.py"}:
        assert (kit / "tests" / rel).read_bytes() == (tests / rel).read_bytes(), rel
    assert [p.name for p in (kit / "cs336_basics").iterdir()] == ["__init__.py"]
    assert not (kit / "project_tests").exists()
    assert {
        "Makefile",
        "README.md",
        "pyproject.toml",
        "cs336_basics",
        "cs336_common",
        "cs336_lab",
        "cs336_grading",
        "tests",
    } <= {p.name for p in kit.iterdir()}
    # The answer key never ships: no oracle anywhere in the kit, and no harness copy inside the grading package.
    assert not [p for p in kit.rglob("*oracle*")] and not (kit / "cs336_grading" / "harness").exists()


def test_handout_pyproject_has_the_reference_dependencies(kit: Path) -> None:
    ours = tomllib.loads((REPO / "pyproject.toml").read_text())
    theirs = tomllib.loads((kit / "pyproject.toml").read_text())
    assert theirs["project"]["dependencies"] == ours["project"]["dependencies"]
    # The kit's `dev` extra is what its graded suite needs: the project's `grading` extra.
    assert theirs["project"]["optional-dependencies"] == {"dev": ours["project"]["optional-dependencies"]["grading"]}
    # The kit's tests register their own markers (conftest.py), so its pytest settings need no copy of ours.
    assert theirs["project"]["scripts"] == {"cs336": "cs336_lab.cli:main"}  # students train with the tools
    assert theirs["tool"]["setuptools"]["package-dir"] == {
        "cs336_grading.harness": "tests",
        "cs336_grading.docs": "docs",
    }


def test_the_kit_carries_the_adapter_contract(kit: Path) -> None:
    assert (kit / "docs" / "INTERFACE.md").read_bytes() == (REPO / "docs" / "INTERFACE.md").read_bytes()
    assert [p.name for p in (kit / "docs").iterdir()] == ["INTERFACE.md"]  # the contract, not our lab notes
    assert not (kit / "cs336_grading" / "docs").exists()


def test_handout_makefile_has_only_student_targets(kit: Path) -> None:
    makefile = (kit / "Makefile").read_text()
    targets = {
        line.split(":")[0]
        for line in makefile.splitlines()
        if line and not line[0].isspace() and ":" in line and "=" not in line
    }
    # `make grade` grades the kit itself, exactly as the staff do (same worker, limits, points and report).
    assert {"install", "test", "submission", "grade"} <= targets
    assert "cs336 grade .\n" in makefile
    assert not targets & {"handout", "demo", "snapshots", "bench", "timings"}
    assert "\n\t" in makefile  # recipes are tab-indented


def test_rebuilding_replaces_an_untouched_handout_but_never_another_directory(tmp_path: Path) -> None:
    out = build_handout(tmp_path / "kit")
    (out / "cs336_basics" / "__pycache__").mkdir()
    (out / "cs336_basics" / "__pycache__" / "x.pyc").write_bytes(b"cache")  # caches are not the student's work
    marker = (out / MARKER).read_text()
    assert build_handout(out) == out and (out / MARKER).read_text() == marker
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a handout"):
        build_handout(precious)
    assert (precious / "notes.txt").read_text() == "keep" and not (precious / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kit", "precious"]  # no staging left behind


def test_the_cli_never_erases_a_students_work_in_a_handout(tmp_path: Path) -> None:
    """Issue 23, case 1: `cs336 handout DIR` over a kit a student worked in used to replace it (rc 0)."""
    out = build_handout(tmp_path / "kit")
    (out / "cs336_basics" / "model.py").write_text("class Linear: ...\n")
    adapters = (out / "tests" / "adapters.py").read_text().replace("raise NotImplementedError", "return 1", 1)
    (out / "tests" / "adapters.py").write_text(adapters)
    (out / "README.md").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    done = subprocess.run(
        [sys.executable, "-m", "cs336_lab.cli", "handout", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "changed tests/adapters.py" in lines[0] and "added cs336_basics/model.py" in lines[0]
    assert "removed README.md" in lines[0] and str(out) in lines[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kit"]  # no staging left behind


def test_cli_builds_the_handout(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    handout.add_subcommand(parser.add_subparsers())
    args = parser.parse_args(["handout", str(tmp_path / "kit")])
    assert args.func(args) == 0 and (tmp_path / "kit" / MARKER).exists()
    (tmp_path / "other").mkdir()
    args = parser.parse_args(["handout", str(tmp_path / "other")])
    assert args.func(args) == 2


# ---------------------------------------------------------------------------------------------- behaviour


def kit_env(kit: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(kit)  # the kit's empty package shadows the installed reference
    return env


def test_the_kit_imports_its_own_empty_package(kit: Path) -> None:
    code = "import cs336_basics, tests.adapters as a; print(cs336_basics.__file__, hasattr(cs336_basics, 'Linear'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=kit, env=kit_env(kit), capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(kit / "cs336_basics" / "__init__.py"), "False"]


@pytest.mark.slow
def test_every_graded_test_of_the_kit_fails_with_not_implemented(kit: Path, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", f"--junitxml={report}"],
        cwd=kit,
        env=kit_env(kit),
        capture_output=True,
        text=True,
        timeout=900,
    )
    cases = list(ET.parse(report).iter("testcase"))
    wrong: list[str] = []
    graded = 0
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if case.get("name") is None or problem_of(name) is None or case.find("skipped") is not None:
            if problem is not None and case.find("failure") is None:
                wrong.append(f"{name}: {problem.get('message')}")  # a collection error anywhere is wrong
            continue
        graded += 1
        message = "passed" if problem is None else (problem.get("message") or "")
        if not message.startswith("NotImplementedError"):
            wrong.append(f"{name}: {message.splitlines()[0] if message else '?'}")
    assert graded > 0
    assert not wrong, "graded tests of the kit that do not fail with NotImplementedError:\n" + "\n".join(wrong)


@pytest.mark.slow
def test_grading_the_kit_scores_zero(kit: Path) -> None:
    result = grade(kit, harness=kit / "tests", timeout=120.0)
    # An advisory test (0 points) is reported as "advisory" with its own outcome in the message.
    statuses = {
        "not_implemented" if o.status == "advisory" and o.message.startswith("NOT IMPLEMENTED") else o.status
        for o in result.outcomes.values()
    }
    assert statuses <= {"not_implemented", "skipped"} and "not_implemented" in statuses, result.format_table()
    for p in result.problems:
        assert p.score == 0, result.format_table()
    assert result.score == 0, result.format_table()


def test_docstring_examples() -> None:
    import doctest

    assert doctest.testmod(handout).failed == 0


# ------------------------------------------------------------------------- issue 23: the kit explains itself


def _kit_pytest(kit: Path, *selection: str) -> subprocess.CompletedProcess:
    """Run the kit's tests with the pytest options of its `make test` (read with `make -n`), as a student would."""
    plan = subprocess.run(["make", "-n", "test", "TESTS="], cwd=kit, capture_output=True, text=True, check=True)
    line = next(x for x in plan.stdout.splitlines() if " -m pytest " in x)
    argv = [sys.executable, "-m", "pytest", *line.split(" -m pytest ")[1].split(), *selection]
    return subprocess.run(argv, cwd=kit, env=kit_env(kit), capture_output=True, text=True, timeout=600)


def test_make_test_prints_short_tracebacks_without_the_comparison_helpers_frames(kit: Path, tmp_path: Path) -> None:
    """One failed comparison printed 40 lines of `assert_close`; a failure now shows the test's line and the
    message only: the helper hides its frame (`__tracebackhide__`) and `make test` asks for short tracebacks."""
    probe = kit / "tests" / "test_zz_probe.py"
    probe.write_text(
        "import torch\nfrom tests.compare import assert_close\n\n\n"
        "def test_probe():\n    assert_close(torch.ones(3), torch.zeros(3).numpy(), tol=1e-6, what='probe')\n"
    )
    try:
        done = _kit_pytest(kit, "tests/test_zz_probe.py")
    finally:
        probe.unlink()
    out = done.stdout + done.stderr
    assert "probe: 3 of 3 elements differ" in out, out
    assert "expected_t = torch.as_tensor" not in out and "def assert_close" not in out, out  # the helper's body
    failure = out[out.index("test_probe") : out.index("short test summary")] if "short test summary" in out else out
    assert len(failure.splitlines()) <= 12, out


def test_a_skip_names_no_path_outside_the_kit(kit: Path) -> None:
    done = _kit_pytest(kit, "tests/test_tokenizer.py", "-k", "gpt2", "-rs")
    skips = [line for line in (done.stdout + done.stderr).splitlines() if "SKIPPED" in line]
    assert skips, done.stdout[-2000:]
    outside = str(kit.parent)
    for line in skips:
        message = line.split(": ", 1)[-1]
        assert outside not in message and "shared/data" not in message, line


def test_make_submission_keeps_tests_adapters_py_at_its_path(kit: Path, tmp_path: Path) -> None:
    import shutil
    import zipfile

    work = tmp_path / "kit"
    shutil.copytree(kit, work)
    (work / "cs336_basics" / "__pycache__").mkdir(exist_ok=True)
    (work / "cs336_basics" / "__pycache__" / "x.pyc").write_bytes(b"")
    subprocess.run(["make", "submission", f"PYTHON={sys.executable}"], cwd=work, check=True, capture_output=True)
    names = zipfile.ZipFile(work / "submission.zip").namelist()
    assert "tests/adapters.py" in names and "adapters.py" not in names, names
    assert "cs336_basics/__init__.py" in names and not any("__pycache__" in n for n in names), names


def test_a_failing_property_test_does_not_print_the_whole_vocabulary(kit: Path) -> None:
    """Hypothesis prints a failing example's arguments: the tokenizer tests' (vocab, merges) fixture filled 1,070
    lines per failure, 3,200 of a first `make test`'s 10,300 lines. It now prints as one line."""
    selection = "encode_iterable_any_chunking or matches_tiktoken_random_text or decode_roundtrip_arbitrary_unicode"
    done = _kit_pytest(kit, "tests/test_tokenizer.py", "-k", selection)
    out = done.stdout + done.stderr
    assert out.count("NotImplementedError") >= 3, out[-2000:]
    assert len(out.splitlines()) < 100, f"{len(out.splitlines())} lines:\n{out[:3000]}"


@pytest.mark.slow
def test_a_first_make_test_of_the_kit_is_short(kit: Path) -> None:
    """Every graded test fails at first: 10,327 lines before issue 23, about 1,500 now (154 failures)."""
    done = _kit_pytest(kit, "tests")
    lines = (done.stdout + done.stderr).splitlines()
    assert "failed" in lines[-1], lines[-5:]
    assert len(lines) < 2_500, len(lines)
