"""The grader's end of the worker: calls into student code from the pytest process that asserts, which
student code never touches.

    client = WorkerClient(WorkerConfig.from_env())
    client.begin_test("tests/test_model.py::test_linear[vector]", budget_s=1.5)
    y = client.call("adapters", "run_linear", (24, 40, w, x), {})    # runs in the worker
    record = client.end_test()        # worker seconds (wall clock, measured here), peak RSS, audit findings

Every call is timed here (the round trip's wall clock) and charged to the current test's budget; when the
budget runs out, or the worker dies, the worker is killed with everything it forked, the test fails with
the reason, and the next test gets a fresh worker from the fork server. What a worker raises comes back as
`StudentError` (any `Exception`: tests that expect an error accept it), as `NotImplementedError`, or as a
`WorkerFailure` (a `BaseException`: skips, exits, interrupts, hangs, deaths, memory), which no test catches.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import count
from pathlib import Path
from typing import Any

from cs336_grading import untrusted
from cs336_grading.env import SECRET_ENV, WORKER_ENV  # noqa: F401 - WORKER_ENV re-exported
from cs336_grading.rules import SEALED_MARK
from cs336_grading.worker import wire

# What a worker's output says when an allocation failed outside Python (RLIMIT_AS in C++ code).
MEMORY_MARKERS = (
    "MemoryError",
    "std::bad_alloc",
    "can't allocate memory",
    "Cannot allocate memory",
    "DefaultCPUAllocator",
    "out of memory",
)
CALL_SHARE, CALL_FLOOR_S = 0.4, 1.5  # the most of a test's budget that one call may use, and its floor
# A function that already hung in SUSPECT_AFTER tests of this process gets SUSPECT_S per call from then on:
# a submission that hangs everywhere grades in minutes, and a correct one never comes near (its calls
# take milliseconds where this applies).
SUSPECT_AFTER, SUSPECT_S = 1, 0.5
# No wait on a worker is unbounded: a call outside any test (no budget) still ends after MAX_CALL_S, and a
# reply must arrive whole by the call's deadline (a worker trickling bytes cannot keep the grader reading).
MAX_CALL_S = 600.0
CONTROL_TIMEOUT_S = 30.0  # the fork server answers in milliseconds; it is never left to hang a test
LOG_TAIL_BYTES = 3000  # the most of a dead worker's log that the grader reads
# Workers one test file may start (the first and its replacements after deaths and hangs); past that, the
# file's remaining tests fail at once: a submission that dies everywhere costs a few budgets, not minutes.
MAX_STARTS_PER_FILE = 4
_ABORTS = ("Skipped", "Exit", "Failed", "XFailed", "SystemExit", "KeyboardInterrupt", "GeneratorExit")


class StudentError(Exception):
    """Student code raised an ordinary exception; its type, message and innermost frames are kept.

    `bases`: the names of the student's exception class and its ancestors (tests that accept only some
    exception types check them).
    """

    bases: tuple[str, ...] = ()


class WorkerFailure(BaseException):
    """A call that ended badly beyond an exception: `kind` is "timeout", "memory", "died" or "abort"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class WorkerConfig:
    """How the pytest process reaches workers (passed by `cs336 grade` in the environment, as JSON)."""

    server: str  # the fork server's Unix socket
    template: str  # the worker workspace to copy: the submission and the scenarios, nothing else
    scratch: str  # where workspaces are made
    memory_mb: int | None = None
    cpu_s: int = 600
    uid: int | None = None  # the workers' own user id (root only)
    start_timeout_s: float = 20.0
    seal: bool = True  # replace the forbidden built-ins' kernels in the worker (`seal.seal`); off: "warn" mode

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str | None = None) -> WorkerConfig:
        return cls(**json.loads(text if text is not None else os.environ[WORKER_ENV]))


class RemoteObject:
    """A worker-side object (a Tokenizer): its methods are called in the worker."""

    def __init__(self, client: WorkerClient, handle: wire.Handle, generation: int) -> None:
        self._client, self._handle, self._generation = client, handle, generation

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._client.method(self, name, args, kwargs)

    def __repr__(self) -> str:
        return f"<{self._handle.type_name} in the worker>"


