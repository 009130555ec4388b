"""The cases of the graded model tests: shapes, hyper-parameters and positions, no expected values.

The model cases are defined once, in `cs336_grading/expected/cases.py`, where the grading package draws the
snapshots and the held-out cases from them; the tests read the same cases back from here. Also the names the
tokenizer tests share.
"""

from __future__ import annotations

import os
from pathlib import Path

from cs336_grading.expected.cases import BLOCK, LM, MHA, RMSNORM_CASES, ROPE_CASES, SOFTMAX_DIMS  # noqa: F401

ENDOFTEXT = "<|endoftext|>"
# Real text and the GPT-2 vocabulary beside the checkout (`../shared/data`); tests that need it skip without it.
SHARED_DATA = Path(os.environ.get("CS336_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
