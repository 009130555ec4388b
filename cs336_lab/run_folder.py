"""One run per folder: a run locks its `out_dir` for its lifetime, and never overwrites an earlier run silently.

    with hold_run_folder(config, ctx):      # at the start of `train`, before anything is read or written
        ...                                 # the whole run

- **The lock.** A run holds an exclusive `fcntl.flock` on `out_dir/.cs336-run.lock` (which names its pid) until
  it ends; the OS drops the lock when the process dies, however it dies, so a crash never leaves a stale lock.
  A second run into the same folder is refused at once (`RunFolderBusyError`), naming the holder's pid: two
  runs at once would interleave `metrics.jsonl` and leave one's config beside the other's checkpoint.
- **An earlier run.** A folder that holds a run (`config.json`, `ckpt_latest.pt` or `metrics.jsonl`) is refused
  (`FileExistsError`) unless the run asks for `resume` (continue it) or `start_over`. Starting over deletes
  nothing: the earlier run's files (`RUN_FILES`) move into a new sibling folder `<out_dir>.old-<timestamp>`.
  NOTE: only the run's own files move, not the folder: the lock stays held throughout (no other run can slip
  in between), and whatever else the user keeps in the folder (data, notes) stays where their paths say.

- **The outcome.** `outcome.json` says how the run last ended (`OUTCOMES`), with its step and, for a run that
  diverged or failed, why: `cs336 compare` shows it. A run writes "running" (with its pid) when its loop starts;
  "running" whose process is gone reads as "killed" (a SIGKILL or a power cut leaves no time to write).

Under torchrun only rank 0 touches the folder; its verdict is shared with every rank, so that all of them fail
together (none is left waiting in a collective for a rank that gave up). POSIX only: elsewhere nothing is locked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from cs336_common.atomic import atomic_write_json, fsync_directory, prepare_directory, process_alive

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = ".cs336-run.lock"
# What marks a folder as holding a run, and what `start_over` moves aside (everything `train` and `sweep` write).
RUN_MARKERS = ("config.json", "ckpt_latest.pt", "metrics.jsonl")
OUTCOME_NAME = "outcome.json"
RUN_FILES = (*RUN_MARKERS, "loss_curve.png", "status.json", OUTCOME_NAME)
# What `outcome.json` may say: "stopped" by a signal (resumable), "failed" on an error (e.g. a full disk).
OUTCOMES = ("running", "done", "stopped", "diverged", "failed")

__all__ = [
    "LOCK_NAME",
    "RUN_FILES",
    "RunFolderBusyError",
    "run_files",
    "lock_run_folder",
    "check_run_folder",
    "hold_run_folder",
    "OUTCOME_NAME",
    "write_outcome",
    "read_outcome",
]


class RunFolderBusyError(FileExistsError):
    """Another live process holds the run folder's lock."""


def run_files(out_dir: str | os.PathLike[str]) -> list[str]:
    """The names of the files of a run that `out_dir` holds (empty when it holds none)."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).is_file()]


@contextlib.contextmanager
def lock_run_folder(out_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of `out_dir` (created if needed); `RunFolderBusyError` when another process has it."""
    out_dir = prepare_directory(out_dir, "out_dir")
    if fcntl is None:
        yield
        return
    handle: TextIO = open(out_dir / LOCK_NAME, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunFolderBusyError(
                f"out_dir {out_dir} is in use by another run (pid {holder}): expected a folder no running "
                "`cs336 train` writes to; wait for that run to end, or choose another --out-dir"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the lock


def _move_aside(out_dir: Path, names: list[str]) -> Path:
    """Move the run files `names` of `out_dir` into a new sibling `<out_dir>.old-<timestamp>`; return it."""
    base = out_dir.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = base.with_name(f"{base.name}.old-{stamp}")
    number = 1
    while True:
        try:
            aside.mkdir()
            break
        except FileExistsError:
            number += 1
            aside = base.with_name(f"{base.name}.old-{stamp}-{number}")
    for name in names:
        os.replace(out_dir / name, aside / name)
    fsync_directory(aside)
    fsync_directory(out_dir)
    return aside


def check_run_folder(out_dir: str | os.PathLike[str], *, resume: bool, start_over: bool) -> None:
    """Refuse a folder holding an earlier run unless `resume`; with `start_over`, move that run aside first."""
    out_dir = Path(out_dir)
    found = run_files(out_dir)
    if resume or not found:
        return
    if start_over:
        aside = _move_aside(out_dir, found)
        logger.info("start_over: moved the earlier run in %s (%s) to %s", out_dir, ", ".join(found), aside)
        return
    raise FileExistsError(
        f"out_dir {out_dir} already holds a run ({', '.join(found)}): pass --resume to continue it, or "
        f"--start-over to move it to a new folder {out_dir.resolve().name}.old-<timestamp> beside it and train anew"
    )


@contextlib.contextmanager
def hold_run_folder(config: Any, ctx: Any) -> Iterator[None]:
    """Lock `config.out_dir` and check it (`check_run_folder`) on rank 0, for the lifetime of the block.

    `ctx` is the run's `DistributedContext`; every rank raises rank 0's error, so none waits for the others.
    """
    with contextlib.ExitStack() as stack:
        problem: tuple[type[BaseException], str] | None = None
        if ctx.is_main:
            try:
                stack.enter_context(lock_run_folder(config.out_dir))
                check_run_folder(config.out_dir, resume=config.resume, start_over=config.start_over)
            except (FileExistsError, ValueError, OSError) as err:
                problem = (type(err), str(err))
        problem = ctx.gather(problem)[0]
        if problem is not None:
            kind, message = problem
            raise kind(message)
        yield


def write_outcome(out_dir: str | os.PathLike[str], status: str, *, step: int, tokens: int, error: str = "") -> None:
    """Record how the run in `out_dir` ended (or that it runs); best effort: a full disk must not hide the error
    that stopped the run behind this file's."""
    if status not in OUTCOMES:
        raise ValueError(f"expected an outcome in {OUTCOMES}, got {status!r}")
    record = {"status": status, "step": step, "tokens": tokens, "pid": os.getpid(), "time": time.time()}
    try:
        atomic_write_json(Path(out_dir) / OUTCOME_NAME, record | ({"error": error} if error else {}))
    except OSError as err:
        logger.debug("could not write %s: %s", Path(out_dir) / OUTCOME_NAME, err)


def read_outcome(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """`outcome.json` of `out_dir` (None when absent or unreadable); a "running" run whose process is gone is
    "killed"."""
    try:
        record = json.loads((Path(out_dir) / OUTCOME_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in OUTCOMES:
        return None
    pid = record.get("pid")
    if record["status"] == "running" and not (isinstance(pid, int) and pid > 0 and process_alive(pid)):
        record["status"] = "killed"
    return record
