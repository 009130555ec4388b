"""The grader's own Transformer LM: a student's weights, run by code the student never touched.

The leaderboard scores a submitted checkpoint with this forward pass instead of the student's model, so a
model that lies about its loss (a patched cross-entropy, a forward that peeks at the targets, a cached
answer) cannot gain anything: only the weights come from the student, and weights are data. The
architecture is the handout's, fixed by the state-dict keys of docs/INTERFACE.md:

    token_embeddings.weight (V, D)   layers.{i}.ln1.weight (D)   layers.{i}.attn.{q,k,v}_proj.weight (D, D)
    lm_head.weight (V, D)            layers.{i}.ln2.weight (D)   layers.{i}.attn.output_proj.weight (D, D)
    ln_final.weight (D)              layers.{i}.ffn.w1.weight (F, D), w3 (F, D), w2 (D, F)

Pre-norm blocks, RMSNorm (in float32, eps 1e-5 unless the checkpoint's config says otherwise), RoPE on
adjacent pairs of each head, causal softmax attention scaled by 1/sqrt(d_k), SwiGLU. Shapes give V, D, F and
the number of layers; the number of heads and RoPE's theta are not in the weights and come from the
checkpoint's config. The architecture travels as a `cs336_common.model_spec.ModelSpec` (the tools' one model
description; its ablation switches must hold the handout's values here). It uses torch built-ins freely (this
is the grader's code, not the assignment) and
never imports `cs336_basics`.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

from cs336_common.model_spec import ModelSpec

BLOCK_SHAPES = {  # block key -> shape in terms of D (d_model) and F (d_ff)
    "attn.q_proj.weight": ("D", "D"),
    "attn.k_proj.weight": ("D", "D"),
    "attn.v_proj.weight": ("D", "D"),
    "attn.output_proj.weight": ("D", "D"),
    "ln1.weight": ("D",),
    "ffn.w1.weight": ("F", "D"),
    "ffn.w2.weight": ("D", "F"),
    "ffn.w3.weight": ("F", "D"),
    "ln2.weight": ("D",),
}
TOP_SHAPES = {"token_embeddings.weight": ("V", "D"), "ln_final.weight": ("D",), "lm_head.weight": ("V", "D")}
_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")


def infer_architecture(
    state: dict[str, Tensor], *, num_heads: int, rope_theta: float, eps: float, context_length: int
) -> ModelSpec:
    """The `ModelSpec` of `state`, checked key by key and shape by shape; ValueError names what is wrong.

    `context_length` is not in the weights either: the caller's scoring window."""
    layers = sorted({int(m.group(1)) for k in state if (m := _LAYER_KEY.fullmatch(k))})
    for key in ("token_embeddings.weight", "layers.0.ffn.w1.weight"):
        if key not in state or state[key].ndim != 2:
            raise ValueError(
                f"expected a 2-d {key} (the handout's model), found {tuple(getattr(state.get(key), 'shape', ()))}"
            )
    vocab_size, d_model = state["token_embeddings.weight"].shape
    d_ff = state["layers.0.ffn.w1.weight"].shape[0]
    sizes = {"V": int(vocab_size), "D": int(d_model), "F": int(d_ff)}
    expected = dict(TOP_SHAPES)
    expected |= {f"layers.{i}.{key}": shape for i in range(len(layers)) for key, shape in BLOCK_SHAPES.items()}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            "expected exactly the state-dict keys of docs/INTERFACE.md (the handout's pre-norm SwiGLU model); "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    for key, names in expected.items():
        want = tuple(sizes[n] for n in names)
        if tuple(state[key].shape) != want:
            raise ValueError(f"expected {key} of shape {want}, got {tuple(state[key].shape)}")
        if not state[key].is_floating_point() or not torch.isfinite(state[key]).all():
            raise ValueError(f"expected finite floating-point weights in {key}, got {state[key].dtype} (or NaN/inf)")
    if num_heads < 1 or d_model % num_heads or (d_model // num_heads) % 2:
        raise ValueError(f"expected num_heads dividing d_model={d_model} into even head sizes, got {num_heads}")
    return ModelSpec(
        vocab_size=int(vocab_size),
        context_length=context_length,
        d_model=int(d_model),
        num_layers=len(layers),
        num_heads=num_heads,
        d_ff=int(d_ff),
        rope_theta=rope_theta,
        eps=eps,
    )


def check_handout_spec(arch: ModelSpec) -> None:
    """Refuse a spec this forward pass does not compute: any switch off the handout's (eps may differ)."""
    if not isinstance(arch, ModelSpec):
        raise TypeError(f"expected a ModelSpec, got {type(arch).__name__}")
    off = {k: v for k, v in arch.non_default_extras().items() if k not in ("eps", "init")}
    if off:
        raise ValueError(f"the trusted LM computes the handout's model; expected default switches, got {off}")


def _rms_norm(x: Tensor, gain: Tensor, eps: float) -> Tensor:
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * gain.float()


def _rope(x: Tensor, theta: float) -> Tensor:
    """Rotate adjacent pairs (x[2k], x[2k+1]) of `x` (B, H, T, d) by position / theta^(2k/d)."""
    d, t = x.shape[-1], x.shape[-2]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    angles = (torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]).float()  # (T, d/2)
    cos, sin = angles.cos(), angles.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


