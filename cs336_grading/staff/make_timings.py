"""`make timings`: grade the reference, keep each graded test's worker seconds (`grader/timings.json`).

python -m cs336_grading.staff.make_timings .     # the reference checkout; about two gradings of it
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cs336_common.atomic import atomic_write_json
from cs336_grading.grader.grade import grade
from cs336_grading.grader.timings import DATA


def regenerate(submission: str, out: Path = DATA, runs: int = 2) -> dict[str, float]:
    """Grade `submission` (the reference) `runs` times with one job; keep each test's slowest worker time."""
    seconds: dict[str, float] = {}
    for _ in range(runs):
        result = grade(submission, jobs=1, test_limits={}, timeout=300.0)
        if result.score != result.max_score:
            raise RuntimeError(f"the reference did not score full marks:\n{result.format_table()}")
        for nodeid, record in result.records.items():
            seconds[nodeid] = max(seconds.get(nodeid, 0.0), float(record.get("worker_seconds", 0.0)))
    payload = {
        "note": "worker seconds of the reference per graded test; `python -m cs336_grading.staff.make_timings`",
        "tests": {k: round(v, 4) for k, v in sorted(seconds.items())},
    }
    atomic_write_json(out, payload, indent=1)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submission", nargs="?", default=".", help="the reference checkout (default: .)")
    args = parser.parse_args()
    seconds = regenerate(args.submission)
    print(f"wrote {DATA}: {len(seconds)} tests, {sum(seconds.values()):.1f} worker seconds in all")


if __name__ == "__main__":
    main()
