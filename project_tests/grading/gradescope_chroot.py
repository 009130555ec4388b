"""Run the autograder zip as Gradescope does, in a fresh root filesystem of one of its base images.

    root = base_system("ubuntu-22.04", cache)   # debootstrap once (minutes), then copied fresh for each run
    with Chroot(root) as box:
        box.install(zip_path)                   # unzip into /autograder/source, run setup.sh as root
        results = box.grade(submission_dir)     # /autograder/submission -> run_autograder -> results.json

Needs root, `debootstrap` and the distribution's archive. When this machine has a local pip mirror
(/opt/pypi*, /opt/wheels: see `pip config list`) it is bind-mounted read-only into the root and pip uses it
beside PyPI, as this machine's pip does (`CS336_TORCH_INDEX=""`: PyTorch's own index may be out of reach).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

IMAGES = {  # Gradescope's base image -> (debootstrap suite, mirror, components)
    "ubuntu-22.04": ("jammy", "http://archive.ubuntu.com/ubuntu", "main,universe"),
    "ubuntu-24.04": ("noble", "http://archive.ubuntu.com/ubuntu", "main,universe"),
    # Not a Gradescope image: Python 3.11 from its own archive, as 24.04's 3.12, for machines whose only local
    # torch wheel is for Python 3.11 and that cannot reach PyTorch's CPU index.
    "debian-12": ("bookworm", "http://deb.debian.org/debian", "main"),
}
LOCAL_MIRRORS = ("/opt/wheels", "/opt/pypi", "/opt/pypi-more")
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def base_system(image: str, cache: Path) -> Path:
    """A cached minimal root of `image` (debootstrapped on first use); copy it before changing it."""
    suite, mirror, components = IMAGES[image]
    root = cache / image
    if not (root / "usr" / "bin" / "apt-get").exists():
        shutil.rmtree(root, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        script = (
            [] if Path(f"/usr/share/debootstrap/scripts/{suite}").exists() else ["/usr/share/debootstrap/scripts/gutsy"]
        )
        # NOTE: no Ubuntu keyring on a Debian host: Ubuntu's Release files are not signature-checked here.
        unchecked = ["--no-check-gpg"] if "ubuntu" in mirror else []
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--components={components}",
                *unchecked,
                suite,
                str(root),
                mirror,
                *script,
            ],
            check=True,
            capture_output=True,
            timeout=1800,
        )
        # Gradescope's images also carry the -updates suite.
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {suite} {components.replace(',', ' ')}\ndeb {mirror} {suite}-updates {components.replace(',', ' ')}\n"
        )
    return root


class Chroot:
    """A throw-away copy of a base root with /proc and the local pip mirror mounted (debootstrap made /dev).

    NOTE: the copy lives beside the cache, not under pytest's tmp_path: another pytest run may delete old
    tmp_paths, and deleting a tree with a mount in it deletes through the mount.
    """

    def __init__(self, base: Path) -> None:
        self.root = base.parent / "runs" / f"{base.name}-{os.getpid()}"
        self.mounts: list[Path] = []
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(base), str(self.root)], check=True)
        shutil.copyfile("/etc/resolv.conf", self.root / "etc/resolv.conf")
        self.env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }
        if all(Path(p).is_dir() for p in LOCAL_MIRRORS):  # as this machine's pip: PyPI, plus the local mirror
            self.env |= {
                "PIP_FIND_LINKS": "/opt/wheels",
                "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple file:///opt/pypi-more/simple",
                "CS336_TORCH_INDEX": "",
                "PIP_DEFAULT_TIMEOUT": "60",
            }
        if Path(HOST_CA).is_file():  # this machine's CA bundle (a registry proxy may need it)
            shutil.copyfile(HOST_CA, self.root / "etc/cs336-host-ca.crt")
            self.env["PIP_CERT"] = "/etc/cs336-host-ca.crt"

    def __enter__(self) -> Chroot:
        self._mount(["-t", "proc", "proc"], "proc")
        if "PIP_FIND_LINKS" in self.env:
            for path in LOCAL_MIRRORS:
                self._mount(["--bind", "-o", "ro", path], path.lstrip("/"))
        return self

    def __exit__(self, *exc: object) -> None:
        failed = [t for t in reversed(self.mounts) if subprocess.run(["umount", str(t)], check=False).returncode != 0]
        if not failed:  # never delete through a mount that is still there
            shutil.rmtree(self.root, ignore_errors=True)

    def _mount(self, args: list[str], target: str) -> None:
        path = self.root / target
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(path)], check=True)
        self.mounts.append(path)

    def run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """`bash -c command` as root inside the root filesystem (what Gradescope's container runs)."""
        return subprocess.run(
            ["chroot", str(self.root), "/bin/bash", "-c", command],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
        )

    def install(self, archive: Path, timeout: float = 1500) -> float:
        """Unzip the autograder into /autograder/source and run its setup.sh; returns the seconds it took."""
        source = self.root / "autograder" / "source"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(source)
            for info in zf.infolist():
                (source / info.filename).chmod((info.external_attr >> 16) & 0o777 or 0o644)
        t0 = time.monotonic()
        proc = self.run("cd /autograder/source && bash ./setup.sh", timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"setup.sh failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return time.monotonic() - t0

    def grade(self, upload: Path, timeout: float = 900) -> tuple[dict[str, Any], float]:
        """Put `upload` in /autograder/submission, run run_autograder; (results.json, seconds)."""
        submission, results = self.root / "autograder" / "submission", self.root / "autograder" / "results"
        for path in (submission, results):
            shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(upload, submission)
        results.mkdir()
        t0 = time.monotonic()
        proc = self.run("/autograder/source/run_autograder", timeout)
        seconds = time.monotonic() - t0
        path = results / "results.json"
        if not path.is_file():
            raise RuntimeError(f"no results.json (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(path.read_text()), seconds


def can_build(image: str) -> str:
    """Why `image` cannot be built and run here, or "" when it can."""
    if os.geteuid() != 0:
        return "needs root (chroot, mount)"
    if shutil.which("debootstrap") is None:
        return "needs debootstrap (apt-get install debootstrap)"
    import urllib.request

    suite, mirror, _ = IMAGES[image]
    try:
        urllib.request.urlopen(f"{mirror}/dists/{suite}/Release", timeout=10).close()
    except OSError as e:
        return f"the archive {mirror} is unreachable: {e}"
    return ""
