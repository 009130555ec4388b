"""The graded suite is exact in both directions, and its hints name the mistake.

Too loose: each mutant of `suite_corpus.MUTANTS` (a second implementation with one realistic mistake) is
swapped in for the adapters, the unchanged graded test functions run in this process, and each listed check
must FAIL; when the mistake is catalogued (`tests/mistakes_*.py`), the failure message must carry the hint
that names it, and when it is not, no hint may appear (a wrong hint misleads).

Too tight: each rewrite of `suite_corpus.REWRITES` (differently written correct implementations: other op
orders and dtypes, einsum, fused projections, per-head loops, rsqrt vs division, both AdamW decay orders,
incremental BPE and buffered streaming, torch's built-ins) must PASS every listed check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from project_tests.suite.suite_alone import outcome
from project_tests.suite.suite_checks import CHECKS, Fixtures, patch_adapters
from project_tests.suite.suite_corpus import MUTANTS, REWRITES, SLOW_MUTANTS
from tests import hints

_SNAPSHOTS: dict[str, dict[str, np.ndarray]] = {}
ROOT = Path(__file__).resolve().parents[2]


def _says(mistake_name: str) -> str:
    found = [m for entries in hints.catalogue().values() for m in entries if m.name == mistake_name]
    assert len(found) == 1, f"{mistake_name!r} names {len(found)} catalogued mistakes"
    return found[0].says


def test_the_catalogue_holds_at_least_30_named_mistakes() -> None:
    mistakes = [m for entries in hints.catalogue().values() for m in entries]
    assert len(mistakes) >= 30
    assert len({m.name for m in mistakes}) == len(mistakes), "mistake names must be unique"
    assert len({m.says for m in mistakes}) == len(mistakes), "two mistakes say the same thing"


def test_every_catalogued_mistake_is_proven_by_a_mutant() -> None:
    named = {m.hint for m in MUTANTS.values() if m.hint}
    catalogued = {m.name for entries in hints.catalogue().values() for m in entries}
    assert catalogued - named == set(), "catalogued mistakes that no mutant exercises"
    assert named - catalogued == set(), "mutants naming mistakes that are not catalogued"


def test_the_corpus_is_large_enough() -> None:
    assert len(MUTANTS) >= 60 and len(REWRITES) >= 10
    unknown = {c for m in MUTANTS.values() for c in m.checks} | {c for _, cs in REWRITES.values() for c in cs}
    assert unknown - set(CHECKS) == set()


def _params(names: set[str] | list[str], slow: set[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in sorted(names)]


def _alone(name: str, label: str, tmp_path: Path) -> dict[str, str]:
    """The outcome of one check run in a fresh interpreter (`suite_alone.py`), for the memory checks."""
    done = subprocess.run(
        [sys.executable, "-m", "project_tests.suite.suite_alone", name, label, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"suite_alone {name} {label} exited {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", _params(MUTANTS, SLOW_MUTANTS))
def test_graded_suite_fails_mutant(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mutant = MUTANTS[name]
    if not mutant.alone:
        patch_adapters(monkeypatch, mutant.adapters)
    fx = Fixtures(tmp_path, _SNAPSHOTS)
    survived, messages = [], []
    for label in mutant.checks:
        result = _alone(name, label, tmp_path) if mutant.alone else outcome(label, fx, mutant.crash_ok)
        if result["outcome"] == "error" and not mutant.crash_ok:
            raise AssertionError(f"check {label!r} crashed in its own process: {result['message']}")
        if result["outcome"] == "passed":
            survived.append(label)
        else:
            messages.append(result["message"])
    assert not survived, f"mutant {name!r} passed the graded checks {survived}"
    if mutant.hint is None:
        assert not any("Hint:" in m for m in messages), f"a hint for an uncatalogued mistake: {messages}"
    else:
        expected = f"Hint: your output matches {_says(mutant.hint)}."
        assert any(expected in m for m in messages), f"no check named {mutant.hint!r}; messages: {messages}"


@pytest.mark.slow
def test_memory_freed_earlier_does_not_hide_a_whole_file_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The CI failure of stop 28: in a long pytest process the reads-everything mutant passed the memory check,
    # because the heap pages earlier tests freed absorbed its read. Free some here the way torch does (one
    # large block raises glibc's mmap threshold, so the next blocks come from the heap and stay resident):
    # the check must still see the read, because it first hands freed memory back (`release_free_memory`).
    block = bytearray(24 << 20)
    del block
    blocks = [bytearray(1 << 20) for _ in range(40)]
    del blocks
    patch_adapters(monkeypatch, MUTANTS["encode_iterable_reads_all"].adapters)
    with pytest.raises(AssertionError, match="peak memory grew by"):
        CHECKS["iterable_memory"](Fixtures(tmp_path, _SNAPSHOTS))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REWRITES))
def test_graded_suite_accepts_rewrite(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    adapters, checks = REWRITES[name]
    patch_adapters(monkeypatch, adapters)
    fx = Fixtures(tmp_path, _SNAPSHOTS)
    for label in checks:
        CHECKS[label](fx)


def test_a_shape_error_names_its_likely_cause(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A weight stored (d_in, d_out) fails to load with torch's raw "size mismatch": the failure says why.
    patch_adapters(monkeypatch, MUTANTS["linear_stored_transposed"].adapters)
    with pytest.raises(AssertionError) as caught:
        CHECKS["linear"](Fixtures(tmp_path, _SNAPSHOTS))
    assert "raised a shape error: RuntimeError: Error(s) in loading state_dict" in str(caught.value)
    assert "size mismatch" in str(caught.value) and hints.LIKELY_SHAPE_CAUSE in str(caught.value)
