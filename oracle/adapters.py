"""The adapter interface implemented by the oracle itself (torch built-ins behind the same names).

`pytest -p oracle.use_oracle tests` runs the whole grading suite against these functions, which proves
that every mathematically equivalent implementation passes and that no test relies on a detail of our
reference. Each area keeps its adapters beside its oracle; names resolve lazily so that one area can be
worked on while another is incomplete.
"""

from __future__ import annotations

import importlib
from typing import Any

_AREAS = ("oracle.model", "oracle.training", "oracle.bpe")


def __getattr__(name: str) -> Any:
    if name.startswith("run_") or name.startswith("get_"):
        for area in _AREAS:
            module = importlib.import_module(area)
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(f"the oracle implements no adapter named {name!r}")
