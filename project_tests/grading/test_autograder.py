"""The Gradescope autograder: the zip's contents, and whole runs under a simulated `/autograder` root.

The simulated runs extract the built zip into `ROOT/source`, put an upload into `ROOT/submission` (loose
files, a top folder, a `.zip`), run `run_autograder` with `CS336_AUTOGRADER_ROOT=ROOT` and check
`ROOT/results/results.json` against Gradescope's specification (written out below, independently of the
grader's code). `setup.sh` needs the network, so it is only checked, not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from cs336_grading.staff.autograder import build_autograder, find_submission, pinned_requirements

REPO = Path(__file__).resolve().parents[2]

# Gradescope's results.json (https://gradescope-autograders.readthedocs.io/en/latest/specs/): every key we
# may write, with its type. `score` is required unless every test has one.
TOP_KEYS = {
    "score": (int, float),
    "execution_time": (int, float),
    "output": str,
    "output_format": str,
    "test_output_format": str,
    "test_name_format": str,
    "visibility": str,
    "stdout_visibility": str,
    "extra_data": dict,
    "tests": list,
    "leaderboard": list,
}
TEST_KEYS = {
    "score": (int, float),
    "max_score": (int, float),
    "status": str,
    "name": str,
    "name_format": str,
    "number": str,
    "output": str,
    "output_format": str,
    "tags": list,
    "visibility": str,
    "extra_data": dict,
}
VISIBILITIES = {"hidden", "after_due_date", "after_published", "visible"}


def check_gradescope_results(results: dict[str, Any]) -> None:
    assert set(results) <= set(TOP_KEYS), set(results) - set(TOP_KEYS)
    for key, value in results.items():
        assert isinstance(value, TOP_KEYS[key]) and not isinstance(value, bool), (key, value)
    assert "score" in results and results.get("visibility", "visible") in VISIBILITIES
    for test in results.get("tests", []):
        assert set(test) <= set(TEST_KEYS), set(test) - set(TEST_KEYS)
        for key, value in test.items():
            assert isinstance(value, TEST_KEYS[key]) and not isinstance(value, bool), (key, value)
        assert (
            test.get("status", "passed") in {"passed", "failed"} and test.get("visibility", "visible") in VISIBILITIES
        )
        assert 0 <= test["score"] <= test["max_score"]
    for entry in results.get("leaderboard", []):
        assert set(entry) <= {"name", "value", "order"} and isinstance(entry["name"], str)
        assert isinstance(entry["value"], (int, float, str)) and entry.get("order", "desc") in {"asc", "desc"}


def test_requirements_are_pinned_to_what_is_installed() -> None:
    pins = dict(p.split("==") for p in pinned_requirements())
    import numpy
    import torch

    assert pins["torch"] == torch.__version__ and pins["numpy"] == numpy.__version__
    assert {"pytest", "regex", "tiktoken", "hypothesis"} <= set(pins)


def test_the_zip_holds_scripts_settings_and_the_pristine_harness(tmp_path: Path) -> None:
    archive = build_autograder(tmp_path / "autograder.zip", settings={"problems": ["softmax"]}, secret="s" * 16)
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
        settings = json.loads(zf.read("autograder.json"))
        setup = zf.read("setup.sh").decode()
        harness_adapters = zf.read("cs336_grading/harness/adapters.py")
    assert {
        "setup.sh",
        "run_autograder",
        "requirements.txt",
        "cs336_grading/grader/grade.py",
        "cs336_grading/harness/conftest.py",
        "cs336_common/atomic.py",
    } <= names
    assert modes["setup.sh"] & 0o111 and modes["run_autograder"] & 0o111
    assert settings == {"total_timeout": 540.0, "problems": ["softmax"]}
    assert "-r requirements.txt" in setup and "download.pytorch.org/whl/cpu" in setup
    assert harness_adapters == (REPO / "tests" / "adapters.py").read_bytes()
    assert not any("oracle" in n or n.startswith("cs336_basics") or "__pycache__" in n for n in names)
    for script in ("setup.sh", "run_autograder"):
        with zipfile.ZipFile(archive) as zf:
            (tmp_path / script).write_bytes(zf.read(script))
        assert subprocess.run(["bash", "-n", str(tmp_path / script)]).returncode == 0
    again = build_autograder(tmp_path / "again.zip", settings={"problems": ["softmax"]}, secret="s" * 16)
    assert again.read_bytes() == archive.read_bytes()


def test_find_submission(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    (loose / "tests").mkdir(parents=True)
    (loose / "tests" / "adapters.py").write_text("")
    assert find_submission(loose) == loose
    uploaded = tmp_path / "uploaded"
    uploaded.mkdir()
    with zipfile.ZipFile(uploaded / "hw1.zip", "w") as zf:
        zf.writestr("hw1/tests/adapters.py", "")
    assert find_submission(uploaded) == uploaded / "hw1.zip"


def run_in_simulated_gradescope(archive: Path, root: Path, upload: Path, *, as_zip: bool = False) -> dict[str, Any]:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root / "source")
    (root / "submission").mkdir()
    if as_zip:
        with zipfile.ZipFile(root / "submission" / "submission.zip", "w") as zf:
            for path in sorted(upload.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(upload))
    else:
        shutil.copytree(upload, root / "submission", dirs_exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"CS336_AUTOGRADER_ROOT": str(root), "CS336_AUTOGRADER_PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    check_gradescope_results(results)
    return results


def reference_submission(root: Path, top: str = "") -> Path:
    shutil.copytree(REPO / "cs336_basics", root / top / "cs336_basics", ignore=shutil.ignore_patterns("__pycache__"))
    (root / top / "tests").mkdir(parents=True)
    shutil.copyfile(REPO / "tests" / "adapters.py", root / top / "tests" / "adapters.py")
    return root


@pytest.mark.slow
def test_simulated_gradescope_runs(tmp_path: Path) -> None:
    from project_tests.grading.test_leaderboard import make_config, make_submission

    (tmp_path / "staff").mkdir()
    rules = make_config(tmp_path / "staff")  # byte tokenizer, context 16, <= 60k parameters
    archive = build_autograder(
        tmp_path / "autograder.zip",
        leaderboard=tmp_path / "staff" / "leaderboard.toml",
        settings={"problems": ["softmax"], "jobs": 2},
    )

    loose = reference_submission(make_submission(tmp_path / "alice"))  # code + leaderboard/ entry
    results = run_in_simulated_gradescope(archive, tmp_path / "root-loose", loose)
    assert results["score"] == 1.0 and [t["name"] for t in results["tests"]] == ["softmax"]
    (entry,) = results["leaderboard"]
    from cs336_lab.evaluate import evaluate

    expected = evaluate(loose / "leaderboard" / "model.pt", rules.validation_text, context_length=16)
    assert entry["value"] == pytest.approx(expected.bits_per_byte, abs=1e-6) and entry["order"] == "asc"
    assert not (tmp_path / "root-loose" / "source" / "leaderboard" / rules.validation_text.name).exists()

    top = reference_submission(tmp_path / "bob", top="hw1")
    results = run_in_simulated_gradescope(archive, tmp_path / "root-top", top, as_zip=True)  # a zip with a top folder
    assert results["score"] == 1.0 and "leaderboard" not in results and "not entered" in results["output"]

    broken = reference_submission(make_submission(tmp_path / "carol", top="hw1"), top="hw1")
    (broken / "hw1" / "tests" / "adapters.py").write_text(
        "def run_softmax(in_features, dim):\n    return in_features\n"
    )
    (broken / "hw1" / "leaderboard" / "config.json").write_text(json.dumps({"num_heads": 3}))
    results = run_in_simulated_gradescope(archive, tmp_path / "root-broken", broken)
    assert results["score"] == 0.0 and "leaderboard" not in results
    assert "no entry: expected num_heads dividing d_model=32" in results["output"]

    empty = tmp_path / "dave"
    empty.mkdir()
    (empty / "README.md").write_text("oops")
    results = run_in_simulated_gradescope(archive, tmp_path / "root-empty", empty)
    assert results["score"] == 0.0 and "ungradable submission" in results["output"]
