"""The graded model tests are neither too loose nor too tight.

Too loose: each mutant below is a realistic student bug (RoPE on halves, a scale by sqrt(d_v), a missing
causal mask, ...). With the mutant swapped in, the graded test functions of `tests/test_model.py` and
`tests/test_functional.py` are run unchanged and must FAIL.

Too tight: each alternative is a mathematically equivalent float32 formulation that rounds differently
(x / sqrt vs x · rsqrt, a log-sum-exp softmax, float32 RoPE frequencies, einsum, fused projections). The
same graded tests must PASS with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import cs336_basics.attention as attention_module
from cs336_basics import (
    ModelConfig,
    RotaryPositionalEmbedding,
    TransformerBlock,
    TransformerLM,
    scaled_dot_product_attention,
    softmax,
)
from tests import test_functional as graded_functional
from tests import test_model as graded_model
from oracle import model as oracle
from tests.snapshot_io import read_npz

SNAPSHOT_DIR = Path(__file__).resolve().parent.parent / "tests" / "_snapshots"


@pytest.fixture(scope="module")
def load_snapshot() -> Callable[[str], dict[str, np.ndarray]]:
    cache: dict[str, dict[str, np.ndarray]] = {}

    def load(name: str) -> dict[str, np.ndarray]:
        if name not in cache:
            cache[name] = read_npz(SNAPSHOT_DIR / f"{name}.npz")
        return cache[name]

    return load


# A graded check: a label and a call of a graded test function with the snapshot loader.
Check = tuple[str, Callable[[Callable[[str], dict[str, np.ndarray]]], None]]


def _checks(*names: str) -> list[Check]:
    table: dict[str, Callable[[Any], None]] = {
        "softmax_dim0": lambda s: graded_functional.test_softmax_matches_snapshot(0, s),
        "softmax_dim-1": lambda s: graded_functional.test_softmax_matches_snapshot(-1, s),
        "softmax_dim1": lambda s: graded_functional.test_softmax_matches_snapshot(1, s),
        "softmax_stable": lambda s: graded_functional.test_softmax_is_stable_for_huge_inputs(s),
        "silu": lambda s: graded_functional.test_silu_matches_snapshot("float32", s),
        "linear": lambda s: graded_model.test_linear_matches_snapshot("batched", s),
        "linear_bf16": lambda s: graded_model.test_linear_matches_snapshot("bf16", s),
        "rmsnorm_default": lambda s: graded_model.test_rmsnorm_matches_snapshot("default_eps", 1e-5, False, s),
        "rmsnorm_large_eps": lambda s: graded_model.test_rmsnorm_matches_snapshot("large_eps", 0.25, False, s),
        "rmsnorm_bf16": lambda s: graded_model.test_rmsnorm_matches_snapshot("bf16", 1e-5, True, s),
        "swiglu": lambda s: graded_model.test_swiglu_matches_snapshot(s),
        "rope_shared": lambda s: graded_model.test_rope_matches_snapshot("shared_positions", s),
        "rope_batch": lambda s: graded_model.test_rope_matches_snapshot("batch_positions", s),
        "rope_per_head": lambda s: graded_model.test_rope_matches_snapshot("per_head_positions", s),
        "rope_bf16": lambda s: graded_model.test_rope_matches_snapshot("bf16", s),
        "sdpa_masked": lambda s: graded_model.test_scaled_dot_product_attention_matches_snapshot("masked", s),
        "sdpa_shared": lambda s: graded_model.test_scaled_dot_product_attention_matches_snapshot("shared_mask", s),
        "sdpa_bf16": lambda s: graded_model.test_scaled_dot_product_attention_matches_snapshot("bf16", s),
        "mha": lambda s: graded_model.test_multihead_self_attention_matches_snapshot("nope", s),
        "mha_4d": lambda s: graded_model.test_multihead_self_attention_matches_snapshot("nope_4d", s),
        "mha_rope": lambda s: graded_model.test_multihead_self_attention_matches_snapshot("rope_positions", s),
        "mha_rope_default": lambda s: graded_model.test_multihead_self_attention_matches_snapshot(
            "rope_default_positions", s
        ),
        "block": lambda s: graded_model.test_transformer_block_matches_snapshot(s),
        "lm": lambda s: graded_model.test_transformer_lm_matches_snapshot("short", s),
        "lm_full": lambda s: graded_model.test_transformer_lm_matches_snapshot("full_context", s),
    }
    return [(name, table[name]) for name in names]


def _patch_adapter(monkeypatch: pytest.MonkeyPatch, name: str, fn: Callable[..., Any]) -> None:
    """Replace adapter `name` in the graded modules (they imported it by name)."""
    for module in (graded_model, graded_functional):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, fn)


# ------------------------------------------------------------------------------------------------ mutants


def _halves_permutation(d: int) -> Tensor:
    """Indices that make pairs (k, k + d/2) adjacent: [0, d/2, 1, d/2 + 1, ...]."""
    return torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], dim=-1).flatten()


def rope_rotates_halves(d_k: int, theta: float, max_seq_len: int, x: Tensor, positions: Tensor) -> Tensor:
    perm = _halves_permutation(d_k)
    out = torch.empty_like(x)
    out[..., perm] = oracle.rope(x[..., perm], theta, positions)
    return out


def rope_ignores_positions(d_k: int, theta: float, max_seq_len: int, x: Tensor, positions: Tensor) -> Tensor:
    return oracle.rope(x, theta, torch.arange(x.shape[-2]))


def rope_first_row_positions(d_k: int, theta: float, max_seq_len: int, x: Tensor, positions: Tensor) -> Tensor:
    return oracle.rope(x, theta, positions.reshape(-1, positions.shape[-1])[0])


def sdpa_scaled_by_sqrt_dv(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    scores = Q @ K.transpose(-2, -1) / math.sqrt(V.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ V


def sdpa_mask_inverted(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    if mask is None:
        return scaled_dot_product_attention(Q, K, V)
    diagonal = torch.eye(*mask.shape[-2:], dtype=torch.bool)  # keeps one key per query: no all-masked rows
    return scaled_dot_product_attention(Q, K, V, ~mask | diagonal)


def rmsnorm_eps_outside_sqrt(d_model: int, eps: float, weights: Tensor, x: Tensor) -> Tensor:
    x32 = x.float()
    return (x32 / (x32.square().mean(-1, keepdim=True).sqrt() + eps) * weights.float()).to(x.dtype)


def rmsnorm_returns_float32(d_model: int, eps: float, weights: Tensor, x: Tensor) -> Tensor:
    x32 = x.float()
    return x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps) * weights.float()


def block_post_norm(d_model, num_heads, d_ff, max_seq_len, theta, weights, in_features):  # noqa: ANN001, ANN201
    block = TransformerBlock(d_model, num_heads, d_ff, max_seq_len, theta, norm_position="post")
    block.load_state_dict(weights)
    return block(in_features)


def block_swapped_norms(d_model, num_heads, d_ff, max_seq_len, theta, weights, in_features):  # noqa: ANN001, ANN201
    swapped = dict(weights) | {"ln1.weight": weights["ln2.weight"], "ln2.weight": weights["ln1.weight"]}
    block = TransformerBlock(d_model, num_heads, d_ff, max_seq_len, theta)
    block.load_state_dict(swapped)
    return block(in_features)


def _lm_mutant(**changes: Any) -> Callable[..., Tensor]:
    def run(*sizes: Any) -> Tensor:
        *architecture, weights, in_indices = sizes
        names = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta")
        fields = dict(zip(names, architecture, strict=True))
        model = TransformerLM(ModelConfig(**(fields | changes.get("config", {}))))
        model.load_state_dict(weights, strict=False)
        if changes.get("no_final_norm"):
            model.ln_final = nn.Identity()
        return model(in_indices)

    return run


def _rearrange_heads_wrong_order(tensor: Tensor, pattern: str, **axes: int) -> Tensor:
    from einops import rearrange

    return rearrange(tensor, pattern.replace("(heads d)", "(d heads)"), **axes)


def _sdpa_without_mask(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    return scaled_dot_product_attention(Q, K, V, None)


def _rope_forward_ignoring_positions(
    self: RotaryPositionalEmbedding, x: Tensor, token_positions: Tensor | None = None
) -> Tensor:
    return _original_rope_forward(self, x, None)


_original_rope_forward = RotaryPositionalEmbedding.forward

MUTANTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], list[Check]]] = {
    "softmax_last_dim_only": (
        lambda mp: _patch_adapter(mp, "run_softmax", lambda x, dim: softmax(x, -1)),
        _checks("softmax_dim0", "softmax_dim1"),
    ),
    "softmax_without_max_shift": (
        lambda mp: _patch_adapter(mp, "run_softmax", lambda x, dim: x.exp() / x.exp().sum(dim, keepdim=True)),
        _checks("softmax_stable"),
    ),
    "silu_is_sigmoid": (lambda mp: _patch_adapter(mp, "run_silu", torch.sigmoid), _checks("silu")),
    "linear_weight_reshaped_not_transposed": (
        lambda mp: _patch_adapter(mp, "run_linear", lambda d_in, d_out, w, x: x @ w.reshape(d_in, d_out)),
        _checks("linear"),
    ),
    "rmsnorm_eps_outside_sqrt": (
        lambda mp: _patch_adapter(mp, "run_rmsnorm", rmsnorm_eps_outside_sqrt),
        _checks("rmsnorm_large_eps"),
    ),
    "rmsnorm_returns_float32_for_bf16": (
        lambda mp: _patch_adapter(mp, "run_rmsnorm", rmsnorm_returns_float32),
        _checks("rmsnorm_bf16"),
    ),
    "swiglu_gates_the_wrong_branch": (
        lambda mp: _patch_adapter(
            mp, "run_swiglu", lambda d, f, w1, w2, w3, x: oracle.swiglu(x, w3, w2, w1)
        ),
        _checks("swiglu"),
    ),
    "rope_rotates_halves": (
        lambda mp: _patch_adapter(mp, "run_rope", rope_rotates_halves),
        _checks("rope_shared", "rope_batch", "rope_per_head"),
    ),
    "rope_ignores_positions": (
        lambda mp: _patch_adapter(mp, "run_rope", rope_ignores_positions),
        _checks("rope_shared", "rope_batch", "rope_per_head"),
    ),
    "rope_same_positions_for_every_sequence": (
        lambda mp: _patch_adapter(mp, "run_rope", rope_first_row_positions),
        _checks("rope_batch", "rope_per_head"),
    ),
    "mha_rope_ignores_positions": (
        lambda mp: mp.setattr(RotaryPositionalEmbedding, "forward", _rope_forward_ignoring_positions),
        _checks("mha_rope"),
    ),
    "sdpa_scaled_by_sqrt_d_v": (
        lambda mp: _patch_adapter(mp, "run_scaled_dot_product_attention", sdpa_scaled_by_sqrt_dv),
        _checks("sdpa_masked", "sdpa_shared"),
    ),
    "sdpa_mask_inverted": (
        lambda mp: _patch_adapter(mp, "run_scaled_dot_product_attention", sdpa_mask_inverted),
        _checks("sdpa_masked", "sdpa_shared"),
    ),
    "mha_missing_causal_mask": (
        lambda mp: mp.setattr(attention_module, "scaled_dot_product_attention", _sdpa_without_mask),
        _checks("mha", "mha_4d", "mha_rope", "block", "lm"),
    ),
    "mha_heads_split_in_wrong_order": (
        lambda mp: mp.setattr(attention_module, "rearrange", _rearrange_heads_wrong_order),
        _checks("mha", "mha_rope", "block", "lm"),
    ),
    "block_post_norm": (lambda mp: _patch_adapter(mp, "run_transformer_block", block_post_norm), _checks("block")),
    "block_norms_swapped": (
        lambda mp: _patch_adapter(mp, "run_transformer_block", block_swapped_norms),
        _checks("block"),
    ),
    "lm_missing_final_norm": (
        lambda mp: _patch_adapter(mp, "run_transformer_lm", _lm_mutant(no_final_norm=True)),
        _checks("lm", "lm_full"),
    ),
    "lm_ignores_rope_theta": (
        lambda mp: _patch_adapter(mp, "run_transformer_lm", _lm_mutant(config={"rope_theta": 10000.0})),
        _checks("lm", "lm_full"),
    ),
    "lm_without_rope": (
        lambda mp: _patch_adapter(mp, "run_transformer_lm", _lm_mutant(config={"position_embedding": "none"})),
        _checks("lm", "lm_full"),
    ),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_graded_tests_catch_mutant(mutant: str, monkeypatch: pytest.MonkeyPatch, load_snapshot) -> None:
    install, checks = MUTANTS[mutant]
    install(monkeypatch)
    survived = []
    for label, check in checks:
        try:
            check(load_snapshot)
        except AssertionError:  # a crash would prove nothing about the tolerances
            continue
        survived.append(label)
    assert not survived, f"mutant {mutant!r} passed the graded checks {survived}"


# ------------------------------------------------------------------------------- correct alternatives


def softmax_via_logsumexp(x: Tensor, dim: int) -> Tensor:
    m = x.amax(dim, keepdim=True)
    lse = m + (x - m).exp().sum(dim, keepdim=True).log()
    return (x - lse).exp()


def silu_as_division(x: Tensor) -> Tensor:
    return x / (1 + torch.exp(-x))


def rmsnorm_with_division(d_model: int, eps: float, weights: Tensor, x: Tensor) -> Tensor:
    x32 = x.float()
    return (weights.float() * (x32 / torch.sqrt((x32 * x32).sum(-1, keepdim=True) / d_model + eps))).to(x.dtype)


def rope_float32_strided(d_k: int, theta: float, max_seq_len: int, x: Tensor, positions: Tensor) -> Tensor:
    """The classic float32 formulation: frequencies from exp(-log Θ · 2k/d), strided even/odd slices."""
    inv_freq = torch.exp(torch.arange(0, d_k, 2, dtype=torch.float32) * (-math.log(theta) / d_k))
    angles = positions.float()[..., None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    xf = x.float()
    out = torch.empty_like(xf)
    out[..., 0::2] = xf[..., 0::2] * cos - xf[..., 1::2] * sin
    out[..., 1::2] = xf[..., 0::2] * sin + xf[..., 1::2] * cos
    return out.to(x.dtype)


def sdpa_einsum_prescaled(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    scores = torch.einsum("...qd,...kd->...qk", Q / math.sqrt(Q.shape[-1]), K)
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(float("-inf"), dtype=scores.dtype))
    return torch.einsum("...qk,...kv->...qv", softmax_via_logsumexp(scores.float(), -1).to(V.dtype), V)


def mha_fused_projection(  # noqa: ANN201
    d_model, num_heads, wq, wk, wv, wo, x, max_seq_len=None, theta=None, positions=None  # noqa: ANN001
):
    """One GEMM for q, k and v, heads by view/transpose, RoPE in float32 with strided slices."""
    *lead, T, _ = x.shape
    qkv = torch.einsum("...i,oi->...o", x, torch.cat([wq, wk, wv]))
    q, k, v = (t.reshape(*lead, T, num_heads, -1).transpose(-3, -2) for t in qkv.split(d_model, dim=-1))
    if theta is not None:
        pos = (torch.arange(T) if positions is None else positions).unsqueeze(-2)
        q = rope_float32_strided(q.shape[-1], theta, max_seq_len, q, pos)
        k = rope_float32_strided(k.shape[-1], theta, max_seq_len, k, pos)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    out = sdpa_einsum_prescaled(q, k, v, mask)
    return out.transpose(-3, -2).reshape(*lead, T, d_model) @ wo.T


ALTERNATIVES: dict[str, tuple[dict[str, Callable[..., Any]], list[Check]]] = {
    "softmax_via_logsumexp": (
        {"run_softmax": softmax_via_logsumexp},
        _checks("softmax_dim0", "softmax_dim1", "softmax_dim-1", "softmax_stable"),
    ),
    "silu_as_division": ({"run_silu": silu_as_division}, _checks("silu")),
    "linear_einsum": (
        {"run_linear": lambda d_in, d_out, w, x: torch.einsum("...i,oi->...o", x, w)},
        _checks("linear", "linear_bf16"),
    ),
    "rmsnorm_with_division": (
        {"run_rmsnorm": rmsnorm_with_division},
        _checks("rmsnorm_default", "rmsnorm_large_eps", "rmsnorm_bf16"),
    ),
    "rope_float32_strided": (
        {"run_rope": rope_float32_strided},
        _checks("rope_shared", "rope_batch", "rope_per_head", "rope_bf16"),
    ),
    "sdpa_einsum_prescaled": (
        {"run_scaled_dot_product_attention": sdpa_einsum_prescaled},
        _checks("sdpa_masked", "sdpa_shared", "sdpa_bf16"),
    ),
    "mha_fused_projection": (
        {
            "run_multihead_self_attention": mha_fused_projection,
            "run_multihead_self_attention_with_rope": lambda d, h, msl, th, wq, wk, wv, wo, x, pos=None: (
                mha_fused_projection(d, h, wq, wk, wv, wo, x, msl, th, pos)
            ),
        },
        _checks("mha", "mha_4d", "mha_rope", "mha_rope_default"),
    ),
}


@pytest.mark.parametrize("alternative", sorted(ALTERNATIVES))
def test_graded_tests_accept_equivalent_formulation(
    alternative: str, monkeypatch: pytest.MonkeyPatch, load_snapshot
) -> None:
    adapters, checks = ALTERNATIVES[alternative]
    for name, fn in adapters.items():
        _patch_adapter(monkeypatch, name, fn)
    for _, check in checks:
        check(load_snapshot)

