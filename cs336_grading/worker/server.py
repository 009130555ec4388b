"""The worker: the only process where student code runs under `cs336 grade`, and the fork server behind it.

    python -m cs336_grading.worker.server SOCKET_PATH        # the fork server (one per grading run)

The fork server imports torch and numpy once, then listens on a Unix socket that only the grader can reach.
For each `fork` request it forks a worker, which walls itself in (`jail.enter`: limits, no network, a
filesystem of its workspace and the Python installation only, a user id of its own), imports the
submission (`tests.adapters` and the harness's `tests/scenarios.py` from its workspace, which holds nothing
else), its forbidden torch kernels sealed first (`seal.seal`: reaching one ends the call with evidence
blamed on the running call, in any thread), and serves calls over a socket pair whose other end goes back to the grader (SCM_RIGHTS). Forking a
process that has torch imported takes milliseconds, so a worker killed after a hang is replaced cheaply.

A call is `{"op": "call", "module": "adapters" | "scenarios", "name": ..., "args": ..., "kwargs": ...}` or
`{"op": "method", "handle": id, "name": ...}`; the reply is `{"ok": value, "audit": [...]}` or
`{"error": {"type", "message", "traceback"}}` in the wire format (`wire.py`). Results that are not data (a
Tokenizer, a class) stay here as handles; iterators are drained into lists. Nothing a worker reports about
time or memory is believed: the grader measures both from outside.
"""

from __future__ import annotations

import faulthandler
import importlib
import inspect
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cs336_grading.worker import jail, seal, wire

_LOG: Any = None  # the worker's log file (what the grader reads when it dies), once it has one
MAX_ITEMS = 20_000_000  # an iterator longer than this is not drained
_REPLY_TEXT = 4000


