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

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from itertools import count
from pathlib import Path
from typing import Any

from cs336_grading import wire
from cs336_grading.heldout import SECRET_ENV

WORKER_ENV = "CS336_WORKER"
# What a worker's output says when an allocation failed outside Python (RLIMIT_AS in C++ code).
MEMORY_MARKERS = ("MemoryError", "std::bad_alloc", "can't allocate memory", "Cannot allocate memory",
                  "DefaultCPUAllocator", "out of memory")  # fmt: skip
CALL_SHARE, CALL_FLOOR_S = 0.4, 1.5  # the most of a test's budget that one call may use, and its floor
# A function that already hung in SUSPECT_AFTER tests of this process gets SUSPECT_S per call from then on:
# a submission that hangs everywhere grades in minutes, and a correct one never comes near (its calls
# take milliseconds where this applies).
SUSPECT_AFTER, SUSPECT_S = 1, 0.5
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
        self.walls: dict[str, bool] = {}
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

    def end_test(self) -> dict[str, Any]:
        self._note_peak()
        return {"worker_seconds": round(self.spent_s, 4), "peak_mib": round(self.peak_kib / 1024, 1),
                "findings": self.findings[:10]}  # fmt: skip

    # -------------------------------------------------------------------------------------- calls
    def call(self, module: str, name: str, args: Any, kwargs: Any) -> Any:
        result = self._request({"op": "call", "module": module, "name": name}, name, args, kwargs)
        if (module, name) == ("scenarios", "optimizer_ancestry") and isinstance(result, list):
            borrowed = [c for c in result if str(c).startswith("torch.optim.") and c != "torch.optim.optimizer.Optimizer"]
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
        self._ensure_worker()
        buffers: list[bytes] = []
        header = {**header, "args": wire.encode(list(args), buffers, _handle_of, map_path=self._inbox),
                  "kwargs": wire.encode(dict(kwargs), buffers, _handle_of, map_path=self._inbox)}  # fmt: skip
        started = time.monotonic()
        try:
            assert self._sock is not None
            wire.send(self._sock, header, buffers)
            reply, out = self._receive(what, started)
        except WorkerFailure:
            raise
        except BaseException:
            self._stop_worker()  # interrupted mid-call (a signal, Ctrl-C): that worker's state is unknown
            raise
        finally:
            self.spent_s += time.monotonic() - started
        self.findings.extend(str(f) for f in reply.get("audit", []) if isinstance(f, str))
        if "error" in reply:
            raise self._raised(what, reply["error"])
        generation = self._generation
        try:
            return wire.decode(reply.get("ok"), out, lambda h: RemoteObject(self, h, generation))
        except (wire.WireError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            self._fail("died", f"the worker running {what} sent a malformed reply ({type(e).__name__}: {e})")
            raise AssertionError("unreachable") from e

    def _receive(self, what: str, started: float) -> tuple[dict[str, Any], list[bytes]]:
        assert self._sock is not None
        # One call may use a share of the test's budget: a property test's examples are many small calls,
        # so a hang in the first one need not wait for the whole budget.
        left = min(self.budget_s - self.spent_s, max(CALL_FLOOR_S, CALL_SHARE * self.budget_s))
        suspect = self.hangs.get(what, 0) >= SUSPECT_AFTER
        left = min(left, SUSPECT_S) if suspect else left
        ready, _, _ = select.select([self._sock], [], [], max(0.0, left) if left < 1e6 else None)
        if not ready:
            self.hangs[what] = self.hangs.get(what, 0) + 1
            limit = f"{left:.3g} s" + (f" (it hung in {SUSPECT_AFTER} earlier tests)" if suspect else "")
            limit += f" (the test's: {self.budget_s:.3g} s)"
            self._fail("timeout", f"{what} did not return within its limit of {limit}")
        try:
            self._sock.settimeout(max(0.5, left - (time.monotonic() - started)) if left < 1e6 else None)
            return wire.receive(self._sock)
        except (EOFError, OSError) as e:
            if isinstance(e, TimeoutError):
                self._fail("timeout", f"{what} did not finish its reply within the test's limit")
            self._fail(*self._death(what))
        except wire.WireError as e:
            self._fail("died", f"the worker running {what} sent a malformed reply ({e})")
        raise AssertionError("unreachable")

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
        memory = any(m in tail for m in MEMORY_MARKERS)
        del peak_kib
        return ("memory" if memory else "died"), f"the worker running {what} {how}" + (f": {tail}" if tail else "")

    # ------------------------------------------------------------------------------------ workers
    def _ensure_worker(self) -> None:
        if self._sock is not None:
            return
        if self._start_failure is not None:
            raise self._start_failure
        self._workspace = Path(self.config.scratch) / f"ws-{os.getpid()}-{next(self._names)}"
        shutil.copytree(self.config.template, self._workspace, symlinks=True)
        (self._workspace / "inbox").mkdir()
        request = {"op": "fork", "workspace": str(self._workspace), "uid": self.uid,
                   "memory_mb": self.config.memory_mb, "cpu_s": self.config.cpu_s}  # fmt: skip
        control = self._connect()
        wire.send(control, request, [])
        _, fds, _, _ = socket.recv_fds(control, 1, 1)
        self._pid = int(wire.receive(control)[0]["pid"])
        self._sock = socket.socket(fileno=fds[0])
        self._generation += 1
        ready, _, _ = select.select([self._sock], [], [], self.config.start_timeout_s)
        try:
            if not ready:
                raise TimeoutError
            self.walls = dict(wire.receive(self._sock)[0].get("ready", {}))
        except (EOFError, OSError, wire.WireError) as e:
            why = f"did not start within {self.config.start_timeout_s:g} s" if isinstance(e, TimeoutError) else ""
            kind, message = ("timeout", f"the worker {why}") if why else self._death("the submission's import")
            self._stop_worker()
            self._start_failure = WorkerFailure(kind, message)
            raise self._start_failure from None

    def _connect(self) -> socket.socket:
        if self._control is None:
            self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
        """A file argument, linked into the worker's workspace (the only files a jailed worker sees)."""
        source = Path(path)
        if self._workspace is None or not source.is_file() or source.is_relative_to(self._workspace):
            return path
        target = self._workspace / "inbox" / f"{next(self._names)}-{source.name}"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        if self.uid is not None:
            os.chmod(target, os.stat(target).st_mode | 0o444)
        return str(target)

    def _note_peak(self) -> None:
        try:
            for line in Path(f"/proc/{self._pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
        except (OSError, ValueError):
            pass

    def _log_tail(self) -> str:
        try:
            data = (self._workspace / ".worker.log").read_bytes()[-3000:]  # type: ignore[operator]
        except OSError:
            return ""
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
        if self._sock is not None:
            self._sock.close()
        self._sock, self._pid = None, None
        if self._workspace is not None:
            shutil.rmtree(self._workspace, ignore_errors=True)

    def close(self) -> None:
        self._stop_worker()
        if self._control is not None:
            self._control.close()
            self._control = None


class ForkServer:
    """The fork server of one grading run (`python -m cs336_grading.worker SOCKET`), stopped on exit.

    Started before the tests are collected, it imports torch meanwhile; `wait` blocks until it listens.
    """

    def __init__(self, directory: Path, warm: bool = True) -> None:
        self.path = str(directory / "fork-server.sock")
        self.log = directory / "fork-server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cs336_grading.worker", self.path, *([] if warm else ["--cold"])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={k: v for k, v in os.environ.items() if k != SECRET_ENV},  # workers fork from it: no secret
            )  # fmt: skip

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
