"""The canary: a known-correct submission graded before a batch and at the start of every Gradescope run.

    seconds = check(canary_dir, settings, secret)      # CanaryError if it lost a point

A correct submission that loses a point says that the environment is broken (a lazy import that the jail
hides, a missing package, a pinned version that changed a kernel), not the students: grading stops with
an error naming the environment instead of handing out wrong grades. The canary is graded with the same
settings and secret as the students (its own held-out draws: the secret is salted with each submission's
files), so it also shows that correct work passes the held-out cases.

The canary is the reference: the installed `cs336_basics` (located, never imported) and the pristine
harness's `tests/adapters.py`. `cs336 autograder` ships it in the zip as `canary/`; the handout kit never
holds it (`handout.py` copies the grading package, and the canary is not part of the package's files).
`cs336 grade DIR --out-dir OUT` grades it first (`--canary DIR` names another one, `--no-canary` skips it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from cs336_grading.grader.report import GraderError, GradeResult

CANARY_DIR = "canary"  # in the autograder zip: canary/cs336_basics/..., canary/tests/adapters.py
_SKIPPED = ("__pycache__", ".pyc")


class CanaryError(GraderError):
    """The known-correct canary lost points (or could not be graded) in this environment."""


def reference_files(harness_adapters: bytes) -> dict[str, bytes]:
    """The canary's files (`cs336_basics/...`, `tests/adapters.py`): the installed reference package."""
    spec = importlib.util.find_spec("cs336_basics")  # NOTE: finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise CanaryError(
            "no canary: the reference package cs336_basics is not installed (pass --canary DIR or --no-canary)"
        )
    package = Path(list(spec.submodule_search_locations)[0])
    files = {
        "cs336_basics/" + p.relative_to(package).as_posix(): p.read_bytes()
        for p in sorted(package.rglob("*"))
        if p.is_file() and not any(part in _SKIPPED or part.endswith(_SKIPPED) for part in p.relative_to(package).parts)
    }
    return files | {"tests/adapters.py": harness_adapters}


def lay_out(directory: Path, files: dict[str, bytes]) -> Path:
    """Write the canary's `files` under `directory`; returns it."""
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return directory


def environment() -> str:
    """One line naming the grader's environment: Python, its prefix, torch, the system."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return (
        f"Python {platform.python_version()} at {sys.executable} (prefix {sys.prefix}), torch {torch_version}, "
        f"{platform.platform()}, user {os.geteuid()}"
    )


def check(canary: str | os.PathLike[str], settings: dict[str, Any], secret: str | None) -> float:
    """Grade the canary with `settings` (grade()'s keywords) and `secret`; its seconds, else CanaryError."""
    from cs336_grading.grader.grade import grade  # NOTE: grade imports batch, which imports this module

    t0 = time.monotonic()
    try:
        result = grade(canary, **settings, secret=secret)
    except (GraderError, OSError, ValueError) as e:
        raise CanaryError(_message(f"could not be graded ({type(e).__name__}: {e})")) from e
    if result.score < result.max_score:
        raise CanaryError(_message(f"scored {result.score:.2f} / {result.max_score:g}", result))
    return time.monotonic() - t0


def _message(what: str, result: GradeResult | None = None) -> str:
    lost = []
    if result is not None:
        lost = [
            f"{o.nodeid}: {o.status} ({o.message[:200]})"
            for o in result.outcomes.values()
            if o.status not in ("passed", "skipped", "advisory")
        ][:3]
    return (
        f"the canary (a known-correct submission) {what} in this grading environment: {environment()}. "
        "The environment, not the students, is at fault; no submission was graded. "
        + (f"First losses: {'; '.join(lost)}. " if lost else "")
        + "Fix the environment (see README, For graders), or skip the check with --no-canary."
    )
