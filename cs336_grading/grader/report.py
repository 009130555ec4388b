"""What a grade is made of: the assignment's problems and points, each test's outcome, each problem's score,
and the whole result with its two renderings (Gradescope's `results.json` and the table the CLI prints).

    problem_of("tests/test_model.py::test_swiglu[batch]")   # 'positionwise_feedforward'
    GradeResult(problems, execution_time).to_gradescope()     # the results.json payload

A problem scores `points * passed / (tests - skipped)`; only the harness skips (a CUDA test without a GPU),
and a problem whose code used a forbidden torch built-in scores 0 when the audit's evidence counts.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cs336_common.atomic import atomic_write_json
from cs336_grading.untrusted import printable


@dataclass(frozen=True)
class Problem:
    name: str
    points: float
    prefixes: tuple[str, ...]


PROBLEMS: tuple[Problem, ...] = (
    Problem("linear", 1, ("test_linear",)),
    Problem("embedding", 1, ("test_embedding",)),
    Problem("rmsnorm", 1, ("test_rmsnorm",)),
    Problem("positionwise_feedforward", 2, ("test_swiglu", "test_silu")),
    Problem("rope", 2, ("test_rope",)),
    Problem("softmax", 1, ("test_softmax",)),
    Problem("scaled_dot_product_attention", 5, ("test_scaled_dot_product_attention",)),
    Problem("multihead_self_attention", 5, ("test_multihead_self_attention",)),
    Problem("transformer_block", 3, ("test_transformer_block",)),
    Problem("transformer_lm", 3, ("test_transformer_lm",)),
    Problem("cross_entropy", 2, ("test_cross_entropy",)),
    Problem("adamw", 2, ("test_adamw",)),
    Problem("learning_rate_schedule", 1, ("test_get_lr_cosine_schedule",)),
    Problem("gradient_clipping", 1, ("test_gradient_clipping",)),
    Problem("data_loading", 2, ("test_get_batch",)),
    Problem("checkpointing", 1, ("test_checkpointing",)),
    Problem("train_bpe", 15, ("test_train_bpe",)),
    Problem("tokenizer", 15, ("test_tokenizer",)),
)
PROBLEMS_BY_NAME = {p.name: p for p in PROBLEMS}

# Outcome of one test, and how the table shows it.
STATUS_LABELS = {
    "passed": "passed",
    "failed": "FAILED",
    "not_implemented": "NOT IMPLEMENTED",
    "error": "ERROR",
    "timeout": "TIMED OUT",
    "memory": "MEMORY LIMIT",
    "skipped": "skipped",
    "advisory": "advisory (0 points)",
}
UNCOUNTED = ("skipped", "advisory")  # statuses outside a problem's denominator: harness skips, advisory tests
# The field set of results.json (Gradescope's specification, the subset we write).
RESULT_FIELDS = ("score", "execution_time", "output", "visibility", "tests")
TEST_FIELDS = ("name", "score", "max_score", "status", "output", "visibility")


class GraderError(RuntimeError):
    """The grader itself could not run (broken harness, missing pytest, ...): no grade was produced."""


def problem_of(nodeid: str) -> str | None:
    """The problem a test belongs to, from its function name; None for ungraded tests.

    >>> problem_of("tests/test_model.py::test_swiglu[batch]")
    'positionwise_feedforward'
    >>> problem_of("tests/test_snapshots.py::test_snapshot_drift[linear]") is None
    True
    """
    function = nodeid.split("::")[-1].split("[")[0]
    return next((p.name for p in PROBLEMS if function.startswith(p.prefixes)), None)


@dataclass(frozen=True)
class TestOutcome:
    nodeid: str
    problem: str
    status: str  # a key of STATUS_LABELS
    message: str = ""


@dataclass(frozen=True)
class ProblemScore:
    problem: Problem
    outcomes: tuple[TestOutcome, ...]
    evidence: tuple[str, ...] = ()  # forbidden built-ins its code used (see `audit`)
    zeroed: bool = False  # the evidence counts: the problem scores 0

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def counted(self) -> int:
        """Tests that count towards the score (skipped ones do not)."""
        return len(self.outcomes) - sum(self.counts[s] for s in UNCOUNTED)

    @property
    def score(self) -> float:
        if self.zeroed or not self.counted:
            return 0.0
        return self.problem.points * self.counts["passed"] / self.counted

    def summary(self) -> str:
        if not self.outcomes:
            return "NO TESTS COLLECTED: the harness is broken"
        return ", ".join(
            f"{n} {STATUS_LABELS[s]}" for s, n in sorted(self.counts.items(), key=lambda kv: kv[0] != "passed")
        )

    def details(self) -> list[str]:
        """The built-ins evidence, then one line per test that did not pass (not-implemented ones are summarised)."""
        verdict = (
            "SCORED 0: used a forbidden torch built-in" if self.zeroed else "WARNING: used a forbidden torch built-in"
        )
        lines = [*(f"{verdict}: {line}" for line in self.evidence)] + [
            f"{STATUS_LABELS[o.status]}: {o.nodeid}" + (f": {o.message}" if o.message else "")
            for o in self.outcomes
            if o.status not in ("passed", "not_implemented", "skipped")
            and not (o.status == "advisory" and o.message.startswith(STATUS_LABELS["passed"]))
        ]
        return [printable(line) for line in lines]  # messages and file names come from the submission


@dataclass(frozen=True)
class GradeResult:
    problems: tuple[ProblemScore, ...]
    execution_time: float
    ungraded: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    records: dict[str, dict] = field(default_factory=dict)  # nodeid -> worker seconds, peak MiB, findings
    review: tuple[str, ...] = ()  # escape hatches in the submitted files (`audit.review`): a person checks them

    def review_lines(self) -> list[str]:
        """The "needs review" column: its evidence, one line each (the grade stands either way)."""
        if not self.review:
            return []
        return [
            f"Needs review ({len(self.review)} escape hatch(es); the score stands until a person checks them):",
            *(f"  {printable(line)}" for line in self.review[:20]),
        ]

    @property
    def score(self) -> float:
        return sum(p.score for p in self.problems)

    @property
    def max_score(self) -> float:
        return sum(p.problem.points for p in self.problems)

    @property
    def outcomes(self) -> dict[str, TestOutcome]:
        return {o.nodeid: o for p in self.problems for o in p.outcomes}

    def to_gradescope(self) -> dict[str, object]:
        """The `results.json` payload, in Gradescope's format: exactly the keys `RESULT_FIELDS`.

        `score` (float, the total), `execution_time` (seconds), `output` (total and warnings),
        `visibility` ("visible") and `tests`: one entry per problem with exactly the keys `TEST_FIELDS`:
        `name` (the problem), `score`, `max_score` (its points), `status` ("passed" when every counted test
        passed, else "failed"), `output` (counts per outcome, then one line per failed, errored, timed-out
        or memory-limited test with the first line of its error) and `visibility`.
        """
        tests = [
            {
                "name": p.problem.name,
                "score": round(float(p.score), 4),
                "max_score": p.problem.points,
                "status": "passed" if p.outcomes and p.counts["passed"] == p.counted else "failed",
                "output": "\n".join([p.summary(), *p.details()]),
                "visibility": "visible",
            }
            for p in self.problems
        ]
        output = f"Total: {self.score:.2f} / {self.max_score:g}"
        payload: dict[str, object] = {
            "score": round(float(self.score), 4),
            "execution_time": round(self.execution_time, 1),
            "output": "\n".join([output, *self.review_lines(), *map(printable, self.warnings)]),
            "visibility": "visible",
            "tests": tests,
        }
        if self.review:
            payload["needs_review"] = list(self.review)  # read by the batch summary
        return payload

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write `results.json` atomically (a temporary file renamed into place, never through a planted link)."""
        atomic_write_json(path, self.to_gradescope())
        return Path(path)

    def format_table(self) -> str:
        width = max(len(p.problem.name) for p in self.problems) if self.problems else 10
        lines = [f"{'problem':<{width}}   score    max  tests"]
        for p in self.problems:
            lines.append(f"{p.problem.name:<{width}}  {p.score:6.2f}  {p.problem.points:5g}  {p.summary()}")
            lines.extend(f"{'':<{width}}      {line}" for line in p.details())
        lines.append(f"{'total':<{width}}  {self.score:6.2f}  {self.max_score:5g}  ({self.execution_time:.0f} s)")
        return "\n".join([*lines, *self.review_lines(), *map(printable, self.warnings)])
