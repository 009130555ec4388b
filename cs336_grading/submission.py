"""A student's submission, normalised: from a directory or a `.zip` (the usual layouts) to `cs336_basics/`
and `adapters.py`, copied so that nothing the grader runs reads the student's original files.

    student = unpack_submission("alice.zip", tmp / "submission")   # Submission(package=..., adapters=...)
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "__MACOSX", ".DS_Store")


class SubmissionError(ValueError):
    """The submission is not a gradable layout (e.g. it has no `adapters.py`)."""


@dataclass(frozen=True)
class Submission:
    """A normalised copy of a student's code: `package/` (`cs336_basics`) and `adapters.py`."""

    package: Path
    adapters: Path


def unpack_submission(source: str | os.PathLike[str], dest: Path) -> Submission:
    """Copy a submission (directory or `.zip`) into `dest/` as `cs336_basics/` + `adapters.py`.

    Tolerates a top folder (`hw1/cs336_basics/...`), an `adapters.py` outside `tests/` and missing
    `__init__.py` files; a submission without a `cs336_basics/` gets an empty package. Only those two
    things are copied (a directory may be a whole checkout, virtual environment included).
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"submission {source} does not exist")
    raw = None
    if source.is_dir():
        root = source
    elif zipfile.is_zipfile(source):
        raw = dest / "raw"
        _safe_extract(source, raw)
        root = raw
    else:
        raise SubmissionError(f"expected a directory or a .zip file as submission, got {source}")
    packages, adapters = _find_submission_parts(root)
    if not adapters:
        raise SubmissionError(f"the submission {source} has no tests/adapters.py")
    package = dest / "cs336_basics"
    if packages:
        shutil.copytree(packages[0], package, ignore=IGNORED)
    else:
        package.mkdir(parents=True)
    # Without __init__.py the directory is a namespace package, and the installed reference would win.
    for directory in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        if directory == package or any(directory.glob("*.py")):
            (directory / "__init__.py").touch(exist_ok=True)
    shutil.copyfile(adapters[0], dest / "adapters.py")
    if raw is not None:
        shutil.rmtree(raw)
    return Submission(package=package, adapters=dest / "adapters.py")


def _find_submission_parts(root: Path, max_depth: int = 4) -> tuple[list[Path], list[Path]]:
    """(`cs336_basics` directories, `adapters.py` files) under `root`, the most plausible first."""
    packages: list[Path] = []
    adapters: list[Path] = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        depth = len(here.relative_to(root).parts)
        dirs[:] = sorted(
            d for d in dirs
            if depth < max_depth and not d.startswith((".", "__")) and d not in ("site-packages", "node_modules")
        )  # fmt: skip
        if here.name == "cs336_basics" and here != root:
            packages.append(here)
            dirs[:] = []  # a student's package may hold an adapters.py of its own: not the one we want
        elif "adapters.py" in files:
            adapters.append(here / "adapters.py")

    def rank(p: Path) -> tuple[bool, int, str]:
        return (p.parent.name != "tests", len(p.relative_to(root).parts), str(p))

    return sorted(packages, key=lambda p: (len(p.relative_to(root).parts), str(p))), sorted(adapters, key=rank)


def _safe_extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (dest / member.filename).resolve()
            if dest.resolve() not in target.parents and target != dest.resolve():
                raise SubmissionError(f"zip member {member.filename!r} would be extracted outside the workspace")
        zf.extractall(dest)
