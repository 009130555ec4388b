"""How the `cs336` command fails: exit codes, the errors that mean bad input, and the extras a command needs.

A leaf module (standard library only), so that the command modules and `cs336_lab/cli.py` share it without
importing each other. Exit codes: 0 success, 1 failure (e.g. the network, a diverged run), 2 usage error, bad
input or a missing extra, reported in one line without a traceback (`-v` shows it).
"""

from __future__ import annotations

import importlib.util

# Bad input: exit code 2 with one line. The OS errors of a path of the wrong kind are the user's too.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)

DISTRIBUTION = "cs336-basics"
# The optional dependencies of pyproject.toml that a command may need, by the modules they provide.
EXTRAS: dict[str, tuple[str, ...]] = {
    "grading": ("pytest", "pytest_timeout", "hypothesis", "tiktoken"),
    "wandb": ("wandb",),
}


def extra_of(module: str) -> str | None:
    """The extra that provides the top-level module `module`, or None (not an extra's).

    >>> extra_of("pytest"), extra_of("torch")
    ('grading', None)
    """
    top = module.split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    if extra not in EXTRAS:
        raise ValueError(f"expected one of the extras {sorted(EXTRAS)}, got {extra!r}")
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def needs_extra(command: str, extra: str) -> str:
    """The one line `cs336 COMMAND` prints when `extra` is not installed.

    >>> needs_extra("grade", "grading")
    "cs336 grade needs the 'grading' extra: pip install 'cs336-basics[grading]'"
    """
    return f"cs336 {command} needs the {extra!r} extra: pip install '{DISTRIBUTION}[{extra}]'"
