"""The autograder zip per base image: the Python setup.sh installs, the README, the build-time refusal, and
run_autograder's results.json when the environment is broken (the whole run in a real base system is
test_autograder_chroot.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cs336_grading.staff.autograder import build_autograder
from cs336_grading.staff.autograder_setup import RUN_AUTOGRADER, setup_sh
from cs336_lab import cli


def test_setup_installs_a_python_of_at_least_3_11() -> None:
    script = setup_sh("ubuntu-24.04", "https://download.pytorch.org/whl/cpu")
    assert (
        "PYTHON=python3\n" in script and "sys.version_info < (3, 11)" in script and "Base image: ubuntu-24.04" in script
    )
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("image", ["ubuntu-22.04", "ubuntu-20.04", "ubuntu-18.04"])
def test_an_image_without_a_usable_python_3_11_is_refused_at_build_time(tmp_path: Path, image: str) -> None:
    with pytest.raises(ValueError, match="choose ubuntu-24.04"):
        build_autograder(tmp_path / "a.zip", base_image=image)
    assert cli.main(["autograder", str(tmp_path / "a.zip"), "--base-image", image]) == 2
    assert not (tmp_path / "a.zip").exists()


def test_the_zip_readme_names_the_image_the_resources_and_the_time(tmp_path: Path) -> None:
    archive = build_autograder(tmp_path / "a.zip", settings={"jobs": 2})
    with zipfile.ZipFile(archive) as zf:
        readme = zf.read("README.md").decode()
        setup = zf.read("setup.sh").decode()
    assert "**Base image**: Ubuntu 24.04" in readme and "Not Ubuntu 22.04" in readme
    assert "2 CPUs" in readme and "GB of memory" in readme and "grades in about" in readme
    assert "PYTHON=python3\n" in setup


@pytest.mark.parametrize("python", ["/nonexistent/python", "old"], ids=["no-venv", "python-too-old"])
def test_run_autograder_always_writes_results(tmp_path: Path, python: str) -> None:
    (tmp_path / "source").mkdir()
    script = tmp_path / "source" / "run_autograder"
    script.write_text(RUN_AUTOGRADER)
    if python == "old":  # a Python that says it is 3.10
        python = str(tmp_path / "python")
        Path(python).write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.exit(1)'\n")
        os.chmod(python, 0o755)
    env = {**os.environ, "CS336_AUTOGRADER_ROOT": str(tmp_path), "CS336_AUTOGRADER_PYTHON": python}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["score"] == 0.0 and "environment is broken" in results["output"]
