"""The snapshots of the model area: the public draws of the graded cases (`cs336_grading/expected/draws.py`).

Each builder returns the arrays of one `tests/_snapshots/<name>.npz` (see `make_snapshots.py`): the grading
package's `draw(name)` at the public seed. The same builders, drawn from a course secret, give the held-out
cases of a grading run (`cs336_grading/grader/heldout.py`): one home for the cases and their expected values.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from cs336_grading.expected.draws import BUILDERS, draw, lm_weights  # noqa: F401 - lm_weights re-exported

SNAPSHOTS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    name: partial(draw, name) for name in BUILDERS if name.startswith("model_")
}
