"""Expected values that the graded tests compute at test time (tiktoken, a naive BPE trainer, torch's AdamW).

The grading side of the harness, kept out of `tests/` (which holds no answers) and out of reach of student
code under `cs336 grade`. Nothing here imports `cs336_basics`.
"""
