"""cs336_grading: the course staff's wing, laid out by the processes of a grade.

    cli.py        `cs336 grade`: one submission (grader/) or a batch (staff/)
    grader/       one grade, in the grader's process (trusted): unpack, run, audit, score, report
    pytest_run/   one guarded pytest process that asserts (trusted, never imports student code) and its plugin
    worker/       the student side: the fork server, each worker child, its walls, and the grader's end of it
    staff/        the tools around grading: batches, similarity, the Gradescope autograder, the leaderboard, the kit
    expected/     expected values the graded tests compute at test time (torch built-ins, tiktoken, naive code)
    env.py, rules.py, untrusted.py   the CS336_* contract, the from-scratch rule, reading hostile files

It never imports the assignment package `cs336_basics`: a submission's package only ever runs inside the
sandboxed worker, never in the processes that assert and score. The pristine harness ships as package data
(`cs336_grading.harness`, the project's `tests/` directory) or is named explicitly with `--harness`.
"""

__version__ = "0.1.0"
