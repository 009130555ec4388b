"""The benchmark harness: result rows, interleaved timing, the `python -m bench` aggregator and its files."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bench.common as common
from bench.__main__ import main
from bench.common import ROW_KEYS, make_row, time_interleaved

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_doctests() -> None:
    assert doctest.testmod(common).failed == 0


@pytest.mark.parametrize(
    ("ours", "peer", "goal", "ratio", "goal_text", "met"),
    [
        (2.0, 4.0, ">= 1", 0.5, ">= 1x", False),
        (6.0, 4.0, ">= 1x", 1.5, ">= 1x", True),
        (12.0, 4.0, "<= 3", 3.0, "<= 3x", True),  # the boundary counts as met
        (13.0, 4.0, "<= 3", 3.25, "<= 3x", False),
        (1.0, 4.0, None, 0.25, None, None),  # "report": no goal
        (1.0, 0.0, ">= 1", None, ">= 1x", None),  # no peer figure: no ratio, no verdict
    ],
    ids=["below", "above", "boundary", "too_slow", "report", "no_peer"],
)
def test_make_row(ours: float, peer: float, goal: str | None, ratio, goal_text, met) -> None:
    row = make_row("work", "peer", ours, peer, "tokens/s", goal=goal)
    assert tuple(row) == ROW_KEYS
    assert row["ratio"] == ratio and row["goal"] == goal_text and row["met"] is met


def test_make_row_rejects_bad_goal() -> None:
    with pytest.raises(ValueError, match="goal must start with"):
        make_row("w", "p", 1.0, 1.0, "s", goal="== 1")


def test_time_interleaved_alternates() -> None:
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    cpu: dict[str, list[float]] = {}
    times = time_interleaved(fns, repeats=3, warmup=1, cpu_times=cpu)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} == {k: len(v) for k, v in cpu.items()}
    assert all(t >= 0 for ts in times.values() for t in ts)


@pytest.fixture
def fake_benchmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Two importable benchmark modules: one returning two rows, one that fails."""
    (tmp_path / "fake_bench_ok.py").write_text(
        textwrap.dedent(
            """
            from bench.common import make_row

            def run(quick=False):
                return [
                    make_row("fast thing", "peer A", 10.0, 5.0, "items/s", goal=">= 1", notes=f"quick={quick}"),
                    make_row("slow | thing", "peer B", 9.0, 2.0, "s", goal="<= 4"),
                ]
            """
        )
    )
    (tmp_path / "fake_bench_broken.py").write_text("def run(quick=False):\n    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fake_bench_ok", "fake_bench_broken"


def test_main_writes_json_and_markdown(fake_benchmarks, tmp_path: Path, capsys) -> None:
    ok, _ = fake_benchmarks
    out, docs = tmp_path / "results", tmp_path / "docs"
    assert main(["--quick", "--only", ok, "--out-dir", str(out), "--docs-dir", str(docs)]) == 0
    printed = capsys.readouterr().out
    assert "fast thing" in printed and "NOT met" in printed  # 9 s vs 2 s is 4.5x > 4x
    for directory in (out, docs):
        results = json.loads((directory / "latest.json").read_text())
        assert set(results) >= {"machine", "quick", "rows", "errors", "seconds"}
        assert results["quick"] is True and results["errors"] == {}
        assert set(results["machine"]) >= {"date", "git_commit", "cpu", "cores", "ram_gib", "versions"}
        assert set(results["machine"]["versions"]) == {"python", "torch", "numpy", "tokenizers", "tiktoken"}
        rows = results["rows"]
        assert [r["work"] for r in rows] == ["fast thing", "slow | thing"]
        assert [(r["ratio"], r["met"]) for r in rows] == [(2.0, True), (4.5, False)]
        assert rows[0]["notes"] == "quick=True" and rows[0]["benchmark"] == ok
        markdown = (directory / "latest.md").read_text()
        assert markdown.startswith("# Benchmarks")
        table = [line for line in markdown.splitlines() if line.startswith("|")]
        assert len(table) == 2 + len(rows)
        assert all(line.count("|") == table[0].count("|") for line in table)  # "|" in a cell is escaped
    assert len(list(out.glob("*.json"))) == 2  # latest plus a time-stamped copy


def test_main_records_a_failing_benchmark(fake_benchmarks, tmp_path: Path, capsys) -> None:
    ok, broken = fake_benchmarks
    assert main(["--only", ok, "--only", broken, "--out-dir", str(tmp_path)]) == 1
    assert f"FAILED {broken}: RuntimeError: boom" in capsys.readouterr().out
    results = json.loads((tmp_path / "latest.json").read_text())
    assert len(results["rows"]) == 2 and results["errors"] == {broken: "RuntimeError: boom"}
    assert "## Benchmarks that failed" in (tmp_path / "latest.md").read_text()


def test_main_rejects_bad_threads(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--threads", "0", "--out-dir", str(tmp_path)])


@pytest.mark.slow
def test_model_benchmark_quick_end_to_end(tmp_path: Path) -> None:
    """The real LM benchmark in quick mode, as `make bench` runs it (a subprocess: argv, imports, files)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "model", "--threads", "1", "--out-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    rows = results["rows"]
    # Per model: the fused kernels (the trainer's path, with the goal) and the textbook form; then decoding.
    assert [r["unit"] for r in rows] == ["tokens/s"] * 5
    assert all(r["ours"] > 0 and r["peer_value"] > 0 and r["ratio"] > 0 for r in rows)
    assert [r["goal"] for r in rows] == [">= 1x", None, ">= 1x", None, None]
    assert all("GFLOP/s" in r["notes"] for r in rows[:4])
    assert "KV-cache speed-up" in rows[4]["notes"]
