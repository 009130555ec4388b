"""Shared fixtures and settings of the grading suite.

An advisory test (marker `advisory`, 0 points in a grade) that fails under plain pytest or `make test` is
advice, not a failure: its report becomes a pass, its finding is listed in its own terminal-summary section
("advisory notes"), and the exit status is left alone. Under `cs336 grade` (the grader's recorder plugin is
registered) nothing is changed: the grader records the advisory outcome itself, at 0 points.

The maintainers run the whole suite against the oracle's own adapters (torch built-ins) instead of
`tests/adapters.py` with `pytest -p oracle.use_oracle tests` (`make test-oracle`): this is how we prove that
the tests accept every correct implementation. Nothing here knows about the oracle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import seed, settings

from cs336_grading.expected.draws import draw
from cs336_grading.grader.heldout import SECRET_ENV, seed_for

# Under `cs336 grade` the property tests draw the same examples every time: a regrade gives the same grade.
settings.register_profile("grading", derandomize=True, database=None, print_blob=False)
if os.environ.get("CS336_GRADING"):
    settings.load_profile("grading")

# The tests' tensors are small: one thread is faster than a pool that spins on a shared 2-core machine.
torch.set_num_threads(int(os.environ.get("CS336_TEST_THREADS", "1")))

TESTS_DIR = Path(__file__).resolve().parent
SNAPSHOT_DIR = TESTS_DIR / "_snapshots"
FIXTURE_DIR = TESTS_DIR / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    # The harness carries its own settings: installed as package data it has no pyproject.toml beside it.
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "advisory: good practice checked for information, worth 0 points")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:jaxtyping.*")


_ADVISORY_NOTES: list[tuple[str, str]] = []  # (nodeid, the first line of its finding)
GRADER_RECORDER = "cs336_grader_recorder"  # the name `cs336_grading.pytest_run.plugin` registers its recorder under


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201 - a hookwrapper
    outcome = yield
    report = outcome.get_result()
    if not report.failed or item.get_closest_marker("advisory") is None:
        return
    if call.excinfo is None or not call.excinfo.errisinstance(AssertionError):
        return  # not a finding: an adapter that is not written yet, or one that crashed, fails as usual
    if item.config.pluginmanager.has_plugin(GRADER_RECORDER):
        return  # the grader reports advisory findings itself (0 points)
    finding = str(call.excinfo.value).strip().splitlines() if call.excinfo is not None else []
    _ADVISORY_NOTES.append((item.nodeid, finding[0] if finding else report.when))
    report.outcome = "passed"
    report.longrepr = None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _ADVISORY_NOTES:
        return
    terminalreporter.section("advisory notes")
    terminalreporter.write_line(f"{len(_ADVISORY_NOTES)} advisory check(s) found something (0 points; advice only):")
    for nodeid, finding in _ADVISORY_NOTES:
        terminalreporter.write_line(f"ADVISORY {nodeid}: {finding}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under a course secret, property tests draw their examples from it too: the derandomized examples of
    the grading profile are a function of the public test source, which a student could answer offline."""
    secret = os.environ.get(SECRET_ENV)
    for item in items if secret else []:
        test = getattr(item, "obj", None)
        if getattr(test, "is_hypothesis_test", False):
            seed(seed_for(secret, f"hypothesis:{item.module.__name__}.{test.__name__}"))(test)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Directory of the fixture files (corpora, vocabularies) that `make snapshots` writes."""
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def load_snapshot() -> Callable[[str], dict[str, np.ndarray]]:
    """`load_snapshot(name)` returns the arrays of `tests/_snapshots/<name>.npz` (cached per session).

    Under grading with a course secret (`$CS336_GRADING_SECRET`, set by `cs336 grade` in this trusted
    process only) it returns a held-out case of the same layout instead: inputs drawn from the secret,
    expected values computed here by the grading package (`cs336_grading/grader/heldout.py`).
    """
    from tests.snapshot_io import read_npz

    cache: dict[str, dict[str, np.ndarray]] = {}
    secret = os.environ.get(SECRET_ENV)

    def load(name: str) -> dict[str, np.ndarray]:
        if name not in cache and secret:
            cache[name] = draw(name, seed_for(secret, name), heldout=True)
        elif name not in cache:
            path = SNAPSHOT_DIR / f"{name}.npz"
            if not path.exists():
                raise FileNotFoundError(f"snapshot {path} is missing: run `make snapshots`")
            cache[name] = read_npz(path)
        return cache[name]

    return load
