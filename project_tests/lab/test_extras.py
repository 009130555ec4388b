"""`cs336` with the runtime dependencies only: every `--help` works, and a command whose extra is missing exits 2
with one line naming it. A missing package is simulated in a fresh interpreter by a meta-path finder that fails
its import (the way `import pytest` fails where the `grading` extra is not installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from cs336_lab.cli import COMMANDS
from cs336_lab.errors import EXTRAS

REPO = Path(__file__).resolve().parents[2]
EXTRA_MODULES = sorted({m for modules in EXTRAS.values() for m in modules} | {"tokenizers", "psutil"})
# The machinery `cs336 --help` must not import: the model's, the grader's, the plots'.
MACHINERY = [
    "torch",
    "numpy",
    "matplotlib",
    "cs336_basics",
    "cs336_grading.grader.grade",
    "cs336_grading.pytest_run",
    "cs336_grading.worker",
]
# The commands whose own module is light: their --help imports none of MACHINERY either. (train, generate, evaluate,
# accounting are the trainer's and the model's modules, grade the grader's, similarity the similarity measure's:
# their --help imports torch or numpy, runtime dependencies.)
LIGHT = ["demo", "train-bpe", "tokenize", "make-corpus", "download", "compare", "sweep", "handout", "autograder"]

PROGRAM = """
import importlib.abc, json, sys

BLOCKED = set(sys.argv[1].split(","))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from cs336_lab.cli import main

codes = {}
for argv in json.loads(sys.argv[2]):
    try:
        codes[" ".join(argv)] = main(argv)
    except SystemExit as exit_:
        codes[" ".join(argv)] = exit_.code
print(json.dumps(codes))
"""


def _run(blocked: list[str], *argvs: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, ",".join(blocked), json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd or REPO,
    )


def _codes(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_help_works_without_the_extras() -> None:
    argvs = [["--help"], *([command, "--help"] for command in COMMANDS)]
    codes = _codes(_run(EXTRA_MODULES, *argvs))
    assert codes == {" ".join(argv): 0 for argv in argvs}


def test_the_help_imports_no_machinery() -> None:
    argvs = [["--help"], *([command, "--help"] for command in LIGHT)]
    codes = _codes(_run(MACHINERY + EXTRA_MODULES, *argvs))
    assert codes == {" ".join(argv): 0 for argv in argvs}


def test_a_command_without_its_extra_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "submission").mkdir()
    argvs = [
        ["grade", str(tmp_path / "submission"), "--out", str(tmp_path / "results.json")],
        ["handout", str(tmp_path / "kit")],
    ]
    result = _run(["pytest"], *argvs, cwd=tmp_path)
    assert _codes(result) == {" ".join(argv): 2 for argv in argvs}
    assert result.stderr.splitlines() == [
        "cs336 grade needs the 'grading' extra: pip install 'cs336-basics[grading]'",
        "cs336 handout needs the 'grading' extra: pip install 'cs336-basics[grading]'",
    ]
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "kit").exists()


def test_the_extras_of_the_cli_are_those_of_pyproject() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(declared)
    assert {extra for _, _, extra in COMMANDS.values()} - {None} <= set(declared)
    for extra, modules in EXTRAS.items():  # each module the CLI checks is a distribution of the extra
        names = {d.split(">")[0].split("=")[0].split("[")[0].replace("-", "_") for d in declared[extra]}
        assert set(modules) <= names, extra
    assert "cs336-basics[grading]" in declared["dev"]


def test_docstring_examples() -> None:
    import doctest

    from cs336_lab import errors

    assert doctest.testmod(errors).failed == 0
