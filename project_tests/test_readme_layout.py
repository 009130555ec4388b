"""The README's layout section lists every file of the repository once, and lists nothing that is not there.

The section is an indented tree: a line's names (before the first run of two spaces) are files, globs
(`test_*.py`) or folders (`tests/`); deeper lines belong to the folder above them. A folder with no lines under
it (`_snapshots/`, `docs/lab/`) stands for everything in it. Files come from `git ls-files`.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTINUATION = 12  # a line indented this far continues the description above it
NAME = re.compile(r"[\w.*\-+]+/?")


def layout_lines(readme: str) -> list[str]:
    """The code block of the `## Layout` section, without its 4-space indent."""
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [line[4:] for line in section.splitlines() if line.startswith("    ") and line.strip()]


def parse_layout(lines: list[str]) -> tuple[list[str], list[str], set[str]]:
    """(file patterns, folders, folders that stand for their whole content), as paths from the root.

    >>> parse_layout(["a/      the a", "  b.py  the b", "  c/    data", "d.txt   the d"])
    (['a/b.py', 'd.txt'], ['a/', 'a/c/'], {'a/c/'})
    """
    patterns: list[str] = []
    folders: list[str] = []
    parents: dict[int, str] = {}
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if indent >= CONTINUATION:
            continue
        depth = indent // 2
        prefix = "".join(parents[d] for d in range(depth))
        names = re.split(r" {2,}", line.strip(), maxsplit=1)[0]
        for name in NAME.findall(names):
            if name.endswith("/"):
                folders.append(prefix + name)
                parents[depth] = name
            elif "." in name or "*" in name or name in {"Makefile", "run"}:
                patterns.append(prefix + name)
    parents_of = {p.rsplit("/", 1)[0] + "/" for p in patterns if "/" in p}
    leaves = {f for f in folders if f not in parents_of and not any(g != f and g.startswith(f) for g in folders)}
    return patterns, folders, leaves


@pytest.fixture(scope="module")
def layout() -> tuple[list[str], list[str], set[str]]:
    return parse_layout(layout_lines((ROOT / "README.md").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def files() -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the repository's file list comes from git ls-files")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in out.splitlines() if (ROOT / name).exists()]


def _covering(path: str, patterns: list[str], leaves: set[str]) -> list[str]:
    return [
        p
        for p in patterns
        if fnmatch.fnmatchcase(path, p) and "/" not in path[len(p.rsplit("/", 1)[0]) + 1 :] or p == path
    ] + [f for f in leaves if path.startswith(f)]


def test_every_file_is_listed_once(layout: tuple[list[str], list[str], set[str]], files: list[str]) -> None:
    patterns, _, leaves = layout
    unlisted = [f for f in files if not _covering(f, patterns, leaves)]
    twice = {f: _covering(f, patterns, leaves) for f in files if len(_covering(f, patterns, leaves)) > 1}
    assert not unlisted, f"expected every file in the README's layout, got {len(unlisted)} unlisted: {unlisted}"
    assert not twice, f"expected each file listed once, got files under several entries: {twice}"


def test_every_listed_entry_exists(layout: tuple[list[str], list[str], set[str]], files: list[str]) -> None:
    patterns, folders, leaves = layout
    missing = [p for p in patterns if not any(_covering(f, [p], set()) for f in files)]
    missing += [f for f in folders if not any(name.startswith(f) for name in files)]
    assert not missing, f"expected each entry of the README's layout to exist, got missing: {missing}"
