"""Grade a whole class: `cs336 grade DIR_OR_ZIPS... --out-dir OUT --jobs N`.

    cs336 grade submissions/ --out-dir grades/ --jobs 4     # a folder of student folders and/or zips
    cs336 grade alice.zip bob/ carol.zip --out-dir grades/

writes, for every submission (named after its folder or zip),

    grades/alice/results.json   Gradescope's format, exactly what `cs336 grade alice.zip` writes
    grades/alice/grading.json   how grading went: fingerprint, seconds, flags, status ("graded", "ungradable", "failed")
    grades/summary.csv          student, points per problem, total, seconds, flags: one row per submission
    grades/scores.png           the distribution of totals

Each submission is graded by its own grader process (`grade()` with one test process at a time; `--jobs`
submissions at once), in its own throw-away workspaces, so a submission that crashes or wedges its grader
costs that submission only: it gets status "failed" with the reason, and the batch goes on. `grading.json`
is written last and atomically: it marks a submission finished. Run the same command again after an
interruption and only the unfinished or failed submissions are graded (a submission whose files changed,
or graded with other settings, is graded again). `--leaderboard CONFIG` also scores each submission's
leaderboard entry (see `leaderboard.py`) into its results.json and the summary.

A single submission (one argument that is itself a submission, no `--out-dir`) keeps the plain
`cs336 grade` behaviour: `results.json` and the table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cs336_common.atomic import atomic_save_figure, atomic_write_json, atomic_write_text
from cs336_grading import untrusted
from cs336_grading.grader import canary, heldout
from cs336_grading.grader.submission import looks_like_zip

log = logging.getLogger(__name__)

SUMMARY = "summary.csv"
HISTOGRAM = "scores.png"
RESULTS = "results.json"
STATE = "grading.json"
FINISHED = ("graded", "ungradable")
# Outcome statuses that are part of normal grading; any other one becomes a flag in the summary.
ORDINARY = frozenset({"passed", "failed", "not_implemented", "skipped"})
_SKIP_DIRS = frozenset({".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis", "node_modules"})


@dataclass(frozen=True)
class Entry:
    """One submission of the batch: the student's name and the folder or zip to grade."""

    student: str
    source: Path


def is_submission(path: Path) -> bool:
    """A zip, or a folder holding `cs336_basics/`, `tests/adapters.py` or `adapters.py` at its top."""
    if path.is_file():
        return path.suffix.lower() == ".zip" or looks_like_zip(path)  # a broken zip is graded: zero, saying why
    return any((path / p).exists() for p in ("cs336_basics", "tests/adapters.py", "adapters.py"))


def discover(paths: Sequence[str | os.PathLike[str]]) -> list[Entry]:
    """The submissions named by `paths`: each a submission, or a folder whose entries are submissions."""
    entries: list[Entry] = []
    for raw in map(Path, paths):
        if not raw.exists():
            raise FileNotFoundError(f"submission {raw} does not exist")
        if is_submission(raw):
            entries.append(Entry(raw.stem if raw.is_file() else raw.name, raw))
            continue
        if not raw.is_dir():
            raise ValueError(f"expected a submission folder or .zip file, or a folder of them, got a file: {raw}")
        children = sorted(p for p in raw.iterdir() if not p.name.startswith(".") and (p.is_dir() or p.suffix == ".zip"))
        if not children:
            raise ValueError(f"expected submissions (folders or .zip files) in {raw}, found none")
        entries.extend(Entry(p.stem if p.is_file() else p.name, p) for p in children)
    names = [e.student for e in entries]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"expected one submission per student, got several named {duplicates}")
    return entries


def wants_batch(paths: Sequence[str], out_dir: str | None) -> bool:
    """Batch mode: several paths, an `--out-dir`, or one folder that holds submissions but is none itself."""
    if len(paths) != 1 or out_dir is not None:
        return True
    path = Path(paths[0])
    if not path.is_dir() or is_submission(path):
        return False
    return sum(is_submission(p) for p in path.iterdir() if not p.name.startswith(".")) >= 2


