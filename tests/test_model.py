"""Graded tests of the neural-network parts and the Transformer LM (problems linear, embedding, rmsnorm,
positionwise_feedforward, rope, scaled_dot_product_attention, multihead_self_attention, transformer_block,
transformer_lm).

Expectations are exact answers (float64 oracle on the stored float32 inputs) rounded to float32. Every
comparison is `|got - expected| <= tol·|expected| + atol` with `atol = tol·max|expected|` unless stated
(errors of float sums scale with their terms, not with a result that cancels to ~0). Measured worst errors
of the reference, of the torch built-ins (oracle adapters) and of the equivalent formulations in
`project_tests/suite/test_suite_catches_bugs.py` use ≤ 0.14 of each float32 bound and ≤ 0.46 of each bf16 one
(a float32 result rounded once to bf16 uses up to 0.5). bf16 tolerances are `BF16_TOL` = 2^-6 relative:
2 to 4 ulps of the result, what a correct chain of bf16 operations can need (see `tests/compare.py`).
Tolerances:

| op                      | float32                                     | bf16 in (bf16 or float32 out)   |
|-------------------------|---------------------------------------------|---------------------------------|
| embedding               | exact (a lookup)                            |                                 |
| linear                  | 1e-6                                        | 2^-6 (2-4 ulps of the result)   |
| rmsnorm                 | 1e-6                                        | 2^-6                            |
| swiglu                  | 2e-6 (three GEMMs and a SiLU)               |                                 |
| rope                    | 1e-6, atol (4·(max_pos+1)·u + 1e-6)·max|x| ¹ | 2^-6                            |
| scaled dot-product attn | 2e-6 (two GEMMs around a softmax)           | 2^-6 (scores rounded before exp) |
| multi-head self-attn    | 2e-6                                        |                                 |
| transformer block       | 2e-6                                        |                                 |
| transformer LM          | 5e-6 (two blocks, ~20 ops deep)             | 2^-4 (every op rounds to bf16)  |

¹ u = 2^-24. An angle i·ω computed in float32 is off by ~i·u radians: the error grows with the position.

Cases are built to make typical bugs fail: d_k != d_v, queries != keys, non-default eps on small inputs,
norm gains far from 1, batch-specific and out-of-order RoPE positions, theta != 10000, d_ff not derived
from d_model, and sequences shorter than the context, float16 inputs whose squares overflow.

Dtypes: only RMSNorm's is graded (returned in the input dtype, the rule docs/INTERFACE.md states). A float32
result for bf16 input is as correct as a bf16 one elsewhere; `test_bf16_in_bf16_out` and the bf16 LM
forward are advisory (marker `advisory`, 0 points). A failing comparison names the catalogued mistake the
output matches (`tests/hints.py`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.cases import BLOCK, LM, MHA, RMSNORM_CASES, ROPE_CASES
from tests.compare import BF16_TOL, assert_close
from tests.hints import hinted, shape_hint

from .adapters import (
    run_embedding,
    run_linear,
    run_multihead_self_attention,
    run_multihead_self_attention_with_rope,
    run_rmsnorm,
    run_rope,
    run_scaled_dot_product_attention,
    run_swiglu,
    run_transformer_block,
    run_transformer_lm,
)

FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def _t(array: np.ndarray, bf16: bool = False) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.bfloat16() if bf16 else tensor


def _weights(snap: dict[str, np.ndarray], bf16: bool = False) -> dict[str, torch.Tensor]:
    return {k.removeprefix("weights."): _t(v, bf16) for k, v in snap.items() if k.startswith("weights.")}


# ---------------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("case", ["batched", "vector", "bf16"])
def test_linear_matches_snapshot(case: str, load_snapshot) -> None:
    snap = load_snapshot("model_linear")
    bf16 = case == "bf16"
    weights, x = _t(snap[f"{case}.weights"], bf16), _t(snap[f"{case}.in_features"], bf16)
    d_out, d_in = weights.shape  # held-out cases vary them: square (d_in == d_out) and unequal
    with shape_hint(f"linear {case} (d_in {d_in}, d_out {d_out})"):
        actual = run_linear(d_in, d_out, weights, x)
    # bf16 in: a bf16 or a float32 result is correct (only RMSNorm states a dtype); see the advisory test.
    with hinted("linear", actual, snap[f"{case}.expected"], weights=weights, x=x):
        assert_close(
            actual,
            snap[f"{case}.expected"],
            tol=BF16_TOL if bf16 else 1e-6,
            dtype=None if bf16 else torch.float32,
            what=f"linear {case}",
        )


def test_linear_hand_worked() -> None:
    # y = x Wᵀ with W stored (d_out, d_in): rows of W are the output features. Square weights first: there
    # x W (the transpose forgotten) runs without a shape error, and gives (31, 42) here.
    square, x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 10.0]])
    actual = run_linear(2, 2, square, x)
    with hinted("linear", actual, np.array([[21.0, 43.0]]), weights=square, x=x):
        assert_close(actual, np.array([[21.0, 43.0]]), tol=0.0, what="linear with a square weight")
    # A square batch against torch in float64: (2, 3, 16) @ (16, 16)ᵀ.
    generator = torch.Generator().manual_seed(21)
    square, x = torch.randn(16, 16, generator=generator), torch.randn(2, 3, 16, generator=generator)
    actual, expected = run_linear(16, 16, square, x), (x.double() @ square.double().T)
    with hinted("linear", actual, expected, weights=square, x=x):
        assert_close(actual, expected, tol=1e-6, dtype=torch.float32, what="linear 16 -> 16")
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, -1.0]])
    with shape_hint("linear (d_in 2, d_out 3)"):
        actual = run_linear(2, 3, weights, torch.tensor([1.0, 10.0]))
    assert_close(actual, np.array([21.0, 43.0, -10.0]), tol=0.0, what="linear")


# ------------------------------------------------------------------------------------------- embedding


@pytest.mark.parametrize("case", ["matrix", "3d"])
def test_embedding_matches_snapshot(case: str, load_snapshot) -> None:
    snap = load_snapshot("model_embedding")
    actual = run_embedding(50, 16, _t(snap["weights"]), _t(snap[f"{case}.token_ids"]))
    assert_close(actual, snap[f"{case}.expected"], tol=0.0, atol=0.0, dtype=torch.float32, what="embedding")


# --------------------------------------------------------------------------------------------- rmsnorm


@pytest.mark.parametrize(
    ("case", "eps", "bf16"), [(c, e, b) for c, e, _, b in RMSNORM_CASES], ids=[c[0] for c in RMSNORM_CASES]
)
def test_rmsnorm_matches_snapshot(case: str, eps: float, bf16: bool, load_snapshot) -> None:
    snap = load_snapshot("model_rmsnorm")
    weights, x = _t(snap[f"{case}.weights"], bf16), _t(snap[f"{case}.in_features"], bf16)
    actual = run_rmsnorm(32, eps, weights, x)
    dtype = torch.bfloat16 if bf16 else torch.float32  # the stated rule: returned in the input dtype
    with hinted("rmsnorm", actual, snap[f"{case}.expected"], eps=eps, weights=weights, x=x):
        assert_close(
            actual, snap[f"{case}.expected"], tol=BF16_TOL if bf16 else 1e-6, dtype=dtype, what=f"rmsnorm {case}"
        )


def test_rmsnorm_float16_upcasts() -> None:
    # float16 inputs near 300: x² (9e4) overflows float16 (max 65504), so the mean square must be taken in
    # float32 (the stated rule). Expected: the formula in float64 on the same float16 values, back to float16.
    generator = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 16, generator=generator) * 100 + 250).half()
    weights = (torch.rand(16, generator=generator) + 0.5).half()
    actual = run_rmsnorm(16, 1e-5, weights, x)
    xd = x.double()
    expected = xd / torch.sqrt(xd.square().mean(-1, keepdim=True) + 1e-5) * weights.double()
    with hinted("rmsnorm", actual, expected, eps=1e-5, weights=weights, x=x):
        assert_close(actual, expected, tol=2.0**-10, dtype=torch.float16, what="float16 rmsnorm")


def test_rmsnorm_hand_worked() -> None:
    # x = (3, 4): mean(x²) = 12.5; with eps = 0.5 the scale is 1/sqrt(13) = 1/3.6056; gains (1, 2).
    weights, x = torch.tensor([1.0, 2.0]), torch.tensor([[3.0, 4.0]])
    actual, expected = run_rmsnorm(2, 0.5, weights, x), np.array([[3.0, 8.0]]) / math.sqrt(13.0)
    with hinted("rmsnorm", actual, expected, eps=0.5, weights=weights, x=x):
        assert_close(actual, expected, tol=1e-6, what="rmsnorm")


# ---------------------------------------------------------------------------------------------- swiglu


def test_swiglu_matches_snapshot(load_snapshot) -> None:
    snap = load_snapshot("model_swiglu")
    w1, w2, w3, x = _t(snap["w1"]), _t(snap["w2"]), _t(snap["w3"]), _t(snap["in_features"])
    with shape_hint("swiglu (d_model 32, d_ff 48)"):
        actual = run_swiglu(32, 48, w1, w2, w3, x)
    with hinted("swiglu", actual, snap["expected"], w1=w1, w2=w2, w3=w3, x=x):
        assert_close(actual, snap["expected"], tol=2e-6, dtype=torch.float32, what="swiglu")


# ------------------------------------------------------------------------------------------------ rope


@pytest.mark.parametrize("case", [c[0] for c in ROPE_CASES])
def test_rope_matches_snapshot(case: str, load_snapshot) -> None:
    _, d_k, theta, max_seq_len, _, _, bf16 = next(c for c in ROPE_CASES if c[0] == case)
    snap = load_snapshot("model_rope")
    x, positions = _t(snap[f"{case}.in_query_or_key"], bf16), _t(snap[f"{case}.token_positions"])
    actual = run_rope(d_k, theta, max_seq_len, x, positions)
    with hinted("rope", actual, snap[f"{case}.expected"], x=x, theta=theta, positions=positions):
        if bf16:
            # float32 cos/sin buffers promote a bf16 input to a float32 result: as correct as bf16.
            assert_close(actual, snap[f"{case}.expected"], tol=BF16_TOL, what="bf16 rope")
            return
        # An angle i·ω computed in float32 is off by up to ~i·u radians (u = 2^-24): the error grows with position.
        scale = float(np.abs(snap[f"{case}.in_query_or_key"]).max())
        atol = (4 * (int(positions.max()) + 1) * FLOAT32_UNIT_ROUNDOFF + 1e-6) * scale
        assert_close(actual, snap[f"{case}.expected"], tol=1e-6, atol=atol, dtype=torch.float32, what=f"rope {case}")


def test_rope_hand_worked() -> None:
    # d_k = 4, Θ = 100: pair 0 turns by i rad, pair 1 by i/10 rad. Position 0 leaves x unchanged.
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    actual = run_rope(4, 100.0, 8, x, torch.tensor([0, 2]))
    expected = np.array([[1.0, 0.0, 0.0, 1.0], [math.cos(2), math.sin(2), -math.sin(0.2), math.cos(0.2)]])
    assert_close(actual, expected, tol=1e-6, what="rope")


# ------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("case", ["masked", "shared_mask", "no_mask", "bf16"])
def test_scaled_dot_product_attention_matches_snapshot(case: str, load_snapshot) -> None:
    snap = load_snapshot("model_sdpa")
    if case == "bf16":
        q, k, v = (_t(snap[f"bf16.{n}"], bf16=True) for n in "QKV")
        mask = _t(snap["bf16.mask"])
        actual = run_scaled_dot_product_attention(q, k, v, mask)
        # Q·Kᵀ is rounded to bf16 (|scores| ≲ 4, so ±2^-7) before exp(), which turns that absolute error
        # into a relative error of the weights: 2^-6 leaves room for every bf16 implementation.
        with hinted("sdpa", actual, snap["bf16.expected"], Q=q, K=k, V=v, mask=mask):
            assert_close(actual, snap["bf16.expected"], tol=2.0**-6, what="bf16 attention")
        return
    mask = {"masked": _t(snap["mask"]), "shared_mask": _t(snap["shared_mask"]), "no_mask": None}[case]
    q, k, v = _t(snap["Q"]), _t(snap["K"]), _t(snap["V"])
    actual = run_scaled_dot_product_attention(q, k, v, mask)
    with hinted("sdpa", actual, snap[f"{case}.expected"], Q=q, K=k, V=v, mask=mask):
        assert_close(actual, snap[f"{case}.expected"], tol=2e-6, dtype=torch.float32, what=f"attention {case}")


def test_scaled_dot_product_attention_hand_worked() -> None:
    # Query 0 sees only key 0; query 1 scores (0, 1/sqrt(2)) -> weights 1 : e^0.7071 over values (1, 3).
    q = k = torch.eye(2).unsqueeze(0)
    v = torch.tensor([[[1.0], [3.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    w = math.exp(1 / math.sqrt(2))
    expected = np.array([[[1.0], [(1 + 3 * w) / (1 + w)]]])
    assert_close(run_scaled_dot_product_attention(q, k, v, mask), expected, tol=1e-6, what="attention")


MHA_CASES = ["nope", "nope_4d", "rope_default_positions", "rope_positions"]


@pytest.mark.parametrize("case", MHA_CASES)
def test_multihead_self_attention_matches_snapshot(case: str, load_snapshot) -> None:
    snap = load_snapshot("model_mha")
    weights = [_t(snap[n]) for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "o_proj_weight")]
    d_model, num_heads = MHA["d_model"], MHA["num_heads"]
    theta, positions = None, None
    with shape_hint(f"multi-head attention {case}"):
        if case.startswith("nope"):
            x = _t(snap["4d.in_features"] if case == "nope_4d" else snap["in_features"])
            actual = run_multihead_self_attention(d_model, num_heads, *weights, x)
        else:
            theta, x = MHA["theta"], _t(snap["in_features"])
            positions = _t(snap["token_positions"]) if case == "rope_positions" else None
            actual = run_multihead_self_attention_with_rope(
                d_model, num_heads, MHA["max_seq_len"], theta, *weights, x, positions
            )
    inputs = dict(zip(("wq", "wk", "wv", "wo"), weights)) | {"x": x, "num_heads": num_heads, "theta": theta}
    with hinted("mha", actual, snap[f"{case}.expected"], **inputs, positions=positions):
        assert_close(actual, snap[f"{case}.expected"], tol=2e-6, dtype=torch.float32, what=f"attention {case}")


def test_multihead_self_attention_is_causal(load_snapshot) -> None:
    """Changing the last token must not change any earlier output."""
    snap = load_snapshot("model_mha")
    weights = [_t(snap[n]) for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "o_proj_weight")]
    x = _t(snap["in_features"])
    changed = x.clone()
    changed[:, -1] += 1.0
    before = run_multihead_self_attention(MHA["d_model"], MHA["num_heads"], *weights, x)
    after = run_multihead_self_attention(MHA["d_model"], MHA["num_heads"], *weights, changed)
    assert_close(after[:, :-1], before[:, :-1], tol=1e-6, what="outputs before the changed token")
    assert not torch.allclose(after[:, -1], before[:, -1]), "the changed token's own output did not change"


# -------------------------------------------------------------------------------------- block and LM


def test_transformer_block_matches_snapshot(load_snapshot) -> None:
    snap = load_snapshot("model_block")
    weights, x = _weights(snap), _t(snap["in_features"])
    with shape_hint("transformer block"):
        actual = run_transformer_block(
            BLOCK["d_model"], BLOCK["num_heads"], BLOCK["d_ff"], BLOCK["max_seq_len"], BLOCK["theta"], weights, x
        )
    with hinted(
        "block", actual, snap["expected"], weights=weights, x=x, num_heads=BLOCK["num_heads"], theta=BLOCK["theta"]
    ):
        assert_close(actual, snap["expected"], tol=2e-6, dtype=torch.float32, what="transformer block")


def _lm(weights: dict[str, torch.Tensor], in_indices: torch.Tensor) -> torch.Tensor:
    return run_transformer_lm(
        LM["vocab_size"],
        LM["context_length"],
        LM["d_model"],
        LM["num_layers"],
        LM["num_heads"],
        LM["d_ff"],
        LM["rope_theta"],
        weights,
        in_indices,
    )


@pytest.mark.parametrize("case", ["short", "full_context", pytest.param("bf16", marks=pytest.mark.advisory)])
def test_transformer_lm_matches_snapshot(case: str, load_snapshot) -> None:
    """bf16 is advisory (0 points): a pure-bf16 forward is good practice, not part of the handout."""
    snap = load_snapshot("model_lm")
    bf16 = case == "bf16"
    data = "short" if bf16 else case
    weights, ids = _weights(snap, bf16), _t(snap[f"{data}.in_indices"])
    with shape_hint("transformer LM"):
        actual = _lm(weights, ids)
    with hinted("lm", actual, snap[f"{data}.expected"], config=LM, weights=weights, ids=ids):
        if bf16:
            # Every op of two blocks rounds to bf16 (2^-8 relative each); errors of ~1% of the logit scale are
            # expected, a wrong architecture is off by ~100%.
            assert_close(actual, snap["short.expected"], tol=2.0**-4, what="bf16 LM logits")
        else:
            assert_close(actual, snap[f"{case}.expected"], tol=5e-6, dtype=torch.float32, what=f"LM logits {case}")


def test_transformer_lm_prefix_is_causal(load_snapshot) -> None:
    """The logits of a prefix equal the first positions of the logits of the whole sequence."""
    snap = load_snapshot("model_lm")
    weights, ids = _weights(snap), _t(snap["full_context.in_indices"])
    full = _lm(weights, ids)
    prefix = _lm(weights, ids[:, :5])
    assert_close(prefix, full[:, :5].detach(), tol=5e-6, what="prefix logits")


# ------------------------------------------------------------------------------- advisory: bf16 stays bf16


@pytest.mark.advisory
@pytest.mark.parametrize("op", ["linear", "rope", "attention", "lm"])
def test_bf16_in_bf16_out(op: str, load_snapshot) -> None:
    """Advisory (0 points): bf16 inputs and weights give a bf16 result. Good practice, not a requirement."""
    if op == "linear":
        snap = load_snapshot("model_linear")
        actual = run_linear(24, 40, _t(snap["bf16.weights"], True), _t(snap["bf16.in_features"], True))
    elif op == "rope":
        snap = load_snapshot("model_rope")
        actual = run_rope(16, 10000.0, 64, _t(snap["bf16.in_query_or_key"], True), _t(snap["bf16.token_positions"]))
    elif op == "attention":
        snap = load_snapshot("model_sdpa")
        q, k, v = (_t(snap[f"bf16.{n}"], bf16=True) for n in "QKV")
        actual = run_scaled_dot_product_attention(q, k, v, _t(snap["bf16.mask"]))
    else:
        snap = load_snapshot("model_lm")
        actual = _lm(_weights(snap, True), _t(snap["short.in_indices"]))
    assert actual.dtype == torch.bfloat16, f"{op}: bf16 in gave {actual.dtype} out"
