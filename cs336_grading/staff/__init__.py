"""The course staff's tools around grading (trusted; they call `grader.grade` and read its results).

batch.py                      many submissions: resumable, summary.csv, scores.png (`cs336 grade DIR --out-dir`)
similarity.py, similarity_report.py   code similarity across a batch (`cs336 similarity`)
autograder.py, autograder_setup.py    the Gradescope autograder zip and its run inside Gradescope
leaderboard.py, leaderboard_files.py, trusted_lm.py   the leaderboard: a submitted checkpoint scored by
                              the grader's own forward pass, its files read as data only
handout.py (+ handout_files/) `cs336 handout`: the student starter kit
make_timings.py               `make timings`: grade the reference, keep each test's worker seconds
"""
