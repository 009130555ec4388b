"""Build the student starter kit: `cs336 handout OUT`.

The kit holds the pristine grading tests (with their snapshots and fixtures, never the oracle), a
`tests/adapters.py` whose functions keep the reference's signatures and docstrings but raise
`NotImplementedError`, an empty `cs336_basics` package, copies of the tools (`cs336_lab`), the grading
wing (`cs336_grading`) and the helpers they share (`cs336_common`), the adapter contract `docs/INTERFACE.md`,
a `pyproject.toml` with the same dependencies, and the student `Makefile` and `README.md` from
`handout_files/`. In the kit `make test` runs, and every graded test fails with
`NotImplementedError` (never with an import or a missing-file error).

Everything comes from the installed packages (the harness is `cs336_grading.harness`, the contract
`cs336_grading/docs/INTERFACE.md`), so the kit can be built from an installed wheel as well as from a checkout.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Collection
from pathlib import Path

HANDOUT_FILES = Path(__file__).resolve().parent / "handout_files"
# Marks a directory this module built, with the SHA-256 of every file it wrote: a rebuild replaces the kit only
# while every file in it is still exactly what was written (a student's work is never erased).
MARKER = ".cs336-handout"
MANIFEST_FORMAT = "cs336-handout-manifest"
# Caches that tools make in a kit and remake at will: never the student's work, ignored by the manifest check.
_CACHES = frozenset({"__pycache__", ".pytest_cache", ".hypothesis"})
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
# Never in the kit, even if left inside the package: the course secret and the canary (`heldout.py`, `canary.py`).
_STAFF_ONLY = shutil.ignore_patterns("harness", "docs", "*.pyc", "__pycache__", "grading-secret", "*.secret", "canary")
_PACKAGE = "cs336_basics"
PACKAGE_INIT = '"""CS336 Assignment 1: your implementation goes here."""\n'  # the kit's whole package
# The kit carries the tools and the grading wing, so that a student can train with `cs336 train` and see
# the staff's grade with `make grade`; the oracle (the maintainers' answer key) is never part of it.
_TOOL_PACKAGES = ("cs336_common", "cs336_lab", "cs336_grading")  # cs336_common: what the other two share
_SUBPACKAGES = (
    "cs336_grading.handout_files",
    "cs336_grading.expected",
    "cs336_grading.harness",
    "cs336_grading.harness._snapshots",
    "cs336_grading.harness.fixtures",
    "cs336_grading.docs",
)

log = logging.getLogger(__name__)


def stub_adapters(source: str) -> str:
    """Replace the body of every top-level function by `raise NotImplementedError`.

    Signatures, annotations, decorators, docstrings, comments outside function bodies and imports stay
    as written; imports of `cs336_basics` go, since the student's package starts empty.

    >>> print(stub_adapters('import cs336_basics as impl\\n\\ndef f(x: int):\\n    "Doc."\\n    return impl.f(x)\\n'))
    <BLANKLINE>
    def f(x: int):
        "Doc."
        raise NotImplementedError
    <BLANKLINE>
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(lineno: int, col: int) -> int:
        # ast columns count UTF-8 bytes; convert within the line.
        return starts[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), non-overlapping
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first, last = node.body[0], node.body[-1]
            end = offset(last.end_lineno or last.lineno, last.end_col_offset or 0)
            if ast.get_docstring(node, clean=False) is not None:
                if len(node.body) == 1:
                    edits.append((end, end, "\n" + " " * first.col_offset + "raise NotImplementedError"))
                else:
                    start = offset(first.end_lineno or first.lineno, first.end_col_offset or 0)
                    edits.append((start, end, "\n" + " " * first.col_offset + "raise NotImplementedError"))
            else:
                edits.append((offset(first.lineno, first.col_offset), end, "raise NotImplementedError"))
        elif isinstance(node, ast.Import | ast.ImportFrom) and _imports_package(node):
            start = starts[node.lineno - 1]
            edits.append((start, starts[node.end_lineno or node.lineno], ""))
    out = source
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    out = re.sub(r"\n{4,}", "\n\n\n", out)  # a removed import may leave three blank lines
    stubbed = ast.parse(out)  # still valid Python
    leftover = sorted({n.id for n in ast.walk(stubbed) if isinstance(n, ast.Name) and n.id in _bound_names(tree)})
    if leftover:
        raise ValueError(f"expected no use of the reference package outside function bodies, found {leftover}")
    return out


