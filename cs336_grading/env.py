"""The grading wing's environment contract: every `CS336_*` variable, who sets it and who reads it.

The grader passes settings to the processes it starts through these variables (and file descriptors, never
paths a worker could write). Each name is defined here once; the modules that set or read one import it.

| variable | set by | read by | what it holds |
|---|---|---|---|
| `CS336_WORKER` | `grader/grade.py` | `pytest_run/plugin.py` | the worker settings (JSON): fork server socket, template, limits |
| `CS336_GRADER_REPORT` | `pytest_run/sandbox.py` | `pytest_run/plugin.py` | the file the plugin appends its events to |
| `CS336_GRADED_PREFIXES` | `grader/grade.py` | `pytest_run/plugin.py` | JSON list: run only the tests of these problems |
| `CS336_TEST_LIMITS` | `grader/grade.py` | `pytest_run/plugin.py` | JSON: each test's budget of worker seconds |
| `CS336_GRADING` | `grader/grade.py` | `tests/conftest.py` | "1" under the grader: hypothesis's derandomized grading profile |
| `CS336_GRADING_SECRET` | the staff, `staff/autograder.py`, `staff/batch.py` | `grader/heldout.py`, `tests/conftest.py` | the course secret: held-out cases (never reaches the fork server) |
| `CS336_TEST_THREADS` | the user | `tests/conftest.py` | torch threads in the graded tests (default 1) |
| `CS336_SHARED_DATA` | the user | `tests/cases.py` | where the optional shared data lives (default `../shared/data`) |
| `CS336_AUTOGRADER_ROOT`, `CS336_AUTOGRADER_PYTHON` | tests | `run_autograder` (`staff/autograder_setup.py`) | Gradescope's root (`/autograder`) and the Python that grades |
| `CS336_TORCH_INDEX` | `make test-autograder` | `setup.sh` (`staff/autograder_setup.py`) | where pip finds torch (empty: no extra index) |
| `CS336_TEST_AUTOGRADER`, `CS336_TEST_AUTOGRADER_IMAGES`, `CS336_CHROOT_CACHE` | the maintainer | `project_tests/grading/test_autograder_chroot.py` | opt in to the debootstrapped run, its images, its cache |
"""

from __future__ import annotations

WORKER_ENV = "CS336_WORKER"
REPORT_ENV = "CS336_GRADER_REPORT"
SELECT_ENV = "CS336_GRADED_PREFIXES"
LIMITS_ENV = "CS336_TEST_LIMITS"
GRADING_ENV = "CS336_GRADING"
SECRET_ENV = "CS336_GRADING_SECRET"
TEST_THREADS_ENV = "CS336_TEST_THREADS"
SHARED_DATA_ENV = "CS336_SHARED_DATA"
AUTOGRADER_ROOT_ENV = "CS336_AUTOGRADER_ROOT"
