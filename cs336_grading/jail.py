"""The walls around a worker that runs student code: resource limits, no network, a filesystem that holds
only the system, the Python installation and the worker's own workspace, and a user id of its own.

    report = jail.enter(workspace, uid=200123, memory_mb=6144, cpu_s=600)   # in the forked child, once

What is achieved depends on the host, and `enter` says so in its report instead of failing:
- always: address-space, CPU-time, core-dump and file-size limits, a new session (process group);
- as root (Linux): a new network namespace (no interface but a downed loopback), a new mount namespace
  whose root is a fresh tmpfs holding read-only bind mounts of `/usr`, `/lib*`, `/bin`, `/etc`, the Python
  prefixes (the grading and reference packages inside them hidden by empty mounts) and a writable one of the
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
import sys
from pathlib import Path

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
MAX_PROCESSES = 256  # threads count too: torch's pools, a student's multiprocessing pool
MAX_FILE_BYTES = 512 << 20
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc")
# Installed packages the worker must not read: the grader (its harness holds the snapshots), the reference.
HIDDEN_PACKAGES = ("cs336_grading", "cs336_basics", "cs336_lab", "oracle", "tests")
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
    for scratch in ("/tmp", "/dev/shm"):
        os.makedirs(root + scratch, exist_ok=True)
        _mount("tmpfs", root + scratch, "tmpfs", MS_NOSUID | MS_NODEV, "size=256m,mode=1777")
    # NOTE: last, so that no mount above (a /tmp holding the workspace) covers it.
    os.makedirs(root + workspace, exist_ok=True)
    _mount(workspace, root + workspace, None, MS_BIND)


def _own(workspace: str, uid: int) -> None:
    for current, dirs, files in os.walk(workspace):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(current, name), uid, uid)
    os.chown(workspace, uid, uid)


def enter(workspace: str, *, uid: int | None, memory_mb: int | None, cpu_s: int) -> dict[str, bool]:
    """Wall this process in (see the module docstring); returns which walls stand."""
    os.setsid()
    report = {"network": False, "filesystem": False, "user": False}
    jailed = uid is not None and os.geteuid() == 0 and sys.platform == "linux"
    if jailed:
        _own(workspace, uid)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(network)")
            report["network"] = True
        except OSError:
            pass
        try:
            _check(_libc.unshare(CLONE_NEWNS), "unshare(mounts)")
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            root = os.path.join(os.path.dirname(workspace), f".root-{os.getpid()}")
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
