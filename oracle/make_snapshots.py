"""Regenerate every fixture and snapshot of the grading suite: `python -m oracle.make_snapshots`.

Each oracle area module may define
- `SNAPSHOTS: dict[str, Callable[[], dict[str, np.ndarray]]]`: builders of `tests/_snapshots/<name>.npz`
  (inputs, weights and the expected outputs together), and
- `FIXTURE_FILES: dict[str, Callable[[], bytes]]`: builders of `tests/fixtures/<name>`.
Builders use fixed seeds only, so running this twice gives the same bytes.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cs336_common.atomic import atomic_write_bytes
from tests.snapshot_io import write_npz

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
SNAPSHOT_DIR = TESTS_DIR / "_snapshots"
FIXTURE_DIR = TESTS_DIR / "fixtures"
AREAS = ("oracle.model", "oracle.training", "oracle.bpe")


def snapshot_builders() -> dict[str, Callable[[], dict[str, np.ndarray]]]:
    """All snapshot builders of all areas, by snapshot name."""
    builders: dict[str, Callable[[], dict[str, np.ndarray]]] = {}
    for area in AREAS:
        module = importlib.import_module(area)
        for name, builder in getattr(module, "SNAPSHOTS", {}).items():
            assert name not in builders, f"snapshot {name!r} is defined twice"
            builders[name] = builder
    return builders


def fixture_builders() -> dict[str, Callable[[], bytes]]:
    """All fixture-file builders of all areas, by file name."""
    builders: dict[str, Callable[[], bytes]] = {}
    for area in AREAS:
        module = importlib.import_module(area)
        for name, builder in getattr(module, "FIXTURE_FILES", {}).items():
            assert name not in builders, f"fixture {name!r} is defined twice"
            builders[name] = builder
    return builders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these snapshots or fixtures (default: all)")
    args = parser.parse_args(argv)
    SNAPSHOT_DIR.mkdir(exist_ok=True)
    FIXTURE_DIR.mkdir(exist_ok=True)
    for name, build in fixture_builders().items():
        if not args.names or name in args.names:
            path = FIXTURE_DIR / name
            atomic_write_bytes(path, build())
            print(f"wrote {path.relative_to(TESTS_DIR.parent)}")
    for name, build in snapshot_builders().items():
        if not args.names or name in args.names:
            path = SNAPSHOT_DIR / f"{name}.npz"
            write_npz(path, build())
            print(f"wrote {path.relative_to(TESTS_DIR.parent)}")


if __name__ == "__main__":
    main()
