"""Each graded test's time budget in the worker, scaled from the reference's measured time (committed data).

    limits()                            # {nodeid: seconds}: max(FLOOR_S, FACTOR * reference + SLACK_S)
    python -m cs336_grading.timings     # regenerate timings.json: grade the reference, keep worker seconds

The budget counts the wall clock of the test's calls into the worker (measured by the grader), not the
grader's own work (expected values, comparisons). A hanging adapter therefore costs about FLOOR_S per test
instead of a fixed minute, and a test with no committed timing (a new one) gets the `--timeout` default:
regenerate the data when tests change (a reference test checks that every graded test has one).
"""

from __future__ import annotations

import argparse
import json
import os
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


def regenerate(submission: str, out: Path = DATA, runs: int = 2) -> dict[str, float]:
    """Grade `submission` (the reference) `runs` times with one job; keep each test's slowest worker time."""
    from cs336_grading.grade import grade

    seconds: dict[str, float] = {}
    for _ in range(runs):
        result = grade(submission, jobs=1, test_limits={}, timeout=300.0)
        if result.score != result.max_score:
            raise RuntimeError(f"the reference did not score full marks:\n{result.format_table()}")
        for nodeid, record in result.records.items():
            seconds[nodeid] = max(seconds.get(nodeid, 0.0), float(record.get("worker_seconds", 0.0)))
    payload = {"note": "worker seconds of the reference per graded test; `python -m cs336_grading.timings`",
               "tests": {k: round(v, 4) for k, v in sorted(seconds.items())}}  # fmt: skip
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submission", nargs="?", default=".", help="the reference checkout (default: .)")
    args = parser.parse_args()
    seconds = regenerate(args.submission)
    print(f"wrote {DATA}: {len(seconds)} tests, {sum(seconds.values()):.1f} worker seconds in all")


if __name__ == "__main__":
    main()
