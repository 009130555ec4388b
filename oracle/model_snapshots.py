"""The snapshots of the model area: fixed-seed inputs and weights, expectations computed in float64.

Each builder returns the arrays of one `tests/_snapshots/<name>.npz` (see `make_snapshots.py`). Keys are
`<case>.<name>`; expectations are stored as float32, and bf16 cases store bf16-representable float32 values
(npz has no bf16). The case tables (`RMSNORM_CASES`, `ROPE_CASES`, `MHA`, `BLOCK`, `LM`, ...) live in `tests/cases.py`, which
the graded tests read too.

NOTE: the bytes of the committed snapshots depend on the order of every random draw below: reordering two
lines of a builder changes its file. `python -m oracle.make_snapshots` must leave `git status` clean.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.cases import BLOCK, LM, MHA, RMSNORM_CASES, ROPE_CASES, SOFTMAX_DIMS
from oracle.model_ops import multihead_self_attention, rmsnorm, rope, swiglu, transformer_block, transformer_lm


class _Rng:
    """Fixed-seed generator of float32 tensors and int64 ids."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 1.0, bf16: bool = False) -> Tensor:
        t = torch.randn(shape, generator=self.g) * std
        return t.bfloat16().float() if bf16 else t

    def linear(self, d_out: int, d_in: int, bf16: bool = False) -> Tensor:
        """A weight at the handout's initial scale (std sqrt(2 / (d_in + d_out)))."""
        return self.normal(d_out, d_in, std=math.sqrt(2.0 / (d_in + d_out)), bf16=bf16)

    def gain(self, d: int, bf16: bool = False) -> Tensor:
        """RMSNorm gains away from 1 so that a missing or swapped norm shows."""
        t = 0.5 + torch.rand(d, generator=self.g)
        return t.bfloat16().float() if bf16 else t

    def ints(self, low: int, high: int, *shape: int) -> Tensor:
        return torch.randint(low, high, shape, generator=self.g)

    def positions(self, max_seq_len: int, *shape: int) -> Tensor:
        """Distinct, increasing, non-contiguous positions below max_seq_len, different for every row."""
        rows = [
            torch.randperm(max_seq_len, generator=self.g)[: shape[-1]].sort().values
            for _ in range(math.prod(shape[:-1]))
        ]
        return torch.stack(rows).reshape(shape)


def _np(arrays: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() if v.dtype != torch.float64 else v.float().numpy() for k, v in arrays.items()}


def _f64(t: Tensor) -> Tensor:
    return t.double()


def _linear_snapshot() -> dict[str, np.ndarray]:
    rng, out = _Rng(1), {}
    for case, x_shape, bf16 in (("batched", (2, 3, 5, 24), False), ("vector", (24,), False), ("bf16", (6, 24), True)):
        w, x = rng.linear(40, 24, bf16), rng.normal(*x_shape, bf16=bf16)
        out |= {f"{case}.weights": w, f"{case}.in_features": x, f"{case}.expected": F.linear(_f64(x), _f64(w))}
    return _np(out)


def _embedding_snapshot() -> dict[str, np.ndarray]:
    rng = _Rng(2)
    w = rng.normal(50, 16)
    ids = rng.ints(0, 50, 3, 7)
    ids[0, 0], ids[0, 1], ids[1, 2] = 0, 49, 49  # both ends of the table and a repeat
    ids_3d = rng.ints(0, 50, 2, 2, 5)
    return _np(
        {
            "weights": w,
            "matrix.token_ids": ids,
            "matrix.expected": F.embedding(ids, w),
            "3d.token_ids": ids_3d,
            "3d.expected": F.embedding(ids_3d, w),
        }
    )


def _swiglu_snapshot() -> dict[str, np.ndarray]:
    rng = _Rng(3)
    d_model, d_ff = 32, 48
    w1, w2, w3 = rng.linear(d_ff, d_model), rng.linear(d_model, d_ff), rng.linear(d_ff, d_model)
    x = rng.normal(2, 5, d_model)
    expected = swiglu(_f64(x), _f64(w1), _f64(w2), _f64(w3))
    return _np({"w1": w1, "w2": w2, "w3": w3, "in_features": x, "expected": expected})