def fingerprint(source: Path, settings: dict[str, Any]) -> str:
    """A hash of the submission's files and the grading settings: a change in either means grading again."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, path in _fingerprinted(source):
        digest.update(name.encode())
        try:  # NOTE: a student's file: never through a link (but the zip we were given), never blocking on a FIFO
            with os.fdopen(untrusted.open_regular(path, follow_last=not name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            digest.update(f"<unreadable: {e}>".encode())
    return digest.hexdigest()


def _fingerprinted(source: Path) -> list[tuple[str, Path]]:
    """(name, path) of every file of a submission, walked with `lstat` (a link is named, not followed)."""
    if not source.is_dir():
        return [("", source)]
    found: list[tuple[str, Path]] = []
    pending = [source]
    while pending:
        try:
            with os.scandir(pending.pop()) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = Path(entry.path).relative_to(source).as_posix()
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in _SKIP_DIRS:
                    pending.append(Path(entry.path))
            elif entry.is_symlink():
                found.append((f"{rel} -> {os.readlink(entry.path)}", Path(os.devnull)))
            else:
                found.append((rel, Path(entry.path)))
    return sorted(found)


def read_state(directory: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


# ------------------------------------------------------------------------------- one submission


def outcome_flags(result: Any) -> list[str]:
    """The unusual outcomes of a `GradeResult`: timeouts, memory, crashes, a tampered harness, ..."""
    flags = {o.status for o in result.outcomes.values()} - ORDINARY
    if any("modified the grading harness" in o.message for o in result.outcomes.values()):
        flags.add("tampered")
    return sorted(flags)


def grade_one(entry: Entry, out: Path, settings: dict[str, Any], digest: str) -> dict[str, Any]:
    """Grade one submission in this process: `out/results.json`, then `out/grading.json` (its state)."""
    from cs336_grading.grader import grade as grader
    from cs336_grading.pytest_run import sandbox

    t0 = time.monotonic()
    kwargs = {k: v for k, v in settings.items() if k not in ("leaderboard", "heldout")}
    try:
        result = grader.grade(entry.source, jobs=1, **kwargs)
        payload, flags, status = result.to_gradescope(), outcome_flags(result), "graded"
    except sandbox.SubmissionError as e:  # the student's fault: a zero grade that says why
        zero = grader.GradeResult(problems=(), execution_time=0.0, warnings=(f"ungradable submission: {e}",))
        payload, flags, status, reason = zero.to_gradescope(), ["ungradable"], "ungradable", " ".join(str(e).split())
    else:
        reason = ""
    if settings.get("leaderboard"):
        from cs336_grading.staff.leaderboard import add_to_results

        add_to_results(payload, Path(settings["leaderboard"]), entry.source)
    atomic_write_json(out / RESULTS, payload)
    state = {
        "student": entry.student,
        "source": str(entry.source),
        "fingerprint": digest,
        "status": status,
        "flags": flags,
        "seconds": round(time.monotonic() - t0, 1),
        "score": payload["score"],
        **({"reason": reason} if reason else {}),
    }
    atomic_write_json(out / STATE, state)
    return state


Runner = Callable[[Entry, Path, dict[str, Any], str, threading.Event], "dict[str, Any] | None"]


def run_in_subprocess(
    entry: Entry, out: Path, settings: dict[str, Any], digest: str, stop: threading.Event
) -> dict[str, Any] | None:
    """`grade_one` in a grader process of its own; its state, a "failed" state, or None if `stop` was set."""
    out.mkdir(parents=True, exist_ok=True)
    limit = float(settings.get("total_timeout", 1800.0)) + 120.0
    job = json.dumps(
        {
            "student": entry.student,
            "source": str(entry.source),
            "out": str(out),
            "settings": settings,
            "fingerprint": digest,
        }
    )
    t0 = time.monotonic()
    with open(out / "grader.log", "wb") as grader_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cs336_grading.staff.batch", job],
            stdin=subprocess.DEVNULL,
            stdout=grader_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while proc.poll() is None and not stop.is_set() and time.monotonic() - t0 < limit:
            time.sleep(0.1)
        if proc.poll() is None:
            _terminate(proc)
            if stop.is_set():
                return None
    state = read_state(out)
    if proc.returncode == 0 and state is not None and state.get("fingerprint") == digest:
        return state
    tail = (out / "grader.log").read_text(errors="replace").strip().splitlines()[-3:]
    why = f"ran past {limit:g} s" if time.monotonic() - t0 >= limit else f"exit code {proc.returncode}"
    return failed_state(entry, out, digest, time.monotonic() - t0, f"the grader process {why}: {' | '.join(tail)}")


def failed_state(entry: Entry, out: Path, digest: str, seconds: float, error: str) -> dict[str, Any]:
    """Record (in `out/grading.json`) that grading `entry` failed; the next run grades it again."""
    state = {
        "student": entry.student,
        "source": str(entry.source),
        "fingerprint": digest,
        "status": "failed",
        "flags": ["grading-failed"],
        "seconds": round(seconds, 1),
        "score": None,
        "error": error[-400:],
    }
    atomic_write_json(out / STATE, state)
    return state


def _terminate(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM first (the grader then kills its own test processes), SIGKILL after `grace` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _worker_main(job_json: str) -> int:
    """The grader process of one submission (`python -m cs336_grading.staff.batch JOB`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # grade() then kills its test processes on the way out

    signal.signal(signal.SIGTERM, interrupt)
    job = json.loads(job_json)
    entry = Entry(job["student"], Path(job["source"]))
    grade_one(entry, Path(job["out"]), job["settings"], job["fingerprint"])
    return 0


# ----------------------------------------------------------------------------------------- batch


def _finished_and_todo(
    entries: Sequence[Entry], out_dir: Path, settings: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], list[tuple[Entry, str]]]:
    """The states of entries finished before with these settings, and the (entry, fingerprint) pairs to grade."""
    states: dict[str, dict[str, Any]] = {}
    todo: list[tuple[Entry, str]] = []
    for entry in entries:
        digest = fingerprint(entry.source, settings)
        state = read_state(out_dir / entry.student)
        if state is not None and state.get("fingerprint") == digest and state.get("status") in FINISHED:
            states[entry.student] = state
        else:
            todo.append((entry, digest))
    return states, todo


