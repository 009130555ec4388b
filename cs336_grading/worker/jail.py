"""The walls around a worker that runs student code: resource limits, no network, a filesystem that holds
only the system, the Python installation and the worker's own workspace, and a user id of its own.

    report = jail.enter(workspace, uid=200123, memory_mb=6144, cpu_s=600)   # in the forked child, once

What is achieved depends on the host, and `enter` says so in its report instead of failing:
- always: address-space, CPU-time, core-dump and file-size limits, a new session (process group);
- as root (Linux): the worker is pid 1 of a new PID namespace (it sees no other process; when it ends,
  everything it started dies), in a memory cgroup of its own where the host has one (`cgroup_for`: v2
  `memory.peak`, else v1 `memory.max_usage_in_bytes`; else the resident memory of its user id is the
  measure, and the report says which), with new IPC (SysV shared memory and queues die with it) and UTS
  namespaces, a new network namespace (no interface but a downed loopback), a new mount namespace
  whose root is a fresh tmpfs holding read-only bind mounts of `/usr`, `/lib*`, `/bin`, `/etc`, the Python
  prefixes (mounted over the scratch tmpfs, so a venv under /tmp stays whole; the grading and reference
  packages inside them hidden by empty mounts) and a writable one of the
  workspace, then `chroot` into it, and a user id of its own without privileges (`no_new_privs`), which
  also caps the number of its processes and lets the grader kill every process it forked;
- elsewhere (not root, not Linux): limits only. A student running `make grade` at home grades their own
  code, so the walls matter where staff grade.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import site
import socket
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWPID = (
    0x00020000,
    0x40000000,
    0x08000000,
    0x04000000,
    0x20000000,
)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
MAX_PROCESSES = 256  # threads count too: torch's pools, a student's multiprocessing pool
MAX_FILE_BYTES = 512 << 20
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc")
# Installed packages the worker must not read: the grader (its harness holds the snapshots), the reference.
HIDDEN_PACKAGES = ("cs336_grading", "cs336_basics", "cs336_lab", "cs336_common", "oracle", "tests")
DEVICES = ("null", "zero", "urandom", "random")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def limit_resources(memory_mb: int | None, cpu_s: int) -> None:
    """Address space, CPU seconds (then SIGXCPU kills), no core files, no file larger than 512 MiB."""
    if memory_mb is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))


def readable_dirs() -> list[str]:
    """What the jail shows read-only: system directories and the Python installation (prefixes)."""
    dirs = [d for d in SYSTEM_DIRS if os.path.exists(d)]
    for prefix in {sys.base_prefix, sys.prefix, sys.exec_prefix}:
        if not any(prefix == d or prefix.startswith(d + "/") for d in dirs):
            dirs.append(prefix)
    return dirs


def _hidden_dirs() -> list[str]:
    packages = [*site.getsitepackages(), site.getusersitepackages()]
    return [os.path.join(p, name) for p in packages for name in HIDDEN_PACKAGES if os.path.isdir(os.path.join(p, name))]


def _build_root(root: str, workspace: str) -> None:
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    # NOTE: the scratch tmpfs first, the installation over it: a Python prefix under /tmp (a CI's venv)
    # must stay visible, or whatever the worker imports lazily (einops._torch_specific) is missing.
    for scratch in ("/tmp", "/dev/shm"):
        os.makedirs(root + scratch, exist_ok=True)
        _mount("tmpfs", root + scratch, "tmpfs", MS_NOSUID | MS_NODEV, "size=256m,mode=1777")
    for directory in readable_dirs():
        target = root + directory
        if os.path.islink(directory):  # a merged /usr: /bin -> usr/bin
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(directory), target)
            continue
        os.makedirs(target, exist_ok=True)
        _mount(directory, target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    for hidden in _hidden_dirs():
        _mount("tmpfs", root + hidden, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    os.makedirs(root + "/dev", exist_ok=True)
    for device in DEVICES:
        Path(root + "/dev/" + device).touch()
        _mount("/dev/" + device, root + "/dev/" + device, None, MS_BIND)
    os.makedirs(root + "/proc", exist_ok=True)
    Path(root + "/proc/cpuinfo").touch()  # torch's cpuinfo reads it; the rest of /proc stays out of sight
    _mount("/proc/cpuinfo", root + "/proc/cpuinfo", None, MS_BIND)
    # NOTE: last, so that no mount above (a /tmp holding the workspace) covers it.
    os.makedirs(root + workspace, exist_ok=True)
    _mount(workspace, root + workspace, None, MS_BIND)


def _own(workspace: str, uid: int) -> None:
    for current, dirs, files in os.walk(workspace):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(current, name), uid, uid)
    os.chown(workspace, uid, uid)


def enter(
    workspace: str, *, uid: int | None, memory_mb: int | None, cpu_s: int, memory: str | None = None
) -> dict[str, Any]:
    """Wall this process in (see the module docstring); returns which walls stand.

    `memory`: how the worker's memory is limited and measured (the fork server put it in a cgroup, `cgroup_for`);
    None: by address-space limit per process and the resident memory of the worker's user id (the fallback).
    """
    os.setsid()
    report: dict[str, Any] = {
        "network": False,
        "filesystem": False,
        "user": False,
        "ipc": False,
        "uts": False,
        "pid": os.getpid() == 1,
        "memory": memory or "rss of the worker's user id",
    }
    jailed = uid is not None and os.geteuid() == 0 and sys.platform == "linux"
    if jailed:
        _own(workspace, uid)
        for flag, name in ((CLONE_NEWNET, "network"), (CLONE_NEWIPC, "ipc"), (CLONE_NEWUTS, "uts")):
            try:  # SysV shared memory and queues die with the worker; no host name to read
                _check(_libc.unshare(flag), f"unshare({name})")
                report[name] = True
            except OSError:
                pass
        if report["uts"]:
            socket.sethostname("worker")
        try:
            _check(_libc.unshare(CLONE_NEWNS), "unshare(mounts)")
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            root = os.path.join(os.path.dirname(workspace), f".root-{os.path.basename(workspace)}")
            os.makedirs(root, exist_ok=True)
            _build_root(root, workspace)
            os.chroot(root)
            report["filesystem"] = True
        except OSError:
            pass
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        report["user"] = True
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the fork server gone: so is the worker
    os.chdir(workspace)
    limit_resources(memory_mb, cpu_s)
    return report


def kill_user(uid: int) -> None:
    """SIGKILL every process of `uid` (a worker and whatever it forked), from a short-lived child."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