def _rmsnorm_snapshot() -> dict[str, np.ndarray]:
    rng, out = _Rng(4), {}
    for case, eps, scale, bf16 in RMSNORM_CASES:
        w, x = rng.gain(32, bf16), rng.normal(2, 5, 32, std=scale, bf16=bf16)
        out |= {f"{case}.weights": w, f"{case}.in_features": x, f"{case}.expected": rmsnorm(_f64(x), _f64(w), eps)}
    return _np(out)


def _silu_snapshot() -> dict[str, np.ndarray]:
    rng, out = _Rng(5), {}
    for case, bf16 in (("float32", False), ("bf16", True)):
        x = torch.cat([rng.normal(500, std=6.0, bf16=bf16), torch.tensor([-80.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 80.0])])
        out |= {f"{case}.in_features": x, f"{case}.expected": F.silu(_f64(x))}
    return _np(out)


def _softmax_snapshot() -> dict[str, np.ndarray]:
    rng = _Rng(6)
    x = rng.normal(3, 4, 5, std=3.0)
    out = {"in_features": x}
    for dim in SOFTMAX_DIMS:
        out[f"dim{dim}.expected"] = F.softmax(_f64(x), dim=dim)
    # exp(100) overflows float32 and exp(-200) underflows to 0: without the max shift, NaN.
    stable = rng.normal(3, 6, std=3.0) + torch.tensor([[0.0], [100.0], [-200.0]])
    out |= {"stable.in_features": stable, "stable.expected": F.softmax(_f64(stable), dim=-1)}
    x_bf16 = rng.normal(4, 33, std=4.0, bf16=True)
    out |= {"bf16.in_features": x_bf16, "bf16.expected": F.softmax(_f64(x_bf16), dim=-1)}
    return _np(out)


def _sdpa_snapshot() -> dict[str, np.ndarray]:
    rng = _Rng(7)
    # d_k != d_v (8 vs 12) and queries != keys (5 vs 7): a scale by sqrt(d_v) or a transposed K shows.
    q, k, v = rng.normal(2, 3, 5, 8, std=2.0), rng.normal(2, 3, 7, 8, std=2.0), rng.normal(2, 3, 7, 12)
    mask = torch.rand(2, 3, 5, 7, generator=rng.g) < 0.6
    mask[..., 0] = True  # every query sees at least one key
    shared_mask = torch.rand(5, 7, generator=rng.g) < 0.6
    shared_mask[:, 2] = True
    out = {"Q": q, "K": k, "V": v, "mask": mask, "shared_mask": shared_mask}
    f64 = [_f64(t) for t in (q, k, v)]
    out["masked.expected"] = F.scaled_dot_product_attention(*f64, attn_mask=mask)
    out["shared_mask.expected"] = F.scaled_dot_product_attention(*f64, attn_mask=shared_mask)
    out["no_mask.expected"] = F.scaled_dot_product_attention(*f64)
    qb, kb, vb = rng.normal(3, 6, 16, bf16=True), rng.normal(3, 6, 16, bf16=True), rng.normal(3, 6, 16, bf16=True)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out |= {"bf16.Q": qb, "bf16.K": kb, "bf16.V": vb, "bf16.mask": causal}
    out["bf16.expected"] = F.scaled_dot_product_attention(_f64(qb), _f64(kb), _f64(vb), attn_mask=causal)
    return _np(out)


def _rope_snapshot() -> dict[str, np.ndarray]:
    rng, out = _Rng(8), {}
    for case, d_k, theta, max_seq_len, x_shape, pos_shape, bf16 in ROPE_CASES:
        x, pos = rng.normal(*x_shape, bf16=bf16), rng.positions(max_seq_len, *pos_shape)
        out |= {f"{case}.in_query_or_key": x, f"{case}.token_positions": pos}
        out[f"{case}.expected"] = rope(_f64(x), theta, pos)
    return _np(out)


