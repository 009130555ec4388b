"""cs336_grading: the course staff's wing (`cs336 grade`, the sandbox, the pytest plugin, `cs336 handout`).

It never imports the assignment package `cs336_basics`: a submission's package only ever runs inside the
sandboxed worker (`worker.py`, `jail.py`), never in the processes that assert and score. The pristine harness ships as package data (`cs336_grading.harness`, the project's
`tests/` directory) or is named explicitly with `--harness`.
"""

__version__ = "0.1.0"
