"""cs336_lab: the tools a user runs around the model (trainer, `cs336` CLI, demo, corpora, downloads).

It uses the assignment package `cs336_basics` only through the public API listed in `cs336_lab/assignment.py`, so
`cs336 train` and `cs336 generate` also work with a student's own `cs336_basics`.
"""

__version__ = "0.1.0"