def _mha_snapshot() -> dict[str, np.ndarray]:
    rng = _Rng(9)
    d, h = MHA["d_model"], MHA["num_heads"]
    weights = {name: rng.linear(d, d) for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "o_proj_weight")}
    w64 = [_f64(weights[n]) for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "o_proj_weight")]
    x, x4 = rng.normal(2, 9, d), rng.normal(2, 2, 9, d)
    pos = rng.positions(MHA["max_seq_len"], 2, 9)
    out = dict(weights) | {"in_features": x, "4d.in_features": x4, "token_positions": pos}
    out["nope.expected"] = multihead_self_attention(_f64(x), *w64, h)
    out["nope_4d.expected"] = multihead_self_attention(_f64(x4), *w64, h)
    out["rope_default_positions.expected"] = multihead_self_attention(_f64(x), *w64, h, MHA["theta"])
    out["rope_positions.expected"] = multihead_self_attention(_f64(x), *w64, h, MHA["theta"], pos)
    return _np(out)


def _block_weights(rng: _Rng, d_model: int, d_ff: int, prefix: str = "") -> dict[str, Tensor]:
    w = {f"attn.{n}.weight": rng.linear(d_model, d_model) for n in ("q_proj", "k_proj", "v_proj", "output_proj")}
    w |= {"ln1.weight": rng.gain(d_model), "ln2.weight": rng.gain(d_model)}
    w |= {"ffn.w1.weight": rng.linear(d_ff, d_model), "ffn.w2.weight": rng.linear(d_model, d_ff)}
    w["ffn.w3.weight"] = rng.linear(d_ff, d_model)
    return {prefix + k: v for k, v in w.items()}


def _block_snapshot() -> dict[str, np.ndarray]:
    rng = _Rng(10)
    weights = _block_weights(rng, BLOCK["d_model"], BLOCK["d_ff"])
    x = rng.normal(2, 11, BLOCK["d_model"])
    expected = transformer_block(_f64(x), {k: _f64(v) for k, v in weights.items()}, BLOCK["num_heads"], BLOCK["theta"])
    return _np({f"weights.{k}": v for k, v in weights.items()} | {"in_features": x, "expected": expected})


def lm_weights(seed: int = 11) -> dict[str, Tensor]:
    """Random float32 LM weights for the `LM` architecture, at the handout's initial scales."""
    rng, c = _Rng(seed), LM
    w = {"token_embeddings.weight": rng.normal(c["vocab_size"], c["d_model"])}
    for i in range(c["num_layers"]):
        w |= _block_weights(rng, c["d_model"], c["d_ff"], prefix=f"layers.{i}.")
    w |= {"ln_final.weight": rng.gain(c["d_model"]), "lm_head.weight": rng.linear(c["vocab_size"], c["d_model"])}
    return w


def _lm_snapshot() -> dict[str, np.ndarray]:
    weights = lm_weights()
    rng = _Rng(12)
    out: dict[str, Tensor] = {f"weights.{k}": v for k, v in weights.items()}
    w64 = {k: _f64(v) for k, v in weights.items()}
    for case, shape in (("short", (3, 12)), ("full_context", (2, LM["context_length"]))):
        ids = rng.ints(0, LM["vocab_size"], *shape)
        out[f"{case}.in_indices"] = ids
        out[f"{case}.expected"] = transformer_lm(ids, w64, LM["num_layers"], LM["num_heads"], LM["rope_theta"])
    return _np(out)


SNAPSHOTS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "model_linear": _linear_snapshot,
    "model_embedding": _embedding_snapshot,
    "model_swiglu": _swiglu_snapshot,
    "model_rmsnorm": _rmsnorm_snapshot,
    "model_silu": _silu_snapshot,
    "model_softmax": _softmax_snapshot,
    "model_sdpa": _sdpa_snapshot,
    "model_rope": _rope_snapshot,
    "model_mha": _mha_snapshot,
    "model_block": _block_snapshot,
    "model_lm": _lm_snapshot,
}
