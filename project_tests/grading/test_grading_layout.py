"""The grading wing reads as its processes: no import cycles, a student side that imports none of the grader,
a fork server that has never imported grader code, and one home for the CS336_* environment contract."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cs336_grading"
TRUSTED = ("cs336_grading.grader", "cs336_grading.pytest_run", "cs336_grading.staff", "cs336_grading.cli")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the package that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found |= {name for name in names if name in modules}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_the_grading_wing_has_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycle(graph) is None, f"an import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_student_side_imports_nothing_of_the_grader() -> None:
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("cs336_grading.worker"):
            trusted = sorted(m for m in _imports(path, modules) if m.startswith(TRUSTED))
            assert trusted == [], f"{name} imports {trusted}: the student side must not hold grader code"


def test_the_fork_server_has_never_imported_grader_code() -> None:
    code = "import sys, cs336_grading.worker.server; print('\\n'.join(m for m in sys.modules if m.startswith('cs336_grading')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    names = loaded.stdout.split()
    assert "cs336_grading.worker.server" in names
    assert [m for m in names if m.startswith(TRUSTED)] == [], names


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")))
def test_every_cs336_variable_is_named_in_env_py(path: str) -> None:
    if path == "cs336_grading/env.py":
        return
    text = (REPO / path).read_text()
    defined = re.findall(r"^\s*[A-Z_]+\s*=\s*[\"']CS336_[A-Z_]+[\"']", text, flags=re.M)
    read = re.findall(r"environ(?:\.get)?\(?\[?\s*[\"'](CS336_[A-Z_]+)", text)
    assert defined == [] and read == [], (
        f"{path} names CS336_* variables itself ({defined or read}): use cs336_grading.env"
    )


def test_env_py_lists_every_variable_it_defines() -> None:
    text = (PACKAGE / "env.py").read_text()
    doc, _, code = text.partition('"""\n\nfrom __future__')
    for name in re.findall(r'= "(CS336_[A-Z_]+)"', code):
        assert f"`{name}`" in doc, f"{name} is defined in env.py but missing from its table"