# --------------------------------------------------------------------------- the fork server's side
def fork_alone() -> tuple[int, bool]:
    """`os.fork()`, the child the first process (pid 1) of a new PID namespace where the host allows it:
    it sees no other process, and when it ends the kernel kills everything it started. (pid, namespaced)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return os.fork(), False
    try:
        own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    except OSError:
        return os.fork(), False
    try:
        if _libc.unshare(CLONE_NEWPID) != 0:
            return os.fork(), False
        pid = os.fork()
        if pid != 0:  # NOTE: this process's later children go back to its own namespace
            _check(_libc.setns(own, CLONE_NEWPID), "setns(pid)")
        return pid, True
    finally:
        os.close(own)


CGROUP_MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")


def _own_cgroup(controller: str | None) -> str | None:
    """This process's cgroup path in the v2 hierarchy (controller None) or the v1 hierarchy of `controller`."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if (controller is None and number == "0" and not controllers) or (
            controller is not None and controller in controllers.split(",")
        ):
            return path
    return None


def cgroup_for(name: str, memory_mb: int | None) -> tuple[str, str] | None:
    """A fresh memory cgroup for one worker, below this process's own: (directory, how its peak is read),
    or None where the host offers none (then memory is measured as the resident memory of the worker's uid)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return None
    rel = _own_cgroup(None)
    for mount in CGROUP_MOUNTS if rel is not None else ():
        parent = mount + rel.rstrip("/")
        try:
            if "memory" not in Path(parent, "cgroup.controllers").read_text().split():
                continue
            try:
                Path(parent, "cgroup.subtree_control").write_text("+memory")
            except OSError:
                pass  # already enabled, or not allowed here: the child shows memory.peak or not
            return _make_cgroup(parent, name, "memory.peak", "memory.max", memory_mb)
        except OSError:
            continue
    rel = _own_cgroup("memory")
    if rel is not None:
        try:
            return _make_cgroup(
                f"/sys/fs/cgroup/memory{rel.rstrip('/')}",
                name,
                "memory.max_usage_in_bytes",
                "memory.limit_in_bytes",
                memory_mb,
            )
        except OSError:
            pass
    return None


def _make_cgroup(parent: str, name: str, peak: str, limit: str, memory_mb: int | None) -> tuple[str, str] | None:
    directory = os.path.join(parent, f"cs336-{name}")
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(os.path.join(directory, peak)):
        os.rmdir(directory)
        return None
    if memory_mb is not None:
        Path(directory, limit).write_text(str(memory_mb << 20))
    kind = "cgroup v2" if peak == "memory.peak" else "cgroup v1"
    return directory, f"{kind} ({peak})"


def join_cgroup(directory: str) -> None:
    """Move this process (and so everything it starts) into the cgroup `directory`."""
    Path(directory, "cgroup.procs").write_text("0")


def remove_cgroup(directory: str) -> bool:
    """Remove a worker's cgroup once it holds no process; False while one is left."""
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
