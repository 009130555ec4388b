"""A correct implementation's plain pytest run (as `make test` runs it) exits 0 when an advisory check finds
something: the finding is listed under "advisory notes", not as a failure (issue 21). A real failure still
fails the run, and under the grader the advisory outcome is recorded as before (see test_grader.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test starts a pytest process that imports torch (~20 s on a busy machine)

ROOT = Path(__file__).resolve().parents[2]

# A correct student whose SiLU and softmax return float32 for bf16 input (no dtype is stated: advisory only),
# or, with WRONG set, a SiLU that forgets the x (a real failure).
_VARIANT = """
import os
import torch
import tests.adapters as adapters

def run_silu(x):
    y = x.float()
    return torch.sigmoid(y) if os.environ.get("WRONG") else y * torch.sigmoid(y)

def run_softmax(x, dim):
    return torch.softmax(x.float(), dim)

adapters.run_silu, adapters.run_softmax = run_silu, run_softmax
"""


def _pytest(tmp_path: Path, *, wrong: bool, graded: bool = False) -> subprocess.CompletedProcess[str]:
    (tmp_path / "float32_variant.py").write_text(_VARIANT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "CS336_GRADING": ""}
    env.pop("CS336_GRADER_REPORT", None)
    if wrong:
        env["WRONG"] = "1"
    plugins = ["-p", "cs336_grading.pytest_run.plugin"] if graded else []
    if graded:
        env["CS336_GRADER_REPORT"] = str(tmp_path / "events.jsonl")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *plugins,
        "-p",
        "float32_variant",
        "tests/test_functional.py",
        "-k",
        "silu or bf16_in_bf16_out",
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_an_advisory_finding_is_advice_and_the_run_exits_0(tmp_path: Path) -> None:
    run = _pytest(tmp_path, wrong=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "advisory notes" in out and "FAILED" not in out, out[-3000:]
    assert "ADVISORY tests/test_functional.py::test_bf16_in_bf16_out[silu]: silu: bf16 in gave torch.float32 out" in out
    assert "ADVISORY tests/test_functional.py::test_bf16_in_bf16_out[softmax]" in out


def test_a_real_failure_still_fails_the_run(tmp_path: Path) -> None:
    run = _pytest(tmp_path, wrong=True)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert "FAILED tests/test_functional.py::test_silu_hand_worked" in out
    assert "Hint: your output matches the sigmoid alone" in out


def test_under_the_grader_the_advisory_finding_is_still_recorded(tmp_path: Path) -> None:
    # The grader's recorder sees the advisory test's own outcome (failed, advisory: worth 0 points).
    _pytest(tmp_path, wrong=False, graded=True)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    results = {e["nodeid"]: e for e in events if e["event"] == "result"}
    silu = results["tests/test_functional.py::test_bf16_in_bf16_out[silu]"]
    assert silu["status"] == "failed" and silu.get("advisory") is True, silu
    assert results["tests/test_functional.py::test_silu_hand_worked"]["status"] == "passed"
