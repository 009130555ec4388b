"""Held-out graded cases: inputs the student has never seen, drawn from a course secret.

The handout ships the public snapshots (`tests/_snapshots/*.npz`: inputs and expected outputs), so that a
student's `make test` can compare. A submission could look its inputs up there and return the stored
answer; so under grading with a secret, every snapshot test gets a fresh case instead:

    secret (autograder zip / --secret-file / CS336_GRADING_SECRET)
      -> cs336 grade salts it with the submission's files (`for_submission`: no replay of leaked inputs)
         and passes it to its pytest processes only (never to the fork server or a worker)
      -> tests/conftest.py `load_snapshot(name)` returns `expected.draws.draw(name, seed_for(secret, name),
         heldout=True)`: new inputs, expected values computed by torch built-ins in that trusted
         process, the same keys as the public snapshot.

The same secret and files give the same draws (a regrade gives the same grade); another secret or any
change to the submission, other draws. The
secret never enters the handout kit (`handout.py` ships no secret and no canary) and never reaches student
code: the worker's environment is rebuilt, and the fork server is started without it (`worker/client.py`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cs336_common.atomic import atomic_open
from cs336_grading.env import SECRET_ENV  # noqa: F401 - re-exported

MIN_SECRET_CHARS = 16  # a guessable secret is a public one


def seed_for(secret: str, name: str) -> int:
    """The 63-bit seed of case `name` under `secret` (independent across names).

    >>> seed_for("an example secret", "model_linear") == seed_for("an example secret", "model_linear")
    True
    """
    digest = hashlib.sha256(f"cs336-heldout\0{secret}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def for_submission(secret: str, files: dict[str, bytes]) -> str:
    """The secret one submission is graded under: `secret` salted with a hash of the submitted `files`.

    A submission that prints its held-out inputs into its results cannot replay them: any change to its
    files draws new cases, while a regrade of the same files draws the same ones.

    >>> for_submission("s", {"a.py": b"x"}) == for_submission("s", {"a.py": b"x"}) != for_submission("s", {"a.py": b"y"})
    True
    """
    digest = hashlib.sha256(secret.encode())
    for name in sorted(files):
        digest.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def secret_id(secret: str) -> str:
    """A short public name of `secret` (for fingerprints and reports): its hash, never the secret."""
    return hashlib.sha256(f"cs336-secret-id\0{secret}".encode()).hexdigest()[:12]


def check_secret(secret: str) -> str:
    """`secret`, stripped, if long enough to be unguessable; else ValueError."""
    secret = secret.strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"expected a grading secret of at least {MIN_SECRET_CHARS} characters, got {len(secret)}")
    return secret


def new_secret() -> str:
    """A fresh random secret (128 bits, hex)."""
    return secrets.token_hex(16)


def read_secret(path: str | os.PathLike[str]) -> str:
    """The secret stored in `path` (one line)."""
    return check_secret(Path(path).read_text(encoding="utf-8"))


def write_secret(path: str | os.PathLike[str], secret: str) -> Path:
    """Store `secret` in `path`, readable by its owner only (created 0600, atomically)."""
    path = Path(path)
    with atomic_open(path, "w", permissions=0o600) as f:  # a fresh temporary file, never through a link
        f.write(check_secret(secret) + "\n")
    return path


def secret_from(path: str | os.PathLike[str] | None) -> str | None:
    """The grader's secret: from `path` if given, else from `$CS336_GRADING_SECRET`, else None (public cases)."""
    if path is not None:
        return read_secret(path)
    value = os.environ.get(SECRET_ENV)
    return check_secret(value) if value else None
