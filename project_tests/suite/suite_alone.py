"""Run one graded check against one mutant in a process of its own: `python -m project_tests.suite.suite_alone`.

A memory check measures how far the peak resident memory grows while the submission runs. In a long pytest
process, memory that earlier tests freed but the allocator kept can absorb a whole-file read without any
growth, so a mutant that reads everything first would pass by luck of the order. Here the check runs in a
fresh interpreter whose history is only the imports, the way the grader runs each test in a fresh worker.
The outcome is one JSON line on stdout: {"outcome": "failed" | "passed" | "error", "message": ...}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from project_tests.suite.suite_checks import CHECKS, Fixtures, patch_adapters
from project_tests.suite.suite_corpus import MUTANTS


def outcome(label: str, fx: Fixtures, crash_ok: bool = True) -> dict[str, str]:
    """The outcome of the graded check `label` with the adapters as they are patched now; an error other than
    a failed check is raised again unless `crash_ok` (then it is reported as "error")."""
    try:
        CHECKS[label](fx)
    except (AssertionError, pytest.fail.Exception) as error:
        return {"outcome": "failed", "message": str(error)}
    except Exception as error:  # noqa: BLE001 - a crash proves nothing about the tolerances, except for stubs
        if not crash_ok:
            raise
        return {"outcome": "error", "message": f"{type(error).__name__}: {error}"}
    return {"outcome": "passed", "message": ""}


def run(name: str, label: str, tmp: Path) -> dict[str, str]:
    """The outcome of the graded check `label` with mutant `name`'s adapters swapped in."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        patch_adapters(monkeypatch, MUTANTS[name].adapters)
        return outcome(label, Fixtures(tmp, {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mutant", choices=sorted(MUTANTS))
    parser.add_argument("check")
    parser.add_argument("tmp", type=Path)
    args = parser.parse_args()
    print(json.dumps(run(args.mutant, args.check, args.tmp)))


if __name__ == "__main__":
    main()
