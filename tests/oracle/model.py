"""Oracle of the model area: every neural-network op written with torch built-ins, the snapshots built
from them, the model adapters implemented with them, and `OracleTransformerLM`, a torch-native twin of our
model (same state-dict keys) for benchmarks and the training-quality comparison.

Nothing here imports `cs336_basics`. RoPE is written independently of ours: as a multiplication of complex
numbers `(x[2k] + i·x[2k+1]) · e^{i·pos·ω_k}`.

Ops compute in the dtype they are given. Snapshots run them in float64 on the float32 inputs, so the stored
expectation is the exact answer rounded once to float32; the oracle adapters run them in float32 (or bf16)
with torch's own kernels, which proves that a second, independent float32 implementation also meets the
tolerances of the graded tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------------------


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


def transformer_block(
    x: Tensor, weights: dict[str, Tensor], num_heads: int, theta: float, eps: float = 1e-5
) -> Tensor:
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
    """Logits of the pre-norm Transformer LM with the INTERFACE.md state-dict keys."""
    x = F.embedding(in_indices, weights["token_embeddings.weight"])
    for i in range(num_layers):
        prefix = f"layers.{i}."
        block = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
        x = transformer_block(x, block, num_heads, theta, eps)
    return F.linear(rmsnorm(x, weights["ln_final.weight"], eps), weights["lm_head.weight"])


# ----------------------------------------------------------------------------------------------------------
# A torch-native twin of TransformerLM (nn.Linear, nn.RMSNorm, F.scaled_dot_product_attention)
# ----------------------------------------------------------------------------------------------------------


def _init_linear(layer: nn.Linear) -> None:
    std = math.sqrt(2.0 / (layer.in_features + layer.out_features))
    nn.init.trunc_normal_(layer.weight, std=std, a=-3 * std, b=3 * std)


class _OracleAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.output_proj = (
            nn.Linear(d_model, d_model, bias=False) for _ in range(4)
        )

    def forward(self, x: Tensor, rotation: Tensor) -> Tensor:
        B, T, D = x.shape
        H = self.num_heads

        def rotate(t: Tensor) -> Tensor:  # (B, T, H*d) -> (B, H, T, d), RoPE as complex products
            pairs = torch.view_as_complex(t.float().view(B, T, H, -1, 2))  # (B, T, H, d/2)
            return torch.view_as_real(pairs * rotation[:T, None]).view(B, T, H, -1).to(t.dtype).transpose(1, 2)

        q, k = rotate(self.q_proj(x)), rotate(self.k_proj(x))
        v = self.v_proj(x).view(B, T, H, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, d)
        return self.output_proj(out.transpose(1, 2).reshape(B, T, D))


class _OracleFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _OracleBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int, eps: float) -> None:
        super().__init__()
        self.attn = _OracleAttention(d_model, num_heads)
        self.ln1 = nn.RMSNorm(d_model, eps=eps)
        self.ffn = _OracleFFN(d_model, d_ff)
        self.ln2 = nn.RMSNorm(d_model, eps=eps)

    def forward(self, x: Tensor, rotation: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), rotation)
        return x + self.ffn(self.ln2(x))


class OracleTransformerLM(nn.Module):
    """The pre-norm RoPE Transformer LM from torch built-ins, with our state-dict keys and initialisation."""

    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        rope_theta: float = 10000.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(_OracleBlock(d_model, num_heads, d_ff, eps) for _ in range(num_layers))
        self.ln_final = nn.RMSNorm(d_model, eps=eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        rotation = rope_rotation(rope_theta, d_model // num_heads, torch.arange(context_length), torch.float64)
        # cos/sin rather than angles: they stay accurate if the module is cast to a lower precision.
        self.register_buffer("rope_cos", rotation.real.float(), persistent=False)
        self.register_buffer("rope_sin", rotation.imag.float(), persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _init_linear(module)
        nn.init.trunc_normal_(self.token_embeddings.weight, std=1.0, a=-3.0, b=3.0)

    def forward(self, in_indices: Tensor) -> Tensor:
        rotation = torch.complex(self.rope_cos.float(), self.rope_sin.float())
        x = self.token_embeddings(in_indices)
        for block in self.layers:
            x = block(x, rotation)
        return self.lm_head(self.ln_final(x))


# ----------------------------------------------------------------------------------------------------------
# The adapters of the model area, implemented by the oracle (same names and parameters as tests/adapters.py)
# ----------------------------------------------------------------------------------------------------------


def run_linear(d_in: int, d_out: int, weights: Tensor, in_features: Tensor) -> Tensor:
    return F.linear(in_features, weights)


def run_embedding(vocab_size: int, d_model: int, weights: Tensor, token_ids: Tensor) -> Tensor:
    return F.embedding(token_ids, weights)


def run_swiglu(
    d_model: int, d_ff: int, w1_weight: Tensor, w2_weight: Tensor, w3_weight: Tensor, in_features: Tensor
) -> Tensor:
    return swiglu(in_features, w1_weight, w2_weight, w3_weight)


def run_scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    return F.scaled_dot_product_attention(Q, K, V, attn_mask=mask)


def run_multihead_self_attention(
    d_model: int,
    num_heads: int,
    q_proj_weight: Tensor,
    k_proj_weight: Tensor,
    v_proj_weight: Tensor,
    o_proj_weight: Tensor,
    in_features: Tensor,
) -> Tensor:
    return multihead_self_attention(in_features, q_proj_weight, k_proj_weight, v_proj_weight, o_proj_weight, num_heads)


def run_multihead_self_attention_with_rope(
    d_model: int,
    num_heads: int,
    max_seq_len: int,
    theta: float,
    q_proj_weight: Tensor,
    k_proj_weight: Tensor,
    v_proj_weight: Tensor,
    o_proj_weight: Tensor,
    in_features: Tensor,
    token_positions: Tensor | None = None,
) -> Tensor:
    return multihead_self_attention(
        in_features, q_proj_weight, k_proj_weight, v_proj_weight, o_proj_weight, num_heads, theta, token_positions
    )


def run_rope(d_k: int, theta: float, max_seq_len: int, in_query_or_key: Tensor, token_positions: Tensor) -> Tensor:
    return rope(in_query_or_key, theta, token_positions)


def run_transformer_block(
    d_model: int,
    num_heads: int,
    d_ff: int,
    max_seq_len: int,
    theta: float,
    weights: dict[str, Tensor],
    in_features: Tensor,
) -> Tensor:
    return transformer_block(in_features, weights, num_heads, theta)


def run_transformer_lm(
    vocab_size: int,
    context_length: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    rope_theta: float,
    weights: dict[str, Tensor],
    in_indices: Tensor,
) -> Tensor:
    model = OracleTransformerLM(vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta)
    model.to(device=in_indices.device, dtype=weights["ln_final.weight"].dtype)
    model.load_state_dict(weights)
    return model(in_indices)


def run_rmsnorm(d_model: int, eps: float, weights: Tensor, in_features: Tensor) -> Tensor:
    return rmsnorm(in_features, weights, eps)


def run_silu(in_features: Tensor) -> Tensor:
    return F.silu(in_features)


def run_softmax(in_features: Tensor, dim: int) -> Tensor:
    return F.softmax(in_features, dim=dim)


# ----------------------------------------------------------------------------------------------------------
# Snapshots: fixed-seed inputs and weights, expectations computed in float64 and stored as float32.
# Keys are `<case>.<name>`; bf16 cases store bf16-representable float32 values (npz has no bf16).
# ----------------------------------------------------------------------------------------------------------


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


# (case, eps, input scale, bf16). A large eps on small inputs makes "eps outside the square root" visible.
RMSNORM_CASES = (("default_eps", 1e-5, 1.0, False), ("large_eps", 0.25, 0.5, False), ("bf16", 1e-5, 3.0, True))


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


SOFTMAX_DIMS = (0, 1, 2, -1, -3)


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


# (case, d_k, theta, max_seq_len, x shape, positions shape, bf16). Positions are never 0..seq-1 in order.
ROPE_CASES = (
    ("shared_positions", 16, 10000.0, 64, (2, 3, 10, 16), (10,), False),
    ("batch_positions", 16, 10000.0, 64, (4, 10, 16), (4, 10), False),
    ("per_head_positions", 8, 500.0, 32, (2, 3, 6, 8), (2, 1, 6), False),
    ("bf16", 16, 10000.0, 64, (2, 10, 16), (2, 10), True),
)


def _rope_snapshot() -> dict[str, np.ndarray]:
    rng, out = _Rng(8), {}
    for case, d_k, theta, max_seq_len, x_shape, pos_shape, bf16 in ROPE_CASES:
        x, pos = rng.normal(*x_shape, bf16=bf16), rng.positions(max_seq_len, *pos_shape)
        out |= {f"{case}.in_query_or_key": x, f"{case}.token_positions": pos}
        out[f"{case}.expected"] = rope(_f64(x), theta, pos)
    return _np(out)


MHA = {"d_model": 32, "num_heads": 4, "max_seq_len": 24, "theta": 10000.0}


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


BLOCK = {"d_model": 32, "num_heads": 4, "d_ff": 48, "max_seq_len": 16, "theta": 10000.0}
LM = {
    "vocab_size": 64, "context_length": 16, "d_model": 32, "num_layers": 2, "num_heads": 4, "d_ff": 48,
    "rope_theta": 1000.0,  # not the default 10000: a hard-coded theta shows
}


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


# ----------------------------------------------------------------------------------------------------------
# The comparison every graded model test uses
# ----------------------------------------------------------------------------------------------------------

FLOAT32_EPS = 2.0**-23  # spacing of float32 numbers just above 1 (unit roundoff u = eps / 2)
BF16_EPS = 2.0**-7  # the same for bfloat16 (7 explicit mantissa bits)


def assert_close(
    actual: Tensor,
    expected: np.ndarray | Tensor,
    *,
    tol: float,
    atol: float | None = None,
    dtype: torch.dtype | None = None,
    what: str = "output",
) -> None:
    """Assert `|actual - expected| <= tol·|expected| + atol` elementwise (NaN never passes).

    `atol` defaults to `tol · max|expected|`: the rounding error of a float sum scales with the size of its
    terms, not of the result, so an output that cancels to nearly 0 may carry the error of its neighbours.
    `dtype`, when given, is the dtype `actual` must have (e.g. bf16 in, bf16 out).
    """
    if not isinstance(actual, Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    expected_t = torch.as_tensor(expected).double()
    if tuple(actual.shape) != tuple(expected_t.shape):
        raise AssertionError(f"{what}: expected shape {tuple(expected_t.shape)}, got {tuple(actual.shape)}")
    if dtype is not None and actual.dtype != dtype:
        raise AssertionError(f"{what}: expected dtype {dtype}, got {actual.dtype}")
    got = actual.detach().cpu().double()
    if atol is None:
        atol = tol * expected_t.abs().max().item() if expected_t.numel() else 0.0
    err = (got - expected_t).abs()
    bound = tol * expected_t.abs() + atol
    bad = ~(err <= bound)
    if bad.any():
        flat = int(torch.where(bad.flatten(), err.flatten().nan_to_num(float("inf")), -1.0).argmax())
        idx = tuple(int(i) for i in np.unravel_index(flat, tuple(err.shape)))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; worst at {idx}: got "
            f"{got[idx].item():.9g}, expected {expected_t[idx].item():.9g} (|diff| {err[idx].item():.3g} > "
            f"{bound[idx].item():.3g} = {tol:.3g}·|expected| + {atol:.3g})"
        )