@torch.no_grad()
def logits(state: dict[str, Tensor], arch: ModelSpec, token_ids: Tensor) -> Tensor:
    """Next-token logits (B, T, V) for `token_ids` (B, T): the handout's model, in float32."""
    check_handout_spec(arch)
    w = {k: v.float() for k, v in state.items()}
    B, T = token_ids.shape
    H, hd = arch.num_heads, arch.d_model // arch.num_heads
    x = w["token_embeddings.weight"][token_ids]  # (B, T, D)
    for i in range(arch.num_layers):
        p = f"layers.{i}."
        h = _rms_norm(x, w[p + "ln1.weight"], arch.eps)
        q, k, v = (
            (h @ w[p + f"attn.{name}_proj.weight"].T).view(B, T, H, hd).transpose(1, 2) for name in ("q", "k", "v")
        )  # (B, H, T, hd)
        q, k = _rope(q, arch.rope_theta), _rope(k, arch.rope_theta)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        x = x + attended.transpose(1, 2).reshape(B, T, arch.d_model) @ w[p + "attn.output_proj.weight"].T
        h = _rms_norm(x, w[p + "ln2.weight"], arch.eps)
        x = x + (F.silu(h @ w[p + "ffn.w1.weight"].T) * (h @ w[p + "ffn.w3.weight"].T)) @ w[p + "ffn.w2.weight"].T
    return _rms_norm(x, w["ln_final.weight"], arch.eps) @ w["lm_head.weight"].T


@torch.no_grad()
def total_nats(
    state: dict[str, Tensor], arch: ModelSpec, tokens: Tensor, context_length: int, batch_size: int = 16
) -> float:
    """Sum of -ln p(token) over every token after the first, in disjoint windows of `context_length`.

    Windows start at 0, m, 2m, ...; the last one may be shorter. Sums in float64.
    """
    n = tokens.numel()
    starts = list(range(0, n - 1, context_length))
    full = [s for s in starts if s + context_length + 1 <= n]
    total = 0.0
    for i in range(0, len(full), batch_size):
        rows = torch.stack([tokens[s : s + context_length + 1] for s in full[i : i + batch_size]])  # (B, m + 1)
        total += _window_nats(state, arch, rows)
    if len(full) < len(starts):
        total += _window_nats(state, arch, tokens[starts[-1] :][None, :])
    return total


def _window_nats(state: dict[str, Tensor], arch: ModelSpec, rows: Tensor) -> float:
    out = logits(state, arch, rows[:, :-1])
    return float(F.cross_entropy(out.flatten(0, 1), rows[:, 1:].flatten(), reduction="none").double().sum())
