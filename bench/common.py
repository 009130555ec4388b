"""Shared pieces of the benchmark suite: result rows, interleaved timing, machine information, result files.

Every benchmark module exposes `run(quick: bool = False) -> list[dict]`, one row per figure, in the format
that `make_row` builds:

    {"work": "LM training step, small", "peer": "torch-native oracle + torch.optim.AdamW",
     "ours": 5120.0, "peer_value": 6400.0, "unit": "tokens/s", "ratio": 0.8, "goal": ">= 1x",
     "met": False, "notes": "..."}

`ratio` is always "ours relative to the peer, in the direction of the goal": throughput ours/peer, time
ours/peer (then the goal reads "<= 4x"). Ratios from the same run are what we track: absolute numbers
move with the machine's load, ratios of interleaved measurements much less.
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cs336_common.atomic import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shared data sets (`../shared/data` beside the checkout; `CS336_SHARED_DATA` points elsewhere, e.g. from a worktree).
SHARED_DATA = Path(os.environ.get("CS336_SHARED_DATA") or REPO_ROOT / ".." / "shared" / "data")

ROW_KEYS = ("work", "peer", "ours", "peer_value", "unit", "ratio", "goal", "met", "notes")


def make_row(
    work: str,
    peer: str,
    ours: float,
    peer_value: float,
    unit: str,
    *,
    goal: str | None = None,
    notes: str = "",
) -> dict[str, Any]:
    """One result row; `goal` is `">= X"` or `"<= X"` (a ratio, printed with an x) or None for "report".

    >>> row = make_row("step", "peer", ours=2.0, peer_value=4.0, unit="s", goal="<= 3")
    >>> row["ratio"], row["goal"], row["met"]
    (0.5, '<= 3x', True)
    """
    ratio = ours / peer_value if peer_value else None
    met: bool | None = None
    goal_text = None
    if goal is not None:
        op, _, threshold_text = goal.strip().partition(" ")
        threshold = float(threshold_text.rstrip("x"))
        if op not in (">=", "<="):
            raise ValueError(f"goal must start with '>=' or '<=', got {goal!r}")
        if ratio is not None:
            met = bool(ratio >= threshold) if op == ">=" else bool(ratio <= threshold)
        goal_text = f"{op} {threshold:g}x"
    return {
        "work": work,
        "peer": peer,
        "ours": float(ours),
        "peer_value": float(peer_value),
        "unit": unit,
        "ratio": ratio,
        "goal": goal_text,
        "met": met,
        "notes": notes,
    }


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Wall-clock seconds per call of each function, alternating between them (A B, B A, ...) so that a
    change in the machine's load hits every contestant alike. Warm-up calls are not timed. Take medians.

    `cpu_times`, when given, is filled with the process CPU seconds of the same calls: on a machine shared
    with other jobs, CPU time (single-threaded torch) measures the work done without the time spent waiting
    for a core.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        # Alternate the order too, so that neither always runs right after the other's cache traffic.
        names = list(fns) if i % 2 == 0 else list(reversed(fns))
        for name in names:
            gc.collect()
            cpu_start, start = time.process_time(), time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append(time.process_time() - cpu_start)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
        except OSError:
            pass
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, GPU, versions, date and git commit of this run."""
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": _git_commit(),
        "cpu": _cpu_model(),
        "cores": affinity,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": _ram_gib(),
        "load_average": [round(x, 1) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": _version("numpy"),
            "tokenizers": _version("tokenizers"),
            "tiktoken": _version("tiktoken"),
        },
    }


def _fmt(x: Any) -> str:
    """Compact numbers for the table: `1234567.0 -> '1.235e+06'`, `12.5 -> '12.5'`."""
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def _met_text(met: bool | None) -> str:
    return "report" if met is None else ("met" if met else "NOT met")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table (also readable as plain text)."""
    header = ["work", "peer", "ours", "peer", "unit", "ratio", "goal", "status", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["work"],
            r["peer"],
            _fmt(r["ours"]),
            _fmt(r["peer_value"]),
            r["unit"],
            "-" if r["ratio"] is None else f"{r['ratio']:.3g}x",
            r["goal"] or "-",
            _met_text(r["met"]),
            r.get("notes", ""),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def format_markdown(results: dict[str, Any]) -> str:
    """The whole results document: title, machine, table, failures."""
    m = results["machine"]
    v = m["versions"]
    lines = [
        "# Benchmarks: ours beside a named peer, same machine, same run",
        "",
        f"- date: {m['date']}; git commit: {m['git_commit']}; mode: {'quick' if results['quick'] else 'full'}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['ram_gib']} GiB RAM"
        + (f", GPU {m['gpu']}" if m["gpu"] else "")
        + (f"; load average at the end {m['load_average']}" if m.get("load_average") else ""),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "Ratios compare measurements taken in the same run, interleaved; absolute numbers depend on the load.",
        "",
        format_table(results["rows"]),
    ]
    if results.get("errors"):
        lines += ["", "## Benchmarks that failed", ""]
        lines += [f"- `{name}`: {err}" for name, err in results["errors"].items()]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], directory: Path, stem: str = "latest") -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `directory`; return their paths."""
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    atomic_write_text(md_path, format_markdown(results))
    return json_path, md_path


def tokenize(tokenizer_dir: str | Path, corpus: str | Path, out_dir: str | Path) -> tuple[int, str]:
    """`cs336 tokenize`'s path (`tokenize_files`, engine auto, all cores): the token count and the engine line."""
    import logging

    from cs336_lab.pipeline import tokenize_files

    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    loggers = [logging.getLogger(name) for name in ("cs336_lab.pipeline", "cs336_lab.tiktoken_engine")]
    for log in loggers:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        counts = tokenize_files(tokenizer_dir, [corpus], out_dir, overwrite=True)
    finally:
        for log in loggers:
            log.removeHandler(handler)
    engine = next((line for line in lines if line.startswith("tokenize engine")), "tokenize engine: ?")
    return sum(counts.values()), engine
