"""A second, independent implementation of the model adapters, written like a student would, with switches.

With every switch at its default it is correct, computed in float32 with plain tensor ops (matmul or
einsum, explicit softmax, strided RoPE): the rewrites of `suite_corpus.py` use it to prove that the graded
suite accepts a differently written correct solution. Each switch turns one realistic mistake on: the
mutants use them to prove that the graded suite fails them, and names the mistake in its hint.
Nothing here is an answer key: it exists to test the tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# ------------------------------------------------------------------------------------------- basic ops


def linear(d_in: int, d_out: int, weights: Tensor, x: Tensor, *, mistake: str = "", einsum: bool = False) -> Tensor:
    if mistake == "reshaped":
        return x @ weights.reshape(d_in, d_out)
    if mistake == "no_transpose":
        return x @ weights
    if mistake == "stored_transposed":  # a module whose weight parameter is (d_in, d_out), loaded from the state dict
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(torch.empty(d_in, d_out))
        layer.load_state_dict({"weight": weights})
        return x @ layer.weight.detach()
    return torch.einsum("...i,oi->...o", x, weights) if einsum else x @ weights.transpose(0, 1)


def rmsnorm(
    d_model: int,
    eps: float,
    weights: Tensor,
    x: Tensor,
    *,
    mistake: str = "",
    division: bool = False,
    gain_after_cast: bool = False,
) -> Tensor:
    h = x if mistake == "no_upcast" else x.to(torch.float32)
    g = weights.to(h.dtype)
    if mistake == "layernorm":
        h = h - h.mean(-1, keepdim=True)
    ms = h.pow(2).sum(-1, keepdim=True) if mistake == "sum" else h.pow(2).mean(-1, keepdim=True)
    if mistake == "eps_outside":
        out = h / (ms.sqrt() + eps)
    elif division:
        out = h / torch.sqrt(ms + eps)
    else:
        out = h * torch.rsqrt(ms + eps)
    if gain_after_cast:  # normalise in float32, cast, then multiply by the gain in the input dtype
        return out.to(x.dtype) * weights.to(x.dtype)
    out = out if mistake == "no_gain" else out * g
    return out if mistake == "float32_out" else out.to(x.dtype)


def softmax(x: Tensor, dim: int, *, mistake: str = "", logsumexp: bool = False, upcast: bool = False) -> Tensor:
    h = x.float() if upcast else x
    if mistake == "last_dim":
        dim = -1
    if mistake == "all_elements":
        e = (h - h.max()).exp()
        return (e / e.sum()).to(x.dtype)
    shifted = h if mistake == "no_shift" else h - h.amax(dim, keepdim=True)
    if logsumexp:
        return (shifted - shifted.exp().sum(dim, keepdim=True).log()).exp().to(x.dtype)
    e = shifted.exp()
    return (e / e.sum(dim, keepdim=True)).to(x.dtype)


def silu(x: Tensor, *, mistake: str = "", division: bool = False, form: str = "") -> Tensor:
    """SiLU in the input's dtype (bf16 arithmetic for bf16 input); `form` picks one of the correct formulas."""
    if mistake == "sigmoid":
        return 1 / (1 + torch.exp(-x))
    if mistake == "gelu":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))
    if mistake == "exp_ratio":
        return x * torch.exp(x) / (1 + torch.exp(x))
    if form == "reciprocal":
        return x * (1 / (1 + torch.exp(-x)))
    if form == "float32_then_cast":
        return (x.float() * torch.sigmoid(x.float())).to(x.dtype)
    return x / (1 + torch.exp(-x)) if division or form == "division" else x * torch.sigmoid(x)


def swiglu(d_model: int, d_ff: int, w1: Tensor, w2: Tensor, w3: Tensor, x: Tensor, *, mistake: str = "") -> Tensor:
    a, b = x @ w1.T, x @ w3.T
    if mistake == "gate_w3":
        a, b = b, a
    if mistake == "no_gate":
        return silu(a) @ w2.T
    if mistake == "silu_of_product":
        return silu(a * b) @ w2.T
    if mistake == "sigmoid_gate":
        return (torch.sigmoid(a) * b) @ w2.T
    return (silu(a) * b) @ w2.T