def _imports_package(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == _PACKAGE
    return any(alias.name.split(".")[0] == _PACKAGE for alias in node.names)


def _bound_names(tree: ast.Module) -> set[str]:
    """Names that the module's imports of the reference package bind (e.g. `impl`)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) and _imports_package(node):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def student_pyproject(*, dependencies: list[str], dev: list[str], requires_python: str) -> str:
    """The kit's `pyproject.toml`: the project's dependencies, the three wings and the `cs336` command.

    The student's `cs336_basics` (empty at first) sits beside copies of the tools (`cs336_lab`: `cs336 train`,
    `cs336 generate`, ...) and the grading wing (`cs336_grading`: `make grade`); the kit's `tests/` doubles
    as the grading package's harness, exactly as in the project.
    """

    def value(v: object) -> str:
        if isinstance(v, list):
            return "[\n" + "".join(f"    {value(item)},\n" for item in v) + "]"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        raise TypeError(f"expected a string or a list in pyproject.toml, got {v!r}")

    lines = [
        "[build-system]",
        'requires = ["setuptools>=68", "wheel"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        'name = "cs336-basics"',
        'version = "1.0.0"',
        f"requires-python = {value(requires_python)}",
        f"dependencies = {value(dependencies)}",
        "",
        "[project.optional-dependencies]",
        f"dev = {value(dev)}",
        "",
        "[project.scripts]",
        'cs336 = "cs336_lab.cli:main"',
        "",
        "[tool.setuptools]",
        f"packages = {value([_PACKAGE, *_TOOL_PACKAGES, *_SUBPACKAGES])}",
        "",
        "[tool.setuptools.package-dir]",
        '"cs336_grading.harness" = "tests"',
        '"cs336_grading.docs" = "docs"',
        "",
        "[tool.setuptools.package-data]",
        '"cs336_grading" = ["timings.json"]',
        '"cs336_grading.handout_files" = ["Makefile", "README.md"]',
        '"cs336_grading.harness" = ["*.py"]',
        '"cs336_grading.harness._snapshots" = ["*.npz"]',
        '"cs336_grading.harness.fixtures" = ["*.txt"]',
        '"cs336_grading.docs" = ["INTERFACE.md"]',
        "",
        "[tool.pytest.ini_options]",
        'addopts = "-ra"',
    ]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # NOTE: a value our tiny writer cannot express fails here, not at install
    return text


def _installed_requirements() -> tuple[list[str], list[str], str]:
    """(dependencies, the kit's dev extra, requires-python) of the installed `cs336-basics` distribution.

    The kit's `dev` extra is the project's `grading` extra: what the graded suite needs to run.
    """
    meta = importlib.metadata.metadata("cs336-basics")
    requires = importlib.metadata.requires("cs336-basics") or []
    base = [r for r in requires if "extra ==" not in r]
    dev = [r.split(";")[0].strip() for r in requires if 'extra == "grading"' in r.replace("'", '"')]
    return base, dev, meta.get("Requires-Python") or ">=3.11"


def interface_doc() -> Path:
    """The adapter contract `docs/INTERFACE.md`: in a wheel the package data `cs336_grading/docs/`, in a checkout
    the project's `docs/`."""
    package = Path(__file__).resolve().parents[1]
    candidates = (package / "docs" / "INTERFACE.md", package.parent / "docs" / "INTERFACE.md")
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"expected the adapter contract at {' or '.join(map(str, candidates))}, found none")
    return found


def _package_dir(name: str) -> Path:
    """Where the installed package `name` lives (a checkout in editable mode, site-packages otherwise)."""
    return Path(importlib.import_module(name).__file__).resolve().parent  # type: ignore[arg-type]