def _handle_of(value: Any) -> wire.Handle:
    if isinstance(value, RemoteObject):
        return value._handle
    raise wire.WireError(f"cannot send a value of type {type(value).__name__} to the worker")


class WorkerClient:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._control: socket.socket | None = None
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        self._workspace: Path | None = None
        self._generation = 0
        self._names = count()
        self._start_failure: WorkerFailure | None = None
        self.walls: dict[str, Any] = {}
        self.cgroup: str | None = None  # the current worker's memory cgroup (the fork server's), if any
        self.starts: dict[str, int] = {}  # test file -> workers started for its tests
        self.hangs: dict[str, int] = {}  # function -> tests of this process in which it timed out
        # One user id per pytest process: killing "every process of the uid" then spares the other jobs.
        self.uid = None if config.uid is None else config.uid + os.getpid() % 100_000
        self.begin_test("", float("inf"))

    # ----------------------------------------------------------------------------------- per test
    def begin_test(self, nodeid: str, budget_s: float) -> None:
        self.nodeid, self.budget_s, self.spent_s = nodeid, budget_s, 0.0
        self.failure: WorkerFailure | None = None
        self.findings: list[str] = []
        self.peak_kib = 0
        self.calls: dict[str, list[float]] = {}  # what -> [calls, seconds] in this test
        self.first_raised: BaseException | None = None  # this test's first error raised by student code

    def end_test(self) -> dict[str, Any]:
        self._note_peak()
        return {
            "worker_seconds": round(self.spent_s, 4),
            "peak_mib": round(self.peak_kib / 1024, 1),
            "walls": sorted(k for k, v in self.walls.items() if v is True),
            "memory_measure": str(self.walls.get("memory", "")),
            "findings": self.findings[:10],
        }

    # -------------------------------------------------------------------------------------- calls
    def call(self, module: str, name: str, args: Any, kwargs: Any) -> Any:
        result = self._request({"op": "call", "module": module, "name": name}, name, args, kwargs)
        if (module, name) == ("scenarios", "optimizer_ancestry") and isinstance(result, list):
            borrowed = [
                c for c in result if str(c).startswith("torch.optim.") and c != "torch.optim.optimizer.Optimizer"
            ]
            self.findings.extend(f"get_adamw_cls: the optimizer class derives from {c}" for c in borrowed)
        return result

    def method(self, owner: RemoteObject, name: str, args: Any, kwargs: Any) -> Any:
        if owner._generation != self._generation:
            raise WorkerFailure("died", f"{owner!r} lived in a worker that has since been replaced")
        header = {"op": "method", "handle": owner._handle.id, "name": name}
        return self._request(header, f"{owner._handle.type_name}.{name}", args, kwargs)

    def pid(self) -> int:
        self._ensure_worker()
        assert self._pid is not None
        return self._pid

    def _request(self, header: dict[str, Any], what: str, args: Any, kwargs: Any) -> Any:
        if self.failure is not None:
            raise self.failure  # a test whose worker failed once gets no second worker
        reply: dict[str, Any] = {}
        out: list[bytes] = []
        if self.budget_s - self.spent_s <= 0:
            error = self._budget_used_up(what)
        else:
            reply, out = self._exchange(header, what, args, kwargs)
            error = self._raised(what, reply["error"]) if "error" in reply else None
            self.first_raised = self.first_raised or error
        if error is not None:
            # NOTE: one raise for both, so that a property test sees the same failure (Hypothesis tells
            # failures apart by where they were raised) when its retries used up the budget.
            raise error
        generation = self._generation
        try:
            return wire.decode(reply.get("ok"), out, lambda h: RemoteObject(self, h, generation))
        except (wire.WireError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            self._fail("died", f"the worker running {what} sent a malformed reply ({type(e).__name__}: {e})")
            raise AssertionError("unreachable") from e

    def _exchange(self, header: dict[str, Any], what: str, args: Any, kwargs: Any) -> tuple[dict[str, Any], list]:
        """Send one call to the worker and wait for its reply, counting its time against the test's budget."""
        self._ensure_worker()
        buffers: list[bytes] = []
        header = {
            **header,
            "args": wire.encode(list(args), buffers, _handle_of, map_path=self._inbox),
            "kwargs": wire.encode(dict(kwargs), buffers, _handle_of, map_path=self._inbox),
        }
        started = time.monotonic()
        try:
            assert self._sock is not None
            self._sock.settimeout(max(self._call_limit(what)[0], 0.5))  # a worker that reads nothing
            try:
                wire.send(self._sock, header, buffers)
            except TimeoutError:
                self._fail("timeout", f"{what} did not take its arguments within the test's limit")
            reply, out = self._receive(what)
        except WorkerFailure:
            raise
        except BaseException:
            self._stop_worker()  # interrupted mid-call (a signal, Ctrl-C): that worker's state is unknown
            raise
        finally:
            self.spent_s += time.monotonic() - started
            tally = self.calls.setdefault(what, [0, 0.0])
            tally[0] += 1
            tally[1] += time.monotonic() - started
        self.findings.extend(str(f) for f in reply.get("audit", []) if isinstance(f, str))
        message = str(reply.get("error", {}).get("message", "")) if isinstance(reply.get("error"), dict) else ""
        if SEALED_MARK in message and not any(SEALED_MARK in f or "reached the kernel" in f for f in self.findings):
            self.findings.append(f"{what}: {message[:200]}")  # the evidence list was emptied: the error says it
        return reply, out

    def _call_limit(self, what: str) -> tuple[float, bool]:
        """(the seconds one call of `what` may take now, whether it is a suspect that hung before)."""
        # One call may use a share of the test's budget: a property test's examples are many small calls,
        # so a hang in the first one need not wait for the whole budget.
        left = min(self.budget_s - self.spent_s, max(CALL_FLOOR_S, CALL_SHARE * self.budget_s), MAX_CALL_S)
        suspect = self.hangs.get(what, 0) >= SUSPECT_AFTER
        return (min(left, SUSPECT_S) if suspect else left), suspect

    def _receive(self, what: str) -> tuple[dict[str, Any], list[bytes]]:
        assert self._sock is not None
        left, suspect = self._call_limit(what)
        waited_from = time.monotonic()
        ready, _, _ = select.select([self._sock], [], [], max(0.0, left))
        if not ready:
            self.hangs[what] = self.hangs.get(what, 0) + 1
            limit = f"{max(left, 0.0):.3g} s" + (f" (it hung in {SUSPECT_AFTER} earlier tests)" if suspect else "")
            limit += f" (the test's: {self.budget_s:.3g} s" + (f", used by {self._used_by()})" if self.calls else ")")
            self._fail("timeout", f"{what} did not return within its limit of {limit}")
        try:
            # The whole reply by the call's limit (at least half a second once it has begun).
            return wire.receive(self._sock, deadline=max(waited_from + left, time.monotonic() + 0.5))
        except (EOFError, OSError) as e:
            if isinstance(e, TimeoutError):
                self._fail("timeout", f"{what} did not finish its reply within the test's limit")
            self._fail(*self._death(what))
        except wire.WireError as e:
            self._fail("died", f"the worker running {what} sent a malformed reply ({e})")
        raise AssertionError("unreachable")

    def _used_by(self) -> str:
        """Which calls of this test used its time: the three heaviest, with their count and seconds."""
        heaviest = sorted(self.calls.items(), key=lambda item: -item[1][1])[:3]
        return ", ".join(f"{name} ({int(n)} call{'s' * (n != 1)}, {sec:.3g} s)" for name, (n, sec) in heaviest)

    def _budget_used_up(self, what: str) -> BaseException:
        """Refuse to send `what`: this test's earlier calls used up its budget. A call that raised says so.

        A property test retries a failing example many times (to shrink it): when its first failure was a
        raising call, that error is raised again, naming the budget, instead of a timeout nobody caused.
        """
        used = f"the test's budget of {self.budget_s:.3g} s was used up by {self._used_by()}"
        first = self.first_raised
        if first is not None and not isinstance(first, WorkerFailure):
            said, _, where = str(first).partition("\n")
            again = type(first)(f"{said} ({what} not called again: {used})\n{where}".rstrip())
            if hasattr(first, "bases"):
                again.bases = first.bases  # type: ignore[attr-defined]
            return again
        self._fail("timeout", f"{what} was not called: {used}", raise_=False)
        assert self.failure is not None
        return self.failure

    def _raised(self, what: str, error: Any) -> BaseException:
        error = error if isinstance(error, dict) else {}
        kind, message = str(error.get("type", "Error")), str(error.get("message", ""))[:2000]
        bases = [str(b) for b in error.get("bases", [])]
        text = f"{what} raised {kind}: {message}".strip()
        if "NotImplementedError" in bases:
            return NotImplementedError(text)
        if "MemoryError" in bases or any(m in message for m in MEMORY_MARKERS):
            self._fail("memory", text, raise_=False)
            return self.failure  # type: ignore[return-value]
        if kind in _ABORTS or "Exception" not in bases:
            return WorkerFailure("abort", f"{text} (only the harness may skip, exit or interrupt a test)")
        where = str(error.get("traceback", ""))[-1500:]
        student_error = StudentError(f"{text}\n{where}".rstrip())
        student_error.bases = tuple(bases)
        return student_error

    def _fail(self, kind: str, message: str, raise_: bool = True) -> None:
        self._note_peak()
        self._stop_worker()
        self.failure = WorkerFailure(kind, message)
        if raise_:
            raise self.failure

    def _death(self, what: str) -> tuple[str, str]:
        status, peak_kib = self._server({"op": "status", "pid": self._pid}).get("status"), 0
        tail = self._log_tail()
        if status is None:
            how = "ended"
        elif os.WIFSIGNALED(status):
            how = f"died (signal {signal.Signals(os.WTERMSIG(status)).name})"
        else:
            how = f"exited (exit code {os.WEXITSTATUS(status)})"
        memory = any(m in tail for m in MEMORY_MARKERS) or self._oom_killed()
        del peak_kib
        return ("memory" if memory else "died"), f"the worker running {what} {how}" + (f": {tail}" if tail else "")

    # ------------------------------------------------------------------------------------ workers
    def _ensure_worker(self) -> None:
        if self._sock is not None:
            return
        if self._start_failure is not None:
            raise self._start_failure
        file = self.nodeid.split("::")[0]
        if self.starts.get(file, 0) >= MAX_STARTS_PER_FILE:
            self.failure = WorkerFailure(
                "died",
                f"the worker was started {MAX_STARTS_PER_FILE} times for {file} "
                "(it died or hung each time): this file's remaining tests fail at once",
            )
            raise self.failure
        self.starts[file] = self.starts.get(file, 0) + 1
        started = time.monotonic()
        try:
            self._start_worker()
        finally:
            self.spent_s += time.monotonic() - started  # NOTE: a slow import is the test's, which needed it

    def _start_worker(self) -> None:
        self._workspace = Path(self.config.scratch) / f"ws-{os.getpid()}-{next(self._names)}"
        shutil.copytree(self.config.template, self._workspace, symlinks=True)
        (self._workspace / "inbox").mkdir()
        request = {
            "op": "fork",
            "workspace": str(self._workspace),
            "uid": self.uid,
            "memory_mb": self.config.memory_mb,
            "cpu_s": self.config.cpu_s,
            "seal": self.config.seal,
        }
        control = self._connect()
        wire.send(control, request, [])
        _, fds, _, _ = socket.recv_fds(control, 1, 1)
        forked = wire.receive(control)[0]
        self._pid, self.cgroup = int(forked["pid"]), forked.get("cgroup") or None
        self._sock = socket.socket(fileno=fds[0])
        self._generation += 1
        # The start (the submission's import) is charged to the test that needed the worker: it may use
        # what is left of that test's budget, and no more than the start limit.
        limit = max(0.0, min(self.config.start_timeout_s, self.budget_s - self.spent_s))
        ready, _, _ = select.select([self._sock], [], [], limit)
        try:
            if not ready:
                raise TimeoutError
            deadline = time.monotonic() + max(limit, 1.0)  # the ready message is tiny: it is not a second budget
            self.walls = dict(wire.receive(self._sock, deadline=deadline)[0].get("ready", {}))
        except (EOFError, OSError, wire.WireError) as e:
            if isinstance(e, TimeoutError):
                self._fail(
                    "timeout",
                    f"the worker did not start (import the submission) within {limit:.3g} s, what "
                    f"was left of the test's budget ({self.budget_s:.3g} s)",
                )
            kind, message = self._death("the submission's import")
            self._stop_worker()
            self._start_failure = WorkerFailure(kind, message)
            raise self._start_failure from None

    def _connect(self) -> socket.socket:
        if self._control is None:
            self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._control.settimeout(CONTROL_TIMEOUT_S)
            self._control.connect(self.config.server)
        return self._control

    def _server(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            control = self._connect()
            wire.send(control, request, [])
            return wire.receive(control)[0]
        except (OSError, EOFError, wire.WireError):
            return {}

    def _inbox(self, path: str) -> str:
        """A file argument, put in the worker's inbox (the only files a jailed worker sees).

        NOTE: the worker owns its workspace and may plant links in it, or swap `inbox/` for a link: the inbox
        is opened without following a link, the name (random) is created here and never reused, and a copy
        is written through the descriptor of that new file. Nothing is opened by a path the worker wrote.
        """
        source = Path(path)
        if self._workspace is None or source.is_relative_to(self._workspace) or not source.is_file():
            return path
        name = f"{secrets.token_hex(8)}-{source.name}"
        try:
            inbox = untrusted.open_dir(self._workspace, "inbox")
        except OSError as e:
            self._fail("died", f"the worker replaced its inbox/ folder ({e.strerror}): file arguments cannot reach it")
            raise AssertionError("unreachable") from e
        try:
            os.link(source, name, dst_dir_fd=inbox)  # creates `name`: never an existing entry
            if self.uid is not None:
                os.chmod(source, os.stat(source).st_mode | 0o444)  # the grader's own file (the same inode)
        except OSError:  # another filesystem: a copy, into a file created here
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=inbox)
            with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
        finally:
            os.close(inbox)
        return str(self._workspace / "inbox" / name)

    def memory_probe(self) -> tuple[Callable[[], int], Callable[[], int]] | None:
        """(reset, peak): the current worker's memory in bytes, it and every process it started (its cgroup),
        the peak since `reset` (which returns the usage then); None without a cgroup (see `tests/measure.py`)."""
        self._ensure_worker()
        if self.cgroup is None:
            return None if self.uid is None else _uid_probe(self.uid)
        directory = Path(self.cgroup)
        v2 = (directory / "memory.peak").exists()
        peak_name, usage_name = (
            ("memory.peak", "memory.current") if v2 else ("memory.max_usage_in_bytes", "memory.usage_in_bytes")
        )
        cache: list[int] = [0]

        def file_cache() -> int:  # NOTE: page cache (a memmap's file read ahead) is the kernel's, not the call's
            stat = dict(line.split() for line in (directory / "memory.stat").read_text().splitlines() if " " in line)
            return int(stat.get("file" if v2 else "cache", 0))

        peak_file = open(directory / peak_name, "r+b", buffering=0)  # noqa: SIM115 - a v2 reset is per open file

        def reset() -> int:
            peak_file.write(b"reset\n" if v2 else b"0")
            cache[0] = file_cache()
            return int((directory / usage_name).read_text())

        def peak() -> int:
            return int(os.pread(peak_file.fileno(), 64, 0)) - max(0, file_cache() - cache[0])

        return reset, peak

    def _oom_killed(self) -> bool:
        """Whether the kernel killed a process of the worker's cgroup for its memory limit."""
        if self.cgroup is None:
            return False
        for name in ("memory.events", "memory.oom_control"):
            try:
                lines = Path(self.cgroup, name).read_text().splitlines()
            except OSError:
                continue
            counts = dict(line.split()[:2] for line in lines if len(line.split()) >= 2)
            return int(counts.get("oom_kill", "0")) > 0
        return False

    def _note_peak(self) -> None:
        if self.cgroup is not None:
            try:
                name = "memory.peak" if Path(self.cgroup, "memory.peak").exists() else "memory.max_usage_in_bytes"
                self.peak_kib = max(self.peak_kib, int(Path(self.cgroup, name).read_text()) // 1024)
                return
            except (OSError, ValueError):
                pass
        try:
            for line in Path(f"/proc/{self._pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
        except (OSError, ValueError):
            pass

    def _log_tail(self) -> str:
        """The fatal lines of a dead worker's log, read as a regular file it owns, never through a link."""
        data = untrusted.read_tail(self._workspace, ".worker.log", {os.geteuid(), self.uid}, LOG_TAIL_BYTES)
        lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
        fatal = next((i for i, line in enumerate(lines) if "Fatal Python error" in line), None)
        chosen = lines[fatal : fatal + 4] if fatal is not None else lines[-3:]
        return " | ".join(chosen)[-600:]

    def _stop_worker(self) -> None:
        """Kill the worker, everything it forked (its process group; its user id's processes) and its files."""
        if self._pid is not None:
            for kill in (lambda: os.killpg(self._pid, signal.SIGKILL), lambda: os.kill(self._pid, signal.SIGKILL)):
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass
            if self.uid is not None:
                self._server({"op": "kill_user", "uid": self.uid})
                remove_ipc(self.uid)
        if self._sock is not None:
            self._sock.close()
        self._sock, self._pid, self.cgroup = None, None, None
        if self._workspace is not None:
            # NOTE: rmtree works by descriptors here (it never follows a link the worker planted).
            assert shutil.rmtree.avoids_symlink_attacks or os.name != "posix"
            shutil.rmtree(self._workspace, ignore_errors=True)

    def close(self) -> None:
        self._stop_worker()
        if self._control is not None:
            self._control.close()
            self._control = None


_IPC_RMID = 0
_IPC_KINDS = {"shm": "shmctl", "msg": "msgctl", "sem": "semctl"}


def remove_ipc(uid: int) -> list[str]:
    """Remove the SysV shared memory, message queues and semaphores that `uid` created (a worker's: they
    would outlive it, a channel to the next test or student); returns what was removed ("shm 3", ...).

    Reads `/proc/sysvipc` (Linux); a worker in an IPC namespace of its own leaves nothing visible here.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    removed = []
    for kind, control in _IPC_KINDS.items():
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
            creator = lines[0].split().index("cuid")  # the creator: an owner can be changed, a creator not
        except (OSError, ValueError, IndexError):
            continue
        for line in lines[1:]:
            fields = line.split()
            if int(fields[creator]) == uid:
                args = (int(fields[1]), _IPC_RMID, None) if kind != "sem" else (int(fields[1]), 0, _IPC_RMID, 0)
                if getattr(libc, control)(*args) == 0:
                    removed.append(f"{kind} {fields[1]}")
    return removed


def _uid_processes(uid: int) -> list[Path]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                found.append(entry)
        except OSError:
            pass
    return found


def _status_kib(entry: Path, field: str) -> int:
    try:
        for line in (entry / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _uid_probe(uid: int) -> tuple[Callable[[], int], Callable[[], int]]:
    """The fallback without a cgroup: the resident memory summed over the live processes of the worker's uid
    (a child that ended before the reading is missed: the report names this measure)."""

    def reset() -> int:
        for entry in _uid_processes(uid):
            try:
                (entry / "clear_refs").write_text("5")
            except OSError:
                pass
        return sum(_status_kib(e, "VmRSS") for e in _uid_processes(uid)) * 1024

    return reset, lambda: sum(_status_kib(e, "VmHWM") for e in _uid_processes(uid)) * 1024


class ForkServer:
    """The fork server of one grading run (`python -m cs336_grading.worker.server SOCKET`), stopped on exit.

    Started before the tests are collected, it imports torch meanwhile; `wait` blocks until it listens.
    """

    def __init__(self, directory: Path, warm: bool = True) -> None:
        self.path = str(directory / "fork-server.sock")
        self.log = directory / "fork-server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cs336_grading.worker.server", self.path, *([] if warm else ["--cold"])],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if k != SECRET_ENV},  # workers fork from it: no secret
            )

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-800:]
                raise RuntimeError(f"the worker fork server did not start: {tail}")
            time.sleep(0.05)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()  # it kills its workers and what they forked, then exits
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left die with it (PR_SET_PDEATHSIG)
        except ProcessLookupError:
            pass
        self.proc.wait()