# ------------------------------------------------------------------------------------------------ rope


def rope(
    d_k: int,
    theta: float,
    max_seq_len: int,
    x: Tensor,
    positions: Tensor,
    *,
    mistake: str = "",
    keep_float32: bool = False,
    input_dtype_arithmetic: bool = False,
) -> Tensor:
    """Strided float32 RoPE from a (max_seq_len, d/2) cos/sin cache indexed by position.

    `input_dtype_arithmetic`: the cos/sin cast to the input's dtype and the rotation computed in it (bf16).
    """
    k = torch.arange(0, d_k, 2, dtype=torch.float32)
    if mistake == "exponent_k_over_d":
        k = k / 2
    elif mistake == "exponent_off_by_one":
        k = k + 2
    inv_freq = 1.0 / (theta ** (k / d_k))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    cos_cache, sin_cache = angles.cos(), angles.sin()
    if mistake == "ignores_positions":
        positions = torch.arange(x.shape[-2])
    elif mistake == "first_row_positions":
        positions = positions.reshape(-1, positions.shape[-1])[0]
    elif mistake == "half_precision_cache":
        cos_cache, sin_cache = cos_cache.half().float(), sin_cache.half().float()
    cos, sin = cos_cache[positions], sin_cache[positions]
    if mistake == "opposite":
        sin = -sin
    xf = x.float()
    if input_dtype_arithmetic:
        xf, cos, sin = x, cos.to(x.dtype), sin.to(x.dtype)
    if mistake == "halves":
        a, b = xf[..., : d_k // 2], xf[..., d_k // 2 :]
        out = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    else:
        a, b = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return out if keep_float32 else out.to(x.dtype)


# ------------------------------------------------------------------------------------------- attention


def sdpa(
    Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, *, mistake: str = "", einsum: bool = False
) -> Tensor:
    d = {"scale_dv": V.shape[-1], "no_scale": 1, "scale_dk": Q.shape[-1] ** 2}.get(mistake, Q.shape[-1])
    if einsum:
        scores = torch.einsum("...qd,...kd->...qk", Q, K) / math.sqrt(d)
    else:
        scores = Q @ K.transpose(-2, -1) / math.sqrt(d)
    if mask is not None and mistake != "mask_ignored":
        if mistake == "mask_zero":
            scores = scores * mask
        else:
            keep = ~mask if mistake == "mask_inverted" else mask
            scores = scores.masked_fill(~keep, float("-inf"))
    weights = softmax(scores, -2 if mistake == "softmax_over_queries" else -1)
    return weights @ V


def mha(
    d_model: int,
    num_heads: int,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    x: Tensor,
    theta: float | None = None,
    max_seq_len: int = 0,
    positions: Tensor | None = None,
    *,
    mistake: str = "",
    per_head_loop: bool = False,
    fused: bool = False,
) -> Tensor:
    *lead, T, _ = x.shape
    d_head = d_model // num_heads
    if fused:
        q, k, v = (x @ torch.cat([wq, wk, wv]).T).split(d_model, dim=-1)
    else:
        q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    pos = torch.arange(T) if positions is None or mistake == "rope_ignores_positions" else positions
    if theta is not None and mistake == "rope_whole":
        q, k = rope(d_model, theta, max_seq_len, q, pos), rope(d_model, theta, max_seq_len, k, pos)
    mask = None if mistake == "no_causal_mask" else torch.tril(torch.ones(T, T, dtype=torch.bool))
    outs = []
    for h in range(num_heads) if per_head_loop else [None]:

        def heads(t: Tensor, h: int | None = h) -> Tensor:
            if h is not None:
                return t[..., h * d_head : (h + 1) * d_head]
            if mistake == "heads_order":
                return t.reshape(*lead, T, d_head, num_heads).movedim(-1, -3)
            return t.reshape(*lead, T, num_heads, d_head).transpose(-3, -2)

        qh, kh, vh = heads(q), heads(k), heads(v)
        if theta is not None and mistake != "rope_whole":
            ph = pos if h is not None or pos.dim() == 1 else pos.unsqueeze(-2)
            qh, kh = rope(d_head, theta, max_seq_len, qh, ph), rope(d_head, theta, max_seq_len, kh, ph)
            if mistake == "rope_on_v":
                vh = rope(d_head, theta, max_seq_len, vh, ph)
        if mistake == "scale_by_model":
            qh = qh * math.sqrt(d_head / d_model)
        outs.append(sdpa(qh, kh, vh, mask))
    if per_head_loop:
        out = torch.cat(outs, dim=-1)
    elif mistake == "heads_order":
        out = outs[0].movedim(-3, -1).reshape(*lead, T, d_model)
    else:
        out = outs[0].transpose(-3, -2).reshape(*lead, T, d_model)
    return out if mistake == "no_output_proj" else out @ wo.T


# -------------------------------------------------------------------------------------- block and LM


def block(
    d_model: int,
    num_heads: int,
    d_ff: int,
    max_seq_len: int,
    theta: float,
    weights: dict[str, Tensor],
    x: Tensor,
    *,
    mistake: str = "",
    prefix: str = "",
) -> Tensor:
    w = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    g1, g2 = (w["ln2.weight"], w["ln1.weight"]) if mistake == "norms_swapped" else (w["ln1.weight"], w["ln2.weight"])
    projections = [w[f"attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj", "output_proj")]
    rope_theta = None if mistake == "without_rope" else theta

    def attn(h: Tensor) -> Tensor:
        return mha(d_model, num_heads, *projections, h, rope_theta, max_seq_len)

    def ffn(h: Tensor) -> Tensor:
        return swiglu(d_model, d_ff, w["ffn.w1.weight"], w["ffn.w2.weight"], w["ffn.w3.weight"], h)

    def norm(h: Tensor, g: Tensor) -> Tensor:
        return rmsnorm(d_model, 1e-5, g, h)

    if mistake == "post_norm":
        x = norm(x + attn(x), g1)
        return norm(x + ffn(x), g2)
    if mistake == "no_residual":
        return ffn(norm(attn(norm(x, g1)), g2))
    x = x + attn(norm(x, g1))
    return x + ffn(norm(x, g2))


def lm(
    vocab_size: int,
    context_length: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    rope_theta: float,
    weights: dict[str, Tensor],
    in_indices: Tensor,
    *,
    mistake: str = "",
) -> Tensor:
    theta = 10000.0 if mistake == "default_theta" else rope_theta
    x = weights["token_embeddings.weight"][in_indices]
    for i in range(num_layers):
        block_mistake = "without_rope" if mistake == "without_rope" else ""
        x = block(
            d_model, num_heads, d_ff, context_length, theta, weights, x, mistake=block_mistake, prefix=f"layers.{i}."
        )
    if mistake != "no_final_norm":
        x = rmsnorm(d_model, 1e-5, weights["ln_final.weight"], x)
    head = weights["token_embeddings.weight"] if mistake == "tied_head" else weights["lm_head.weight"]
    logits = x @ head.T
    return softmax(logits, -1) if mistake == "probabilities" else logits


def adapters(**switches: Any) -> dict[str, Any]:
    """The model adapters of this implementation, each with the given keyword switches."""

    def bind(fn: Any) -> Any:
        return lambda *args, **kwargs: fn(*args, **kwargs, **switches.get(fn.__name__, {}))

    def mha_rope(d_model, num_heads, max_seq_len, theta, wq, wk, wv, wo, x, token_positions=None):  # noqa: ANN001, ANN202
        return mha(
            d_model, num_heads, wq, wk, wv, wo, x, theta, max_seq_len, token_positions, **switches.get("mha", {})
        )

    return {
        "run_linear": bind(linear),
        "run_rmsnorm": bind(rmsnorm),
        "run_softmax": bind(softmax),
        "run_silu": bind(silu),
        "run_swiglu": bind(swiglu),
        "run_rope": bind(rope),
        "run_scaled_dot_product_attention": bind(sdpa),
        "run_multihead_self_attention": bind(mha),
        "run_multihead_self_attention_with_rope": mha_rope,
        "run_transformer_block": bind(block),
        "run_transformer_lm": bind(lm),
    }
