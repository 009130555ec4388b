"""The scripts and the README of the Gradescope autograder zip, per base image (`autograder.py` builds it).

Gradescope offers Ubuntu base images; the grader needs Python >= 3.11 (`requires-python`):

    ubuntu-24.04   python3 is 3.12: setup.sh installs it from the image's own archive (the only image supported)
    ubuntu-22.04   refused at build time: python3 is 3.10, and the archive's python3.11 (jammy-updates,
                   universe) is 3.11.0~rc1, a release candidate without sys.get_int_max_str_digits, so
                   `import torch._dynamo` fails in the grader's worker (seen in `make test-autograder`)
    ubuntu-20.04 and older: no Python >= 3.11 in their archive; refused, naming ubuntu-24.04

A new image is one line of `BASE_IMAGES`: the Python command and the apt packages that give it.

`setup.sh` fails loudly when the Python it ends with is older than 3.11, and `run_autograder` writes a
results.json that names the broken environment whenever the grader cannot start (a missing virtual
environment, a Python too old): Gradescope never shows a student an empty result.

The canary (the known-correct submission the zip carries) is graded at the start of every Gradescope run
by `autograder.run()`: when it loses a point, results.json gives the student a zero that says the
environment, not their code, is at fault (`canary.py`), the same way as `fail` in `run_autograder` below.

NOTE: the wheels come from PyPI and torch from PyTorch's CPU index; `CS336_TORCH_INDEX` (empty: none) and
pip's own `PIP_*` variables redirect them, which is how `make test-autograder` installs from a local mirror.
"""

from __future__ import annotations

from typing import Any

DEFAULT_BASE_IMAGE = "ubuntu-24.04"
# image -> (the Python it ends with, the apt packages that give it)
BASE_IMAGES = {
    "ubuntu-24.04": ("python3", "python3 python3-venv python3-pip"),
}
REFUSED_IMAGES = {  # image -> why
    "ubuntu-22.04": "its archive's python3.11 is 3.11.0~rc1, a release candidate that torch cannot import",
    "ubuntu-20.04": "its archive has no Python >= 3.11",
    "ubuntu-18.04": "its archive has no Python >= 3.11",
}
MEMORY_GB = 4  # the grader's test processes (one at a time per job) stay under 2 GB each
CPUS = 2
# NOTE: measured by `make test-autograder` (debian-12 root, 2 shared cores, --jobs 2): setup.sh 219 s,
# the reference graded in 117 s, a submission with a broken softmax in 97 s.
SETUP_SECONDS, GRADE_SECONDS = 220, 120

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image. Base image: {image}.
set -euo pipefail
cd /autograder/source
export DEBIAN_FRONTEND=noninteractive
PYTHON={python}
apt-get update -qq
apt-get install -y -qq --no-install-recommends {packages} ca-certificates > /dev/null
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup.sh: $("$PYTHON" --version 2>&1) is older than the grader's Python 3.11: rebuild the zip with" \\
         "'cs336 autograder --base-image' naming this image, or pick Ubuntu 24.04 on Gradescope" >&2
    exit 1
fi
"$PYTHON" -m venv /autograder/venv
TORCH_INDEX="${{CS336_TORCH_INDEX-{torch_index}}}"
/autograder/venv/bin/pip install --quiet --no-cache-dir ${{TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}} -r requirements.txt
echo "setup.sh: $(/autograder/venv/bin/python --version), torch $(/autograder/venv/bin/python -c 'import torch; print(torch.__version__)')"
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission: grades /autograder/submission, writes /autograder/results/results.json.
set -uo pipefail
ROOT="${CS336_AUTOGRADER_ROOT:-/autograder}"
PYTHON="${CS336_AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
RESULTS="$ROOT/results/results.json"
fail() {  # the environment is broken, not the submission: say so where the student looks
    mkdir -p "$ROOT/results"
    printf '{"score": 0.0, "visibility": "visible", "tests": [], "output": "The autograder environment is broken (%s); this is not your fault: please tell the course staff."}\\n' "$1" > "$RESULTS"
    exit 1
}
cd "$ROOT/source" || fail "no $ROOT/source"
[ -x "$PYTHON" ] || fail "no Python at $PYTHON: setup.sh did not finish"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "$("$PYTHON" --version 2>&1) is older than 3.11"
"$PYTHON" -c 'import torch' 2> /dev/null || fail "torch does not import in $PYTHON"
export PYTHONPATH="$ROOT/source"
rm -f "$RESULTS"
"$PYTHON" -m cs336_grading.staff.autograder run --root "$ROOT"
status=$?
[ -s "$RESULTS" ] || fail "the grader exited with status $status before writing results"
exit $status
"""


def check_base_image(image: str) -> str:
    """`image` if the zip supports it; a ValueError naming the image to choose otherwise."""
    if image in REFUSED_IMAGES:
        raise ValueError(
            f"expected a base image with a usable Python >= 3.11 ({', '.join(BASE_IMAGES)}), got {image}: "
            f"{REFUSED_IMAGES[image]}; choose {DEFAULT_BASE_IMAGE} on Gradescope"
        )
    if image not in BASE_IMAGES:
        raise ValueError(f"expected a base image among {', '.join(BASE_IMAGES)}, got {image!r}")
    return image


def setup_sh(image: str, torch_index: str) -> str:
    """The `setup.sh` for Gradescope's base image `image`."""
    python, packages = BASE_IMAGES[check_base_image(image)]
    return SETUP_SH.format(image=image, python=python, packages=packages, torch_index=torch_index)


def readme(image: str, settings: dict[str, Any]) -> str:
    """The zip's README.md: which image to pick, the memory and CPUs to request, how long a grade takes."""
    jobs = settings.get("jobs") or CPUS
    total = float(settings.get("total_timeout", 540.0))
    return f"""# CS336 assignment 1: the Gradescope autograder

Upload this zip as the assignment's autograder ("Zip file upload").

- **Base image**: {image.replace("ubuntu-", "Ubuntu ")} ({BASE_IMAGES[image][0]} is installed by `setup.sh`; the
  grader needs Python >= 3.11). Not Ubuntu 22.04: its python3 is 3.10 and its python3.11 a release candidate
  that torch cannot import; not Ubuntu 20.04 or older: no Python >= 3.11.
- **Resources**: {CPUS} CPUs and {MEMORY_GB} GB of memory or more (the grader runs {jobs} test process(es) at a
  time, each capped by its own memory limit); no GPU (torch is installed from PyTorch's CPU index).
- **Time**: `setup.sh` takes about {SETUP_SECONDS // 60} minutes (mostly torch). A correct submission grades in about
  {GRADE_SECONDS} s on 2 CPUs; the grader stops itself after {total:g} s and still writes results.json, so
  set Gradescope's autograder timeout above that (the default 10 minutes fits).
- **Results**: `/autograder/results/results.json` is always written: a grade, an "ungradable submission" zero
  that says why, or a message naming a broken environment (tell the staff: not the student's fault).
"""