def grade_batch(
    entries: Sequence[Entry],
    out_dir: Path,
    settings: dict[str, Any],
    *,
    jobs: int = 1,
    runner: Runner = run_in_subprocess,
) -> list[dict[str, Any]]:
    """Grade every unfinished entry (`jobs` at a time) and write the summary; returns the states, in order.

    On Ctrl-C or SIGTERM the running graders are stopped, the summary is written for what finished, and
    KeyboardInterrupt propagates: running the batch again resumes it.
    """
    if jobs < 1:
        raise ValueError(f"expected --jobs >= 1, got {jobs}")
    states, todo = _finished_and_todo(entries, out_dir, settings)
    log.info("%d submission(s): %d finished before, %d to grade", len(entries), len(states), len(todo))
    stop = threading.Event()

    def run(entry: Entry, digest: str) -> None:
        if stop.is_set():
            return
        t0 = time.monotonic()
        try:
            state = runner(entry, out_dir / entry.student, settings, digest, stop)
        except Exception as e:  # one submission never stops the batch
            state = failed_state(
                entry, out_dir / entry.student, digest, time.monotonic() - t0, f"{type(e).__name__}: {e}"
            )
        if state is not None:
            states[entry.student] = state
            log.info(
                "%s: %s, %s points%s",
                entry.student,
                state["status"],
                state["score"],
                f" ({', '.join(state['flags'])})" if state["flags"] else "",
            )

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(run, entry, digest) for entry, digest in todo]
        for future in futures:
            while not future.done():  # short waits: the main thread stays responsive to Ctrl-C
                time.sleep(0.1)
            future.result()
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        write_summary(out_dir, [states[e.student] for e in entries if e.student in states])
    return [states[e.student] for e in entries]


def summary_rows(out_dir: Path, states: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of summary.csv: student, one column per problem, total, [leaderboard], seconds, needs_review
    (the escape hatches found, `audit.review`), flags, status."""
    results = {}
    for state in states:
        try:
            results[state["student"]] = json.loads((out_dir / state["student"] / RESULTS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            results[state["student"]] = {}
    problems: list[str] = []
    for payload in results.values():
        problems += [t["name"] for t in payload.get("tests", []) if t["name"] not in problems]
    board = ["leaderboard"] if any("leaderboard" in payload for payload in results.values()) else []
    rows = []
    for state in states:
        payload = results[state["student"]] if state["status"] in FINISHED else {}
        points = {t["name"]: t["score"] for t in payload.get("tests", [])}
        entry = {"leaderboard": payload["leaderboard"][0]["value"] if "leaderboard" in payload else ""}
        rows.append(
            {
                "student": state["student"],
                **{p: points.get(p, "") for p in problems},
                "total": payload.get("score", ""),
                **{k: entry[k] for k in board},
                "seconds": state["seconds"],
                "needs_review": " | ".join(payload.get("needs_review", [])[:5]),
                "flags": ";".join(state["flags"]),
                "status": state["status"],
            }
        )
    # Why a submission was refused (one line), in a column of its own when any was.
    if any(state.get("reason") for state in states):
        for row, state in zip(rows, states):
            row["reason"] = str(state.get("reason", ""))
    columns = ["student", *problems, "total", *board, "seconds", "needs_review", "flags", "status"]
    columns += ["reason"] if any("reason" in row for row in rows) else []
    return columns, sorted(rows, key=lambda r: r["student"])


def write_summary(out_dir: Path, states: Sequence[dict[str, Any]]) -> Path:
    """`summary.csv` (atomically) and the score histogram `scores.png`; returns the CSV's path."""
    columns, rows = summary_rows(out_dir, states)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / SUMMARY, text.getvalue())
    totals = [float(r["total"]) for r in rows if r["total"] != ""]
    try:
        plot_scores(totals, out_dir / HISTOGRAM)
    except ImportError:
        log.warning("matplotlib is not installed: no %s", HISTOGRAM)
    return out_dir / SUMMARY


