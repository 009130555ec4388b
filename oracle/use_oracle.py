"""A pytest plugin that swaps the oracle's adapters in for `tests/adapters.py`: `pytest -p oracle.use_oracle tests`.

Run this way, the grading suite checks the oracle (torch built-ins) instead of our reference, which proves
that its tolerances accept a second, independent, correct implementation. The tests never import the oracle.
"""

from __future__ import annotations

import sys

import oracle.adapters

# Test modules do `from .adapters import ...`: this makes that name resolve to the oracle.
sys.modules["tests.adapters"] = oracle.adapters

# The oracle's BPE trainer is the naive one on purpose (each step checkable by eye): the speed test, which
# exists to fail naive trainers, is not about the tolerances this plugin proves.
_NOT_FOR_THE_ORACLE = ("test_train_bpe_merges_are_incremental",)


def pytest_collection_modifyitems(config, items):  # noqa: ANN001, ANN201 - pytest hook
    kept = [item for item in items if item.originalname not in _NOT_FOR_THE_ORACLE]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
