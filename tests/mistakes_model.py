"""Catalogued mistakes of the model problems (linear to transformer_lm), for the hints of `tests/hints.py`.

Every function here is deliberately wrong in one named way; the failure message of a graded test says
"your output matches <says>" when a student's output agrees with it on the test's inputs. The wrong ops
are written with torch built-ins (F.scaled_dot_product_attention, F.rms_norm, complex RoPE) that the
assignment forbids, so nothing here can be handed in. Inputs are keyword arguments named as the tests pass
them: `x`, `weights`, `positions`, `theta`, `eps`, `Q`/`K`/`V`/`mask`, `wq`/`wk`/`wv`/`wo`, `config`, `ids`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.hints import mistake

# ---------------------------------------------------------------------------------------------- pieces


def _rope(
    x: Tensor, theta: float, positions: Tensor, *, halves: bool = False, sign: float = 1.0, exponent: str = "2k/d"
) -> Tensor:
    d = x.shape[-1]
    k = torch.arange(d // 2, dtype=torch.float64)
    power = {"2k/d": 2 * k / d, "k/d": k / d, "2(k+1)/d": 2 * (k + 1) / d}[exponent]
    angles = positions.double()[..., None] * theta ** (-power)
    cos, sin = angles.cos(), sign * angles.sin()
    xd = x.double()
    first, second = (xd[..., : d // 2], xd[..., d // 2 :]) if halves else (xd[..., 0::2], xd[..., 1::2])
    a, b = first * cos - second * sin, first * sin + second * cos
    out = torch.cat([a, b], -1) if halves else torch.stack([a, b], -1).flatten(-2)
    return out.to(x.dtype)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None = None) -> Tensor:
    dtype = v.dtype
    q, k, v = q.double(), k.double(), v.double()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).to(dtype)


def _mha(
    x: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    num_heads: int,
    theta: float | None = None,
    positions: Tensor | None = None,
    *,
    causal: bool = True,
    heads: str = "hd",
    rope_v: bool = False,
    rope_whole: bool = False,
    ignore_positions: bool = False,
    scale_by_model: bool = False,
) -> Tensor:
    *lead, T, D = x.shape
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    pos = torch.arange(T) if positions is None or ignore_positions else positions
    if theta is not None and rope_whole:
        q, k = _rope(q, theta, pos), _rope(k, theta, pos)

    def split(t: Tensor) -> Tensor:
        if heads == "hd":
            return t.reshape(*lead, T, num_heads, D // num_heads).transpose(-3, -2)
        return t.reshape(*lead, T, D // num_heads, num_heads).movedim(-1, -3)

    q, k, v = split(q), split(k), split(v)
    if theta is not None and not rope_whole:
        pos_h = pos.unsqueeze(-2) if pos.dim() > 1 else pos
        q, k = _rope(q, theta, pos_h), _rope(k, theta, pos_h)
        if rope_v:
            v = _rope(v, theta, pos_h)
    mask = torch.ones(T, T, dtype=torch.bool).tril() if causal else None
    out = _attend(q, k, v, mask, 1 / math.sqrt(D) if scale_by_model else None)
    if heads == "hd":
        out = out.transpose(-3, -2).reshape(*lead, T, D)
    else:
        out = out.movedim(-3, -1).reshape(*lead, T, D)
    return out @ wo.T


def _norm(x: Tensor, g: Tensor, eps: float = 1e-5) -> Tensor:
    return F.rms_norm(x.float(), (x.shape[-1],), g.float(), eps).to(x.dtype)


def _ffn(x: Tensor, w: dict[str, Tensor], prefix: str) -> Tensor:
    return (F.silu(x @ w[prefix + "w1.weight"].T) * (x @ w[prefix + "w3.weight"].T)) @ w[prefix + "w2.weight"].T


def _block(
    x: Tensor,
    w: dict[str, Tensor],
    num_heads: int,
    theta: float | None,
    prefix: str = "",
    *,
    order: str = "pre",
    swap: bool = False,
    residual: bool = True,
) -> Tensor:
    g1, g2 = w[prefix + "ln1.weight"], w[prefix + "ln2.weight"]
    if swap:
        g1, g2 = g2, g1
    names = ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.output_proj.weight")

    def attn(h: Tensor) -> Tensor:
        return _mha(h, *(w[prefix + n] for n in names), num_heads, theta)

    if order == "post":
        x = _norm(x + attn(x), g1)
        return _norm(x + _ffn(x, w, prefix + "ffn."), g2)
    x = x + attn(_norm(x, g1)) if residual else attn(_norm(x, g1))
    return x + _ffn(_norm(x, g2), w, prefix + "ffn.") if residual else _ffn(_norm(x, g2), w, prefix + "ffn.")


def _lm(
    config: dict[str, Any],
    weights: dict[str, Tensor],
    ids: Tensor,
    *,
    theta: float | None = -1.0,
    final_norm: bool = True,
    probabilities: bool = False,
) -> Tensor:
    rope_theta = config["rope_theta"] if theta == -1.0 else theta
    x = weights["token_embeddings.weight"][ids]
    for i in range(config["num_layers"]):
        x = _block(x, weights, config["num_heads"], rope_theta, prefix=f"layers.{i}.")
    if final_norm:
        x = _norm(x, weights["ln_final.weight"])
    logits = x @ weights["lm_head.weight"].T
    return logits.softmax(-1) if probabilities else logits


# ---------------------------------------------------------------------------------------------- linear


@mistake("linear", "the weight reshaped to (d_in, d_out) instead of transposed (y = x W^T with W stored (d_out, d_in))")
def linear_reshaped(weights: Tensor, x: Tensor, **_: Any) -> Tensor:
    if weights.shape[0] == weights.shape[1]:
        raise ValueError("a square weight reshaped is the weight itself: that is `linear_no_transpose`")
    return x @ weights.reshape(weights.shape[1], weights.shape[0])


@mistake("linear", "x W instead of x Wᵀ: the weight used without its transpose (W is stored (d_out, d_in))")
def linear_no_transpose(weights: Tensor, x: Tensor, **_: Any) -> Tensor:
    if weights.shape[0] != weights.shape[1]:
        raise ValueError("only a square weight runs without a shape error")
    return x @ weights


# --------------------------------------------------------------------------------------------- rmsnorm


@mistake("rmsnorm", "RMSNorm with eps added outside the square root (x / (sqrt(mean(x^2)) + eps))")
def rmsnorm_eps_outside(eps: float, weights: Tensor, x: Tensor, **_: Any) -> Tensor:
    x32 = x.float()
    return (x32 / (x32.square().mean(-1, keepdim=True).sqrt() + eps) * weights.float()).to(x.dtype)


@mistake("rmsnorm", "RMSNorm computed in the input dtype, without the upcast to float32 (x^2 overflows float16)")
def rmsnorm_no_upcast(eps: float, weights: Tensor, x: Tensor, **_: Any) -> Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weights.to(x.dtype)


@mistake("rmsnorm", "RMSNorm dividing by sqrt(sum(x^2) + eps) instead of sqrt(mean(x^2) + eps)")
def rmsnorm_sum(eps: float, weights: Tensor, x: Tensor, **_: Any) -> Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().sum(-1, keepdim=True) + eps) * weights.float()).to(x.dtype)


@mistake("rmsnorm", "RMSNorm without the gain g")
def rmsnorm_no_gain(eps: float, weights: Tensor, x: Tensor, **_: Any) -> Tensor:
    return _norm(x, torch.ones_like(weights), eps)


@mistake("rmsnorm", "a LayerNorm (the mean subtracted first) instead of RMSNorm")
def rmsnorm_is_layernorm(eps: float, weights: Tensor, x: Tensor, **_: Any) -> Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), weights.float(), None, eps).to(x.dtype)


# --------------------------------------------------------------------------------------- softmax, silu


@mistake("softmax", "softmax over the last dimension whatever `dim` says")
def softmax_last_dim(x: Tensor, dim: int, **_: Any) -> Tensor:
    return torch.softmax(x.double(), -1).to(x.dtype)


@mistake("softmax", "softmax without subtracting the maximum first (exp overflows to inf, giving NaN)")
def softmax_no_shift(x: Tensor, dim: int, **_: Any) -> Tensor:
    return x.exp() / x.exp().sum(dim, keepdim=True)


@mistake("softmax", "softmax normalised over all elements instead of along `dim`")
def softmax_all_elements(x: Tensor, dim: int, **_: Any) -> Tensor:
    e = (x.double() - x.double().max()).exp()
    return (e / e.sum()).to(x.dtype)


@mistake("silu", "the sigmoid alone (SiLU is x * sigmoid(x))")
def silu_is_sigmoid(x: Tensor, **_: Any) -> Tensor:
    return torch.sigmoid(x)


@mistake(
    "silu",
    "SiLU written as x·e^x/(1 + e^x): e^x overflows float32 above x ≈ 88.7 and inf/inf is NaN "
    "(use x·sigmoid(x) or x/(1 + e^-x))",
)
def silu_exp_ratio(x: Tensor, **_: Any) -> Tensor:
    return x * x.exp() / (1 + x.exp())


@mistake("silu", "GELU instead of SiLU")
def silu_is_gelu(x: Tensor, **_: Any) -> Tensor:
    return F.gelu(x)


# ---------------------------------------------------------------------------------------------- swiglu


@mistake("swiglu", "SwiGLU gating the wrong branch: SiLU applied to W3 x instead of W1 x")
def swiglu_gate_w3(w1: Tensor, w2: Tensor, w3: Tensor, x: Tensor, **_: Any) -> Tensor:
    return (F.silu(x @ w3.T) * (x @ w1.T)) @ w2.T


@mistake("swiglu", "a SiLU feed-forward without the gate: W2 SiLU(W1 x), W3 unused")
def swiglu_no_gate(w1: Tensor, w2: Tensor, w3: Tensor, x: Tensor, **_: Any) -> Tensor:
    return F.silu(x @ w1.T) @ w2.T


@mistake("swiglu", "SiLU applied to the product: W2 SiLU(W1 x * W3 x)")
def swiglu_silu_of_product(w1: Tensor, w2: Tensor, w3: Tensor, x: Tensor, **_: Any) -> Tensor:
    return F.silu((x @ w1.T) * (x @ w3.T)) @ w2.T


@mistake("swiglu", "a GLU with a sigmoid gate instead of SiLU: W2(sigmoid(W1 x) * W3 x)")
def swiglu_sigmoid_gate(w1: Tensor, w2: Tensor, w3: Tensor, x: Tensor, **_: Any) -> Tensor:
    return (torch.sigmoid(x @ w1.T) * (x @ w3.T)) @ w2.T


# ------------------------------------------------------------------------------------------------ rope


@mistake("rope", "RoPE applied to the two halves (x[k], x[k + d/2]) instead of adjacent pairs (x[2k], x[2k+1])")
def rope_halves(x: Tensor, theta: float, positions: Tensor, **_: Any) -> Tensor:
    return _rope(x, theta, positions, halves=True)


@mistake("rope", "RoPE ignoring token_positions (positions 0, 1, 2, ... used instead)")
def rope_ignores_positions(x: Tensor, theta: float, positions: Tensor, **_: Any) -> Tensor:
    return _rope(x, theta, torch.arange(x.shape[-2]))


@mistake("rope", "RoPE using the first sequence's positions for every sequence of the batch")
def rope_first_row_positions(x: Tensor, theta: float, positions: Tensor, **_: Any) -> Tensor:
    return _rope(x, theta, positions.reshape(-1, positions.shape[-1])[0])


@mistake("rope", "RoPE rotating the wrong way (the sign of sin flipped)")
def rope_opposite_direction(x: Tensor, theta: float, positions: Tensor, **_: Any) -> Tensor:
    return _rope(x, theta, positions, sign=-1.0)


@mistake("rope", "RoPE frequencies Θ^(-k/d) instead of Θ^(-2k/d)")
def rope_exponent_k_over_d(x: Tensor, theta: float, positions: Tensor, **_: Any) -> Tensor:
    return _rope(x, theta, positions, exponent="k/d")


@mistake("rope", "RoPE frequencies counted from k = 1: Θ^(-2(k+1)/d) instead of Θ^(-2k/d)")
def rope_exponent_off_by_one(x: Tensor, theta: float, positions: Tensor, **_: Any) -> Tensor:
    return _rope(x, theta, positions, exponent="2(k+1)/d")


# ------------------------------------------------------------------------------------------- attention


@mistake("sdpa", "attention scores scaled by 1/sqrt(d_v) instead of 1/sqrt(d_k)")
def sdpa_scale_dv(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, **_: Any) -> Tensor:
    return _attend(Q, K, V, mask, 1 / math.sqrt(V.shape[-1]))


@mistake("sdpa", "attention scores not scaled at all (the 1/sqrt(d_k) is missing)")
def sdpa_no_scale(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, **_: Any) -> Tensor:
    return _attend(Q, K, V, mask, 1.0)


@mistake("sdpa", "attention scores divided by d_k instead of sqrt(d_k)")
def sdpa_scale_dk(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, **_: Any) -> Tensor:
    return _attend(Q, K, V, mask, 1 / Q.shape[-1])


@mistake("sdpa", "the mask inverted (True taken as 'masked out'; True means 'may attend')")
def sdpa_mask_inverted(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, **_: Any) -> Tensor:
    return _attend(Q, K, V, None if mask is None else ~mask)


@mistake("sdpa", "attention with the mask ignored")
def sdpa_mask_ignored(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, **_: Any) -> Tensor:
    return _attend(Q, K, V, None)


@mistake("sdpa", "the attention softmax taken over the queries (dim -2) instead of the keys")
def sdpa_softmax_over_queries(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, **_: Any) -> Tensor:
    scores = Q.double() @ K.double().transpose(-2, -1) / math.sqrt(Q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-2) @ V.double()).to(V.dtype)


# ------------------------------------------------------------------------------- multi-head attention


def _mha_mistake(says: str, **options: Any) -> None:
    def fn(
        x: Tensor,
        wq: Tensor,
        wk: Tensor,
        wv: Tensor,
        wo: Tensor,
        num_heads: int,
        theta: float | None = None,
        positions: Tensor | None = None,
        **_: Any,
    ) -> Tensor:
        return _mha(
            x.double(), wq.double(), wk.double(), wv.double(), wo.double(), num_heads, theta, positions, **options
        ).to(x.dtype)

    fn.__name__ = "mha_" + "_".join(f"{k}" for k in options)
    mistake("mha", says)(fn)


_mha_mistake("multi-head attention without the causal mask", causal=False)
_mha_mistake(
    "heads split in the wrong order: projection rows read as (d_head, heads) instead of (heads, d_head)", heads="dh"
)
_mha_mistake("RoPE in attention ignoring token_positions (0, 1, 2, ... used instead)", ignore_positions=True)
_mha_mistake("RoPE applied to the values as well as the queries and keys", rope_v=True)
_mha_mistake("RoPE applied across the whole d_model projection instead of within each head", rope_whole=True)
_mha_mistake("attention scaled by 1/sqrt(d_model) instead of 1/sqrt(d_head)", scale_by_model=True)


# -------------------------------------------------------------------------------------- block and LM


@mistake("block", "a post-norm block (x = norm(x + sublayer(x))) instead of pre-norm (x + sublayer(norm(x)))")
def block_post_norm(weights: dict[str, Tensor], x: Tensor, num_heads: int, theta: float, **_: Any) -> Tensor:
    return _block(x.double(), {k: v.double() for k, v in weights.items()}, num_heads, theta, order="post")


@mistake("block", "the two norms swapped (ln2 before attention, ln1 before the feed-forward)")
def block_norms_swapped(weights: dict[str, Tensor], x: Tensor, num_heads: int, theta: float, **_: Any) -> Tensor:
    return _block(x.double(), {k: v.double() for k, v in weights.items()}, num_heads, theta, swap=True)


@mistake("block", "a block without RoPE in its attention")
def block_without_rope(weights: dict[str, Tensor], x: Tensor, num_heads: int, theta: float, **_: Any) -> Tensor:
    return _block(x.double(), {k: v.double() for k, v in weights.items()}, num_heads, None)


@mistake("block", "a block without the residual connections")
def block_no_residual(weights: dict[str, Tensor], x: Tensor, num_heads: int, theta: float, **_: Any) -> Tensor:
    return _block(x.double(), {k: v.double() for k, v in weights.items()}, num_heads, theta, residual=False)


def _lm_mistake(name: str, says: str, **options: Any) -> None:
    def fn(config: dict[str, Any], weights: dict[str, Tensor], ids: Tensor, **_: Any) -> Tensor:
        return _lm(config, {k: v.double() for k, v in weights.items()}, ids, **options)

    fn.__name__ = name
    mistake("lm", says)(fn)


_lm_mistake(
    "lm_no_final_norm", "an LM without the final RMSNorm (ln_final) before the output projection", final_norm=False
)
_lm_mistake("lm_default_theta", "an LM that ignores rope_theta and uses Θ = 10000", theta=10000.0)
_lm_mistake("lm_without_rope", "an LM without RoPE", theta=None)
_lm_mistake(
    "lm_probabilities", "an LM that returns softmax probabilities instead of unnormalised logits", probabilities=True
)