def plot_scores(totals: Sequence[float], path: Path) -> None:
    """A histogram of the totals, one bar per point, into a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = int(max(totals, default=0)) + 1
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    # One bar per whole point, centred on it: each total counts at its nearest whole point (halves round up).
    ax.hist(totals, bins=[b - 0.5 for b in range(top + 1)], color="tab:blue", edgecolor="white")
    ax.set_xlabel("total points")
    ax.set_ylabel("submissions")
    ax.set_title(f"{len(totals)} graded submission(s)")
    fig.tight_layout()
    atomic_save_figure(fig, path)


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch options of `cs336 grade` (its `submission` argument takes several paths)."""
    parser.add_argument(
        "--out-dir",
        default=None,
        help="batch mode: one folder per submission, summary.csv and scores.png here "
        "(--jobs then counts submissions graded at once)",
    )
    parser.add_argument("--leaderboard", default=None, help="batch mode: the staff's leaderboard config (TOML)")
    parser.add_argument(
        "--canary",
        default=None,
        help="batch mode: the known-correct submission graded first (default: the installed reference)",
    )
    parser.add_argument(
        "--no-canary",
        action="store_true",
        help="batch mode: skip grading the canary (a broken environment then goes unnoticed)",
    )


def _check_canary(args: argparse.Namespace, settings: dict[str, Any], secret: str | None) -> None:
    """Grade the canary with the batch's settings (`canary.py`); CanaryError stops the batch."""
    from cs336_grading.grader.grade import default_harness
    from cs336_grading.pytest_run.sandbox import Harness

    kwargs = {k: v for k, v in settings.items() if k not in ("leaderboard", "heldout")}
    kwargs["jobs"] = args.jobs
    with tempfile.TemporaryDirectory(prefix="cs336-canary-") as tmp:
        if args.canary is not None:
            source = Path(args.canary)
        else:
            harness = Harness.load(settings["harness"] or default_harness())
            source = canary.lay_out(Path(tmp), canary.reference_files(harness.files["tests/adapters.py"]))
        seconds = canary.check(source, kwargs, secret)
    log.info("the canary scored full marks in %.0f s: the environment grades correct work correctly", seconds)


def main(args: argparse.Namespace) -> int:
    """`cs336 grade` in batch mode (see the module docstring)."""
    entries = discover(args.submission)
    out_dir = Path(args.out_dir or "grades")
    settings = {
        "harness": str(Path(args.harness).resolve()) if args.harness else None,
        "timeout": args.timeout,
        "memory_mb": args.memory_mb or None,
        "total_timeout": args.total_timeout,
        "problems": None if args.problems is None else [p.strip() for p in args.problems.split(",") if p.strip()],
        "isolate_each": args.isolate_each_test,
        "builtins": args.builtins,
        "leaderboard": str(Path(args.leaderboard).resolve()) if args.leaderboard else None,
    }
    if settings["leaderboard"]:
        from cs336_grading.staff.leaderboard import LeaderboardConfig

        LeaderboardConfig.load(settings["leaderboard"])  # a broken config fails now, not once per student
    try:
        secret = heldout.secret_from(args.secret_file)
    except (OSError, ValueError) as e:
        log.error("the grading secret: %s", e)
        return 2
    if secret:  # the graders get it in their environment, never on a command line; the summary keeps its id
        os.environ[heldout.SECRET_ENV] = secret
        settings["heldout"] = heldout.secret_id(secret)
    if not args.no_canary:
        try:
            _check_canary(args, settings, secret)
        except canary.CanaryError as e:
            log.error("grading stopped: %s", e)
            return 1
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops cleanly too
    try:
        states = grade_batch(entries, out_dir, settings, jobs=args.jobs or os.cpu_count() or 1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [s["student"] for s in states if s["status"] == "failed"]
    log.info(
        "wrote %s (%d submissions)%s",
        out_dir / SUMMARY,
        len(states),
        f"; grading failed for {', '.join(failed)}: run again to retry" if failed else "",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1]))
