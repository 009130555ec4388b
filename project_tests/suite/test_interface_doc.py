"""The adapter contract `docs/INTERFACE.md` and the graded suite's `tests/adapters.py` cannot drift: every adapter
is in the contract's table and the table names no other; every file that cites the contract cites it by path."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "docs" / "INTERFACE.md"


def adapters() -> list[str]:
    """The public functions of `tests/adapters.py`, in order."""
    tree = ast.parse((REPO / "tests" / "adapters.py").read_text(encoding="utf-8"))
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]


def documented(text: str) -> list[str]:
    """The adapters of the contract's table (`| adapter | parameters (in order) | returns |`), in order."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| adapter | parameters"))
    names = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.append(re.fullmatch(r"\| `(\w+)` \|.*", line).group(1))  # type: ignore[union-attr]
    return names


def test_the_table_reader_reads_a_table() -> None:
    text = "x\n| adapter | parameters (in order) | returns |\n|---|---|---|\n| `run_a` | `x` | y |\n| `b` | | |\n\nmore"
    assert documented(text) == ["run_a", "b"]


def test_every_adapter_is_documented_and_nothing_else() -> None:
    ours, doc = adapters(), documented(CONTRACT.read_text(encoding="utf-8"))
    assert len(ours) >= 20  # the reader found the adapters
    assert sorted(set(ours) - set(doc)) == [], "adapters of tests/adapters.py missing from docs/INTERFACE.md"
    assert sorted(set(doc) - set(ours)) == [], "docs/INTERFACE.md documents adapters tests/adapters.py lacks"
    assert len(doc) == len(set(doc))


def test_every_citation_of_the_contract_is_by_path() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    bare = []
    for name in files:
        path = REPO / name
        if path.suffix not in {".py", ".md", ".toml", ".txt", ".cfg", ""} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            # a citation in prose or a docstring; a quoted "INTERFACE.md" is code naming the file, and the name
            # at the start of an indented line is its entry in the README's layout tree (under docs/)
            if (
                re.search(r"(?<!docs/)(?<![\"'])INTERFACE\.md", line)
                and not re.match(r"\s+INTERFACE\.md {2,}", line)
                and path != CONTRACT
            ):
                bare.append(f"{name}:{number}: {line.strip()}")
    assert not bare, "cite the contract as docs/INTERFACE.md:\n" + "\n".join(bare)