# ------------------------------------------------------------------------------------------- the worker
class _Session:
    """The worker's side of the conversation: the submission's modules and the handles it gave out."""

    def __init__(self) -> None:
        self.handles: dict[int, Any] = {}
        self.modules: dict[str, Any] = {}
        self.import_errors: dict[str, BaseException] = {}
        self.last_findings: list[str] = []

    def load(self) -> None:
        """Import the submission's adapters and the scenarios now: their import time is no test's."""
        for module in ("adapters", "scenarios"):
            try:
                self.modules[module] = importlib.import_module(f"tests.{module}")
            except BaseException as e:  # noqa: BLE001 - reported on every call that needs the module
                self.import_errors[module] = e

    def handle_of(self, value: Any) -> wire.Handle:
        self.handles[id(value)] = value
        return wire.Handle(id(value), type(value).__name__)

    def resolve(self, handle: wire.Handle) -> Any:
        if handle.id not in self.handles:
            raise wire.WireError(f"unknown handle {handle.id}")
        return self.handles[handle.id]

    def target(self, header: dict[str, Any]) -> tuple[str, Any]:
        if header.get("op") == "method":
            owner = self.resolve(wire.Handle(int(header["handle"])))
            return f"{type(owner).__name__}.{header['name']}", getattr(owner, str(header["name"]))
        module = str(header.get("module"))
        if module not in ("adapters", "scenarios"):
            raise wire.WireError(f"unknown module {module!r}")
        if module in self.import_errors:
            raise self.import_errors[module]
        name = str(header["name"])
        if module == "scenarios" and (name.startswith("_") or name == "run"):
            raise wire.WireError(f"{name!r} is not a scenario")
        return name, getattr(self.modules[module], name)

    def answer(self, header: dict[str, Any], buffers: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        name, function = self.target(header)
        args = wire.decode(header.get("args", []), buffers, self.resolve, memmaps=True)
        kwargs = wire.decode(header.get("kwargs", {"$dict": []}), buffers, self.resolve, memmaps=True)
        watch = seal.Watch(name)
        try:
            with watch:
                result = _drain(function(*args, **kwargs))
                if inspect.isclass(result):
                    watch.check_optimizer(result)
        finally:
            self.last_findings = list(watch.findings)  # NOTE: an error reply carries them too
        out: list[bytes] = []
        value = wire.encode(result, out, on_other=self.handle_of)
        return {"ok": value, "audit": watch.findings}, out


def _drain(result: Any) -> Any:
    """Iterators (a generator from encode_iterable) come back as lists; everything else as it is."""
    if isinstance(result, Iterator) and not isinstance(result, (str, bytes)):
        items = []
        for item in result:
            items.append(item)
            if len(items) > MAX_ITEMS:
                raise RuntimeError(f"the iterator yielded more than {MAX_ITEMS} items")
        return items
    return result


def _error(exc: BaseException) -> dict[str, Any]:
    """What the grader is told of an exception: type, message, and where in the submission it arose."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}cs336_grading{os.sep}" not in f.filename]
    where = [f"{os.path.relpath(f.filename)}:{f.lineno} in {f.name}" for f in frames[-3:]]
    return {
        "type": type(exc).__name__,
        "bases": [c.__name__ for c in type(exc).__mro__],
        "message": str(exc)[:_REPLY_TEXT],
        "traceback": "\n".join(f"at {w}" for w in reversed(where))[-_REPLY_TEXT:],
    }


def serve(sock: socket.socket, session: _Session) -> None:
    """Answer calls until the grader closes the socket."""
    while True:
        try:
            header, buffers = wire.receive(sock)
        except EOFError:
            return
        session.last_findings = []
        try:
            reply, out = session.answer(header, buffers)
        except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are the student's too
            reply, out = {"error": _error(e), "audit": session.last_findings}, []
        try:
            wire.send(sock, reply, out)
        except wire.WireError as e:
            wire.send(sock, {"error": _error(e)}, [])


def _child(sock: socket.socket, request: dict[str, Any], keep: int) -> None:
    """In the forked child: redirect output, wall in, import nothing of ours, serve."""
    workspace = str(request["workspace"])
    # What the submission prints goes nowhere (megabytes of it cost nothing); a crash's traceback goes to
    # the log that the grader reads when the worker dies.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    log = open(os.path.join(workspace, ".worker.log"), "w")  # noqa: SIM115 - lives as long as the worker
    os.closerange(3, min(keep, log.fileno()))
    os.closerange(max(keep, log.fileno()) + 1, 1 << 16)  # NOTE: the fork server's socket must not stay reachable
    for fd in range(min(keep, log.fileno()) + 1, max(keep, log.fileno())):
        try:
            os.close(fd)
        except OSError:
            pass
    faulthandler.enable(file=log)
    global _LOG
    _LOG = log
    memory = None
    if request.get("cgroup"):
        jail.join_cgroup(str(request["cgroup"]))  # before the walls: everything it forks is counted too
        memory = str(request["memory"])
    walls = jail.enter(
        workspace,
        uid=request.get("uid"),
        memory_mb=request.get("memory_mb"),
        cpu_s=int(request.get("cpu_s", 600)),
        memory=memory,
    )
    os.environ.clear()
    os.environ.update(
        {
            "PATH": "/usr/bin:/bin",
            "HOME": workspace,
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "TMPDIR": "/tmp" if walls["filesystem"] else workspace + "/tmp",
        }
    )
    _isolate_imports(workspace)
    seal.Watch.root = workspace  # the submission is found by this, whatever directory it moves to
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
        walls["sealed_kernels"] = (
            len(seal.seal()) if request.get("seal", True) else 0
        )  # before the submission runs a line
    session = _Session()
    session.load()
    wire.send(sock, {"ready": walls}, [])
    serve(sock, session)


class _Refuse:
    """A meta-path finder that refuses the grader's and the maintainers' packages (where no jail hides them)."""

    PREFIXES = ("cs336_grading", "oracle", "cs336_lab", "cs336_common")

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in self.PREFIXES:
            raise ModuleNotFoundError(f"No module named {name!r} (the grader's packages are not the submission's)")
        return None


def _isolate_imports(workspace: str) -> None:
    """Only the workspace and the installation: no checkout on sys.path, no editable finders, no harness."""
    installed = [p for p in sys.path if p and ("site-packages" in p or p.startswith(sys.base_prefix))]
    sys.path[:] = [workspace, *installed]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    for name in list(sys.modules):
        if name.split(".")[0] in ("tests", "cs336_basics", "oracle", "cs336_lab", "cs336_common"):
            del sys.modules[name]
    sys.meta_path.insert(0, _Refuse())
    importlib.invalidate_caches()
    Path(workspace, "tmp").mkdir(exist_ok=True)


# ------------------------------------------------------------------------------------ the fork server
def _warm_up() -> None:
    """Pay torch's first-use costs once, here, not in every worker: lazy imports (the first optimizer
    step imports torch._dynamo, ~3 s), autograd, serialisation, and the libraries submissions import."""
    import io

    import numpy  # noqa: F401 - imported once here, not in every worker
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)  # NOTE: no thread pool may exist when we fork
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    F.cross_entropy(model(torch.randn(2, 4)), torch.tensor([0, 2])).backward()
    optimizer.step()
    optimizer.zero_grad()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    torch.load(buffer)
    torch.nn.init.trunc_normal_(torch.empty(3, 3))
    with seal.Watch("warm-up"):
        torch.softmax(torch.randn(3), 0)
    for name in ("einops", "jaxtyping", "regex", "tqdm"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def fork_server(path: str, warm: bool = True) -> None:
    """Listen on `path`; answer `fork` (a worker, its socket sent back) and `status` (exit status) requests."""
    if warm:
        _warm_up()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    forked: dict[int, int | None] = {}  # worker pid -> its user id

    def stop(*_: object) -> None:
        """Kill every worker and whatever it forked (by user id, else by process group), then leave."""
        for pid, uid in forked.items():
            try:
                jail.kill_user(uid) if uid is not None else os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        for _ in range(20):
            _reap({})
            if not _CGROUPS and not _EMPTYING:
                break
            _EMPTYING.extend(_CGROUPS.values())
            _CGROUPS.clear()
            select.select([], [], [], 0.05)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    clients: list[socket.socket] = []
    ended: dict[int, tuple[int, int]] = {}  # pid -> (wait status, peak resident KiB)
    while True:
        readable, _, _ = select.select([listener, *clients], [], [], 0.2)
        _reap(ended)
        for conn in readable:
            if conn is listener:
                clients.append(listener.accept()[0])
                continue
            try:
                header, _ = wire.receive(conn)
                _serve_request(conn, header, ended, forked)
            except (EOFError, OSError, wire.WireError):
                clients.remove(conn)
                conn.close()


_CGROUPS: dict[int, str] = {}  # worker pid -> its memory cgroup
_EMPTYING: list[str] = []  # the cgroups of workers that ended, removed once empty


def _reap(ended: dict[int, tuple[int, int]]) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        ended[pid] = (status, usage.ru_maxrss)
        if pid in _CGROUPS:
            _EMPTYING.append(_CGROUPS.pop(pid))
    _EMPTYING[:] = [c for c in _EMPTYING if not jail.remove_cgroup(c)]  # its last processes may be dying still


def _serve_request(
    conn: socket.socket, header: dict[str, Any], ended: dict[int, tuple[int, int]], forked: dict[int, int | None]
) -> None:
    op = header.get("op")
    if op == "fork":
        ours, theirs = socket.socketpair()
        memory_mb = header.get("memory_mb")
        # NOTE: the address-space limit stops one process; the cgroup's, the worker and all it starts together
        # (twice as much: at the same value, one process thrashes at the cgroup's before its own limit says so).
        name = f"{os.getpid()}-{os.path.basename(str(header['workspace']))}"
        cgroup = jail.cgroup_for(name, None if memory_mb is None else 2 * int(memory_mb))
        request = {**header, "cgroup": cgroup[0], "memory": cgroup[1]} if cgroup else dict(header)
        pid, _ = jail.fork_alone()
        if pid == 0:
            ours.close()
            code = 0
            try:
                _child(theirs, request, theirs.fileno())
            except BaseException:  # noqa: BLE001 - the worker's log says why it could not start or serve
                traceback.print_exc(file=_LOG or sys.stderr)
                code = 70
            finally:
                (_LOG or sys.stderr).flush()
                os._exit(code)
        theirs.close()
        forked[pid] = header.get("uid")
        if cgroup:
            _CGROUPS[pid] = cgroup[0]
        socket.send_fds(conn, [b"F"], [ours.fileno()])
        ours.close()
        wire.send(
            conn, {"pid": pid, "cgroup": cgroup[0] if cgroup else None, "memory": cgroup[1] if cgroup else None}, []
        )
    elif op == "status":
        pid = int(header["pid"])
        deadline = 20  # the worker was just killed: give the kernel a moment to report it
        while pid not in ended and deadline:
            _reap(ended)
            if pid not in ended:
                select.select([], [], [], 0.05)
                deadline -= 1
        status, peak_kib = ended.pop(pid, (None, 0))
        wire.send(conn, {"status": status, "peak_kib": peak_kib}, [])
    elif op == "kill_user":
        jail.kill_user(int(header["uid"]))
        wire.send(conn, {"done": True}, [])
    else:
        wire.send(conn, {"error": f"unknown request {op!r}"}, [])


if __name__ == "__main__":
    fork_server(sys.argv[1], warm="--cold" not in sys.argv[2:])
