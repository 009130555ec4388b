"""The cases of the graded model tests: shapes, hyper-parameters and positions, no expected values.

`draws.py` draws the snapshots and the held-out cases from these tables and the graded tests (`tests/cases.py`
re-exports them) read the same cases back, so a case is defined once. They live here, on the grading side,
because the harness imports the grader's expected values and never the reverse (`project_tests/test_layout.py`).
"""

from __future__ import annotations

# (case, eps, input scale, bf16). A large eps on small inputs makes "eps outside the square root" visible.
RMSNORM_CASES = (("default_eps", 1e-5, 1.0, False), ("large_eps", 0.25, 0.5, False), ("bf16", 1e-5, 3.0, True))

SOFTMAX_DIMS = (0, 1, 2, -1, -3)

# (case, d_k, theta, max_seq_len, x shape, positions shape, bf16). Positions are never 0..seq-1 in order.
ROPE_CASES = (
    ("shared_positions", 16, 10000.0, 64, (2, 3, 10, 16), (10,), False),
    ("batch_positions", 16, 10000.0, 64, (4, 10, 16), (4, 10), False),
    ("per_head_positions", 8, 500.0, 32, (2, 3, 6, 8), (2, 1, 6), False),
    ("bf16", 16, 10000.0, 64, (2, 10, 16), (2, 10), True),
)

MHA = {"d_model": 32, "num_heads": 4, "max_seq_len": 24, "theta": 10000.0}

BLOCK = {"d_model": 32, "num_heads": 4, "d_ff": 48, "max_seq_len": 16, "theta": 10000.0}
LM = {
    "vocab_size": 64,
    "context_length": 16,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "d_ff": 48,
    "rope_theta": 1000.0,  # not the default 10000: a hard-coded theta shows
}