def build_handout(out: str | os.PathLike[str], *, harness: str | os.PathLike[str] | None = None) -> Path:
    """Write the starter kit to `out` (atomically: built beside it, then renamed into place).

    `harness` is the pristine tests directory (default: the one installed with this package). An existing
    `out` is replaced only if an earlier `build_handout` made it and nobody changed it since (`_check_untouched`).
    """
    from cs336_grading.grader.grade import default_harness

    tests = Path(harness) if harness is not None else default_harness()
    for required in (tests / "adapters.py", tests / "conftest.py"):
        if not required.is_file():
            raise FileNotFoundError(f"expected {required} in the grading harness, found none")
    out = Path(out).resolve()
    if out.exists():
        _check_untouched(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private
    try:
        _write_kit(staging, tests)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_kit(root: Path, tests: Path) -> None:
    shutil.copytree(tests, root / "tests", ignore=_IGNORED)  # adapters.py is overwritten next
    (root / "tests" / "adapters.py").write_text(stub_adapters((tests / "adapters.py").read_text()))
    (root / _PACKAGE).mkdir()
    (root / _PACKAGE / "__init__.py").write_text(PACKAGE_INIT)
    for name in _TOOL_PACKAGES:
        # NOTE: an installed grading package carries its harness and docs inside; the kit's tests/ and docs/ take that role.
        shutil.copytree(_package_dir(name), root / name, ignore=_STAFF_ONLY)
    dependencies, dev, requires_python = _installed_requirements()
    (root / "pyproject.toml").write_text(
        student_pyproject(dependencies=dependencies, dev=dev, requires_python=requires_python)
    )
    for name in ("Makefile", "README.md"):
        shutil.copyfile(HANDOUT_FILES / name, root / name)
    (root / "docs").mkdir()
    shutil.copyfile(interface_doc(), root / "docs" / "INTERFACE.md")
    (root / ".gitignore").write_text(
        ".venv/\n__pycache__/\n*.egg-info/\n.pytest_cache/\n.hypothesis/\nsubmission.zip\n"
    )
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "files": _file_hashes(root)}
    (root / MARKER).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _file_hashes(root: Path, only: Collection[str] | None = None) -> dict[str, str]:
    """SHA-256 of every file under `root` (relative POSIX path -> hex digest), caches and the marker left out.

    Files outside `only` (when given) are listed with an empty digest, unread (a student's .venv is large).
    A symbolic link counts as a file whose "digest" names its target, so it never matches a written file.
    """
    hashes: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _CACHES and not d.endswith(".egg-info")]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if relative == MARKER:
                continue
            if path.is_symlink():
                hashes[relative] = f"link -> {os.readlink(path)}"
            elif only is not None and relative not in only:
                hashes[relative] = ""
            else:
                hashes[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _check_untouched(out: Path) -> None:
    """`FileExistsError` unless `out` is a kit that `build_handout` wrote and nobody changed since."""
    try:
        manifest = json.loads((out / MARKER).read_text(encoding="utf-8"))
        written = manifest["files"] if manifest.get("format") == MANIFEST_FORMAT else None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        written = None
    if not isinstance(written, dict):
        what = (
            "an older handout without a manifest"
            if (out / MARKER).is_file()
            else "not a handout built by `cs336 handout`"
        )
        raise FileExistsError(
            f"{out} exists and is {what}: expected an unchanged kit to replace; choose another "
            "path, or move it away yourself"
        )
    found = _file_hashes(out, only=written)
    changed = sorted(k for k in found.keys() & written.keys() if found[k] != written[k])
    added = sorted(found.keys() - written.keys())
    removed = sorted(written.keys() - found.keys())
    if changed or added or removed:
        parts = [
            f"{what} {', '.join(names[:5])}{f' and {len(names) - 5} more' if len(names) > 5 else ''}"
            for what, names in (("changed", changed), ("added", added), ("removed", removed))
            if names
        ]
        raise FileExistsError(
            f"{out} is a handout someone worked in ({'; '.join(parts)}): expected the kit as "
            "`cs336 handout` wrote it; nothing was replaced: choose another path, or move it away"
        )


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "handout",
        help="build the student starter kit (tests, fixtures, stub adapters, empty package)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("out", nargs="?", default="build/handout", help="output directory (default: build/handout)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        out = build_handout(args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        log.error("%s", e)
        return 2
    log.info("wrote the student handout to %s (`make test` there: every test fails with NotImplementedError)", out)
    return 0
