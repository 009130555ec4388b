"""The grading wing's command line: `cs336 grade` (one submission, or a batch with its similarity check).

    cs336 grade alice.zip --out results.json             # one grade: `grader/grade.py`
    cs336 grade submissions/ --out-dir grades/           # a batch: `staff/batch.py`, then `staff/similarity_report.py`

The other staff commands register themselves from their own modules (`cs336 handout`: `staff/handout.py`,
`cs336 autograder`: `staff/autograder.py`, `cs336 similarity`: `staff/similarity_report.py`).
"""

from __future__ import annotations

import argparse
import logging
import signal

from cs336_grading.grader import grade as grade_module
from cs336_grading.grader import heldout
from cs336_grading.grader.report import GraderError, GradeResult
from cs336_grading.grader.submission import SubmissionError
from cs336_grading.staff import batch, similarity_report

log = logging.getLogger("cs336_grading.grader.grade")


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "grade",
        help="grade a student submission (directory or .zip) against the pristine tests",
        description=grade_module.__doc__.splitlines()[0],
    )
    parser.add_argument(
        "submission",
        nargs="+",
        help="directory or .zip with cs336_basics/ and tests/adapters.py; several, or a folder of them: batch",
    )
    parser.add_argument("--out", default="results.json", help="Gradescope results file (default: ./results.json)")
    parser.add_argument(
        "--harness", default=None, help="pristine tests directory (default: the one installed with cs336_grading)"
    )
    parser.add_argument(
        "--timeout", type=float, default=grade_module.DEFAULT_TIMEOUT_S, help="seconds per test (default: %(default)s)"
    )
    parser.add_argument(
        "--memory-mb",
        type=int,
        default=grade_module.DEFAULT_MEMORY_MB,
        help="address-space limit per test process in MiB; 0: none (CUDA maps far more) (default: %(default)s)",
    )
    parser.add_argument(
        "--total-timeout",
        type=float,
        default=grade_module.DEFAULT_TOTAL_TIMEOUT_S,
        help="seconds for the whole run (default: %(default)s)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel test processes (default: CPU count)")
    parser.add_argument("--problems", default=None, help="comma-separated subset of problems to grade")
    parser.add_argument("--isolate-each-test", action="store_true", help="one process per test (slower)")
    parser.add_argument(
        "--builtins",
        choices=("zero", "warn"),
        default="zero",
        help="a problem that used a forbidden torch built-in scores 0 (default) or only gets a warning",
    )
    parser.add_argument(
        "--secret-file",
        default=None,
        help=f"the course's grading secret: snapshot tests grade held-out cases drawn from it "
        f"(default: ${heldout.SECRET_ENV}; neither: the public snapshots)",
    )
    batch.add_arguments(parser)
    similarity_report.add_batch_arguments(parser)
    parser.set_defaults(func=_main)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _main(args: argparse.Namespace) -> int:
    if batch.wants_batch(args.submission, args.out_dir):
        status = batch.main(args)  # several submissions: cs336_grading/staff/batch.py
        similarity_report.after_batch(args)  # then which of them look copied: similarity.py
        return status
    args.submission = args.submission[0]
    problems = None if args.problems is None else [p.strip() for p in args.problems.split(",") if p.strip()]
    # SIGTERM (a batch system, `timeout`) cleans up like Ctrl-C: test processes, workers, the workspace.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = grade_module.grade(
            args.submission,
            harness=args.harness,
            timeout=args.timeout,
            memory_mb=args.memory_mb or None,
            total_timeout=args.total_timeout,
            jobs=args.jobs,
            problems=problems,
            isolate_each=args.isolate_each_test,
            builtins=args.builtins,
            secret=heldout.secret_from(args.secret_file),
        )
    except SubmissionError as e:
        # The student's fault, not the grader's: a zero grade that says why.
        zero = GradeResult(problems=(), execution_time=0.0, warnings=(f"ungradable submission: {e}",))
        log.warning("ungradable submission: %s; wrote a zero grade to %s", e, zero.write_json(args.out))
        return 0
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    except GraderError as e:
        log.error("the grader could not run: %s", e)
        return 1
    except KeyboardInterrupt as e:
        if str(e) != "signal SIGTERM":
            raise
        log.error("terminated (SIGTERM): the test processes, workers and workspace are cleaned up")
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(result.format_table())  # the table is the command's output; the rest is logging
    log.info("wrote %s", result.write_json(args.out))
    return 0
