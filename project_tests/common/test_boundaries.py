"""The shared package sits below both wings: it imports no wing, and the assignment does not import it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_packages(package: str) -> dict[str, set[str]]:
    """{file: top-level packages it imports}, imports inside functions included."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("cs336_common", {"cs336_basics", "cs336_lab", "cs336_grading", "tests", "oracle", "bench"}),
        ("cs336_basics", {"cs336_common"}),
    ],
    ids=["common-imports-no-wing", "basics-stands-alone"],
)
def test_import_boundaries(package: str, forbidden: set[str]) -> None:
    offenders = {f: sorted(names & forbidden) for f, names in imported_packages(package).items() if names & forbidden}
    assert offenders == {}, f"expected no import of {sorted(forbidden)} in {package}/, found {offenders}"
