"""One grade of one submission, in the grader's process (trusted; root where staff grade).

grade.py       `grade()`: unpack, start the fork server, run the guarded pytest processes, score, report
submission.py  unpacking a directory or zip: a parser of hostile input (caps, no links, no devices)
report.py      problems, points, results.json (Gradescope's format)
timings.py     each graded test's budget of worker seconds (timings.json, scaled from the reference)
audit.py       the static from-scratch audit: forbidden built-ins, escape hatches that need review
heldout.py     the course secret: held-out graded cases drawn from it, per submission
canary.py      a known-correct submission graded first: a broken environment stops the grading
"""
