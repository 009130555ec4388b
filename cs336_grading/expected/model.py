"""Expected values of the model area: every neural-network op of the assignment written with torch built-ins.

The grading side of the harness (its home; the oracle's adapters import it too, `oracle/model.py`). Nothing here
imports `cs336_basics`. RoPE is written independently of ours: as a multiplication of complex numbers
`(x[2k] + i·x[2k+1]) · e^{i·pos·ω_k}`.

Ops compute in the dtype they are given. The graded cases (`cases.py`: the public snapshots and the held-out
draws) run them in float64 on float32 inputs, so the expectation is the exact answer rounded once to
float32; the oracle adapters (`oracle/model.py`) run them in float32 (or bf16) with torch's own kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _float_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (float32, bf16, fp16) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm in float32 (or float64), returned in the input dtype."""
    compute = _float_dtype(x)
    return F.rms_norm(x.to(compute), (x.shape[-1],), weight.to(compute), eps).to(x.dtype)


def swiglu(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def rope_rotation(theta: float, d_k: int, positions: Tensor, dtype: torch.dtype) -> Tensor:
    """Unit complex numbers `e^{i·pos·ω_k}`, ω_k = Θ^(-2k/d_k), shape (*positions.shape, d_k // 2).

    `dtype` (float32 or float64) is the precision of the angles; float32 is what most students write.
    """
    omega = theta ** (-torch.arange(0, d_k, 2, dtype=dtype) / d_k)
    angles = positions.to(dtype)[..., None] * omega
    return torch.polar(torch.ones_like(angles), angles)


def rope(x: Tensor, theta: float, positions: Tensor) -> Tensor:
    """Rotate adjacent pairs of the last dim of `x` (..., seq, d_k); `positions` (..., seq) broadcast."""
    compute = _float_dtype(x)
    pairs = torch.view_as_complex(x.to(compute).unflatten(-1, (-1, 2)).contiguous())  # (..., seq, d_k/2)
    rotated = pairs * rope_rotation(theta, x.shape[-1], positions, compute)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def multihead_self_attention(
    x: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    v_weight: Tensor,
    o_weight: Tensor,
    num_heads: int,
    theta: float | None = None,
    positions: Tensor | None = None,
) -> Tensor:
    """Causal multi-head self-attention of x (..., seq, d_model); RoPE on q and k when `theta` is given."""
    seq_len = x.shape[-2]

    def split_heads(t: Tensor) -> Tensor:  # (..., seq, h*d) -> (..., h, seq, d)
        return t.unflatten(-1, (num_heads, -1)).transpose(-3, -2)

    q, k, v = (split_heads(F.linear(x, w)) for w in (q_weight, k_weight, v_weight))
    if theta is not None:
        pos = torch.arange(seq_len) if positions is None else positions
        pos = pos.unsqueeze(-2)  # (..., 1, seq): the same positions for every head
        q, k = rope(q, theta, pos), rope(k, theta, pos)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (..., h, seq, d)
    return F.linear(out.transpose(-3, -2).flatten(-2), o_weight)


def transformer_block(x: Tensor, weights: dict[str, Tensor], num_heads: int, theta: float, eps: float = 1e-5) -> Tensor:
    """The pre-norm block: `h = x + attn(ln1(x))`, `out = h + ffn(ln2(h))`."""
    w = weights
    attn_in = rmsnorm(x, w["ln1.weight"], eps)
    h = x + multihead_self_attention(
        attn_in,
        w["attn.q_proj.weight"],
        w["attn.k_proj.weight"],
        w["attn.v_proj.weight"],
        w["attn.output_proj.weight"],
        num_heads,
        theta,
    )
    return h + swiglu(rmsnorm(h, w["ln2.weight"], eps), w["ffn.w1.weight"], w["ffn.w2.weight"], w["ffn.w3.weight"])


def transformer_lm(
    in_indices: Tensor, weights: dict[str, Tensor], num_layers: int, num_heads: int, theta: float, eps: float = 1e-5
) -> Tensor:
    """Logits of the pre-norm Transformer LM with the docs/INTERFACE.md state-dict keys."""
    x = F.embedding(in_indices, weights["token_embeddings.weight"])
    for i in range(num_layers):
        prefix = f"layers.{i}."
        block = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
        x = transformer_block(x, block, num_heads, theta, eps)
    return F.linear(rmsnorm(x, weights["ln_final.weight"], eps), weights["lm_head.weight"])
