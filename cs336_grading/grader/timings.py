"""Each graded test's time budget in the worker, scaled from the reference's measured time (committed data).

    limits()                            # {nodeid: seconds}: max(FLOOR_S, FACTOR * reference + SLACK_S)
    python -m cs336_grading.staff.make_timings .   # regenerate timings.json (`make timings`)

The budget counts the wall clock of the test's calls into the worker (measured by the grader), not the
grader's own work (expected values, comparisons). A hanging adapter therefore costs about FLOOR_S per test
instead of a fixed minute, and a test with no committed timing (a new one) gets the `--timeout` default:
regenerate the data when tests change (a reference test checks that every graded test has one).
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).with_name("timings.json")
FLOOR_S = 1.5  # no test's budget is smaller: start-up noise on a loaded machine
FACTOR = 10.0  # times the reference's worker seconds
SLACK_S = 0.5


def reference_seconds(path: Path = DATA) -> dict[str, float]:
    """The committed worker seconds of the reference per test id (empty when there is no data)."""
    if not path.is_file():
        return {}
    return {str(k): float(v) for k, v in json.loads(path.read_text())["tests"].items()}


def limits(path: Path = DATA) -> dict[str, float]:
    return {nodeid: round(max(FLOOR_S, FACTOR * s + SLACK_S), 2) for nodeid, s in reference_seconds(path).items()}
