"""The project's import graph: no cycle anywhere (imports inside functions included), and the layering.

    cs336_basics    the assignment: imports none of the other packages
    cs336_common    shared by the tools and the grader: imports none of cs336_basics, cs336_lab, cs336_grading
    cs336_grading   the grader: never imports cs336_basics or cs336_lab
    cs336_lab       the tools: may import all of the above (cs336_basics only through its door)

The graph is read from the ASTs, so it also sees what a test run never executes: `import` and `from ... import`
at the top of a module and inside functions, `importlib.import_module("literal")`, and the sub-command modules
that `cs336_lab.cli` imports by name (its table `COMMANDS`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cs336_basics", "cs336_common", "cs336_lab", "cs336_grading", "tests", "bench")
# package -> the packages it must never import
FORBIDDEN = {
    "cs336_basics": {"cs336_common", "cs336_lab", "cs336_grading", "tests", "bench"},
    "cs336_common": {"cs336_basics", "cs336_lab", "cs336_grading", "tests", "bench"},
    "cs336_grading": {"cs336_basics", "cs336_lab"},
}
REGISTRIES = {"COMMANDS"}  # tables of module names imported with importlib
# The grader's pytest plugin patches the harness it runs in (`tests.adapters` -> the sandboxed worker): the harness
# is its data, reached by name at run time, not code it builds on. The one edge from cs336_grading to tests.
HARNESS_HOOKS = {("cs336_grading.pytest_run.plugin", "tests")}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name of `from <node.module> import ...` written in `module` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") + (["__init__"] if path.name == "__init__.py" else [])  # `.` of a package: itself
    base = parts[: len(parts) - node.level]
    return ".".join([*base, node.module] if node.module else base)


def _named(tree: ast.AST) -> list[str]:
    """Module names given as string literals: `importlib.import_module("x")` and the registries."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if attr == "import_module" and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id in REGISTRIES for t in targets) and node.value is not None:
            names += [
                c.value
                for c in ast.walk(node.value)
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and re.fullmatch(r"\w+(\.\w+)*", c.value)
            ]
    return names


def imports(module: str, path: Path) -> list[tuple[str, ...]]:
    """Each import in `path`, anywhere in it, as its candidate module names, most specific first.

    `import a.b` gives ("a.b",), `from a import b` gives ("a.b", "a"): `b` is a submodule or a name of `a`.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, ...]] = [(name,) for name in _named(tree)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name,) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            found += [(f"{base}.{alias.name}", base) for alias in node.names]
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project's modules it imports (for each import the most specific module it names)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for candidates in imports(module, path):
            name = next((c for c in candidates if c in modules), candidates[-1])
            while name and name not in modules:  # `import a.b.function`-like names: the module that holds it
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The shortest cycle through each node that lies on one, each cycle once (starting at its least node)."""
    found = set()
    for start in sorted(graph):
        if (cycle := _shortest_cycle(graph, start)) is not None:
            turn = cycle.index(min(cycle[:-1]))
            found.add(tuple(cycle[turn:-1] + cycle[:turn] + [cycle[turn]]))
    return sorted(list(c) for c in found)


def _shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest path from `start` back to itself (breadth first), or None."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph of the top-level packages: `a -> b` when a module of `a` imports one of `b`."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        top = module.split(".")[0]
        packages.setdefault(top, set()).update(t.split(".")[0] for t in targets if t.split(".")[0] != top)
    return packages


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(_modules())


def test_the_cycle_finder_finds_cycles() -> None:
    found = cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}, "f": {"a"}})
    assert found == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert package_graph({"p.a": {"q.b"}, "q.b": {"q.c"}, "q.c": {"p.d"}, "p.d": set()}) == {"p": {"q"}, "q": {"p"}}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_imports_inside_functions_and_by_name(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (tmp_path / "pkg" / "b.py").write_text(
        "import importlib\n\ndef g():\n    return importlib.import_module('pkg.c')\n"
    )
    (tmp_path / "pkg" / "c.py").write_text("from . import a\nCOMMANDS = {'b': ('pkg.b', 'help. text')}\n")
    modules = {name: tmp_path / "pkg" / f"{name.split('.')[-1]}.py" for name in ("pkg.a", "pkg.b", "pkg.c")}
    modules["pkg"] = tmp_path / "pkg" / "__init__.py"
    graph = import_graph(modules)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a", "pkg.b"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"], ["pkg.b", "pkg.c", "pkg.b"]]


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, "import cycles (imports inside functions included):\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_cycles_between_packages(graph: dict[str, set[str]]) -> None:
    """E.g. the harness (`tests`) imports the grader's expected values: those must not import the harness."""
    packages = package_graph({m: {t for t in targets if (m, t) not in HARNESS_HOOKS} for m, targets in graph.items()})
    found = cycles(packages)
    why = [
        f"{' -> '.join(c)}: "
        + "; ".join(
            f"{m} imports {t}"
            for a, b in zip(c, c[1:])
            for m in sorted(graph)
            if m.split(".")[0] == a
            for t in sorted(graph[m])
            if t.split(".")[0] == b
        )
        for c in found
    ]
    assert not found, "import cycles between packages:\n" + "\n".join(why)


def test_layering() -> None:
    broken = []
    for module, path in _modules().items():
        forbidden = FORBIDDEN.get(module.split(".")[0], set())
        for candidates in imports(module, path):
            if candidates[-1].split(".")[0] in forbidden:
                broken.append(f"{path.relative_to(REPO)} imports {candidates[-1]}")
    assert not broken, "layering broken:\n" + "\n".join(sorted(set(broken)))
