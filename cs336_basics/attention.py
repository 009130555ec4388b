"""Attention: the scaled dot-product kernel, causal multi-head self-attention and its key/value cache."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from cs336_basics import fast
from cs336_basics.functional import softmax
from cs336_basics.layers import Linear, RMSNorm
from cs336_basics.rope import RotaryPositionalEmbedding


def scaled_dot_product_attention(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    V: Float[Tensor, " ... keys d_v"],
    mask: Bool[Tensor, " ... queries keys"] | None = None,
) -> Float[Tensor, " ... queries d_v"]:
    """`softmax(Q Kᵀ / sqrt(d_k)) V`, with `mask` True where a query may attend to a key.

    Any number of leading batch dims; `mask` broadcasts against them (e.g. one (queries, keys) causal mask
    for every batch and head). A query whose keys are all masked gets NaN, as the maths says.

    >>> q = k = torch.eye(2)[None]; v = torch.tensor([[[1.0], [3.0]]])
    >>> scaled_dot_product_attention(q, k, v, mask=torch.tensor([[True, False], [True, True]]))[0, :, 0]
    tensor([1.0000, 2.3395])
    """
    d_k = Q.shape[-1]
    if K.shape[-1] != d_k:
        raise ValueError(f"queries and keys must share d_k: Q has {d_k}, K has {K.shape[-1]}")
    if K.shape[-2] != V.shape[-2]:
        raise ValueError(f"keys and values must have the same count: K has {K.shape[-2]}, V has {V.shape[-2]}")
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
    # Scaling Q (queries × d_k numbers) is cheaper than scaling the scores (queries × keys), forward and back.
    scores = (Q * (1.0 / math.sqrt(d_k))) @ K.transpose(-2, -1)  # (..., queries, keys)
    if mask is not None:
        scores = torch.where(mask, scores, float("-inf"))
    return softmax(scores, dim=-1) @ V  # (..., queries, d_v)


def causal_mask(queries: int, keys: int, device: torch.device | str | None = None) -> Bool[Tensor, " queries keys"]:
    """True where query `i` may see key `j`: the last `queries` of `keys` positions, each seeing itself and
    everything before it.

    >>> causal_mask(2, 3).int()
    tensor([[1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)


class KVCache:
    """Keys and values of the tokens processed so far, for every layer, so that decoding one more token
    costs O(seq) instead of O(seq²).

    Storage is allocated once for `max_seq_len` positions: appending writes into a slice instead of
    concatenating (which would copy the whole cache at every step). Each layer appends its own keys and
    values; `length` is the number of positions the first layer holds (all layers agree between forwards).
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_seq_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (num_layers, batch_size, num_heads, max_seq_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_seq_len = max_seq_len
        self.batch_size = batch_size
        self._lengths = [0] * num_layers

    @property
    def length(self) -> int:
        """Number of positions already cached (the position of the next token)."""
        return self._lengths[0]

    def reset(self) -> None:
        """Forget everything; the storage is reused."""
        self._lengths = [0] * len(self._lengths)

    def update(
        self, layer: int, k: Float[Tensor, " batch heads new head_dim"], v: Float[Tensor, " batch heads new head_dim"]
    ) -> tuple[Float[Tensor, " batch heads total head_dim"], Float[Tensor, " batch heads total head_dim"]]:
        """Append the new keys and values of `layer`; return all of that layer's keys and values so far."""
        start = self._lengths[layer]
        end = start + k.shape[-2]
        if k.shape[0] != self.batch_size:
            raise ValueError(f"the cache was made for batch size {self.batch_size}, got a batch of {k.shape[0]}")
        if end > self.max_seq_len:
            raise ValueError(
                f"the KV cache holds at most {self.max_seq_len} positions (context_length); "
                f"{start} cached + {k.shape[-2]} new = {end}"
            )
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        self._lengths[layer] = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention, optionally with RoPE on the queries and keys of every head.

    The projections hold all heads at once (rows ordered head by head); the heads are split off the feature
    dimension of q, k and v.

    QK-norm (`qk_norm=True`, the modern recipe): every head's query and key vectors are RMS-normalised over
    the head dimension (`q_norm`, `k_norm`: one gain per head dimension, shared by the heads) after the split
    and before RoPE, so the attention scores stay bounded however large the projections grow. The cache holds
    keys already normalised and rotated, so decoding with a cache computes the same as without.

    Args:
        d_model: model dimension; must be divisible by `num_heads`.
        num_heads: number of heads, each of size d_model // num_heads.
        rope: a RoPE module with d_k = d_model // num_heads (may be shared between layers), or None.
        qk_norm: RMSNorm on each head's queries and keys; `eps` is its epsilon.
    """

    #: Use the hand-written attention of `cs336_basics/fast.py` (set by `TransformerLM.use_fused_kernels`).
    fused_kernels: bool = False

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        rope: RotaryPositionalEmbedding | None = None,
        qk_norm: bool = False,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_heads <= 0 or d_model % num_heads != 0:
            raise ValueError(f"d_model must be divisible by num_heads, got d_model={d_model}, num_heads={num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        if rope is not None and rope.d_k != self.head_dim:
            raise ValueError(f"RoPE must rotate the head dimension {self.head_dim}, got a RoPE with d_k={rope.d_k}")
        self.rope = rope
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        # NOTE: None (not an Identity) when off: the default model's state-dict keys stay the handout's.
        self.q_norm = RMSNorm(self.head_dim, eps, device=device, dtype=dtype) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps, device=device, dtype=dtype) if qk_norm else None

    def reset_parameters(self) -> None:
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.output_proj, self.q_norm, self.k_norm):
            if layer is not None:
                layer.reset_parameters()

    def forward(
        self,
        x: Float[Tensor, " ... seq d_model"],
        token_positions: Int[Tensor, " ... seq"] | None = None,
        *,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> Float[Tensor, " ... seq d_model"]:
        """Attend causally within `x`; with `kv_cache`, also to the cached positions of `layer`.

        `token_positions` (default: 0 .. seq-1, or continuing from the cache length) only feed RoPE; the
        causal mask follows the order of the sequence.
        """
        seq_len = x.shape[-2]
        q = rearrange(self.q_proj(x), "... seq (heads d) -> ... heads seq d", heads=self.num_heads)
        k = rearrange(self.k_proj(x), "... seq (heads d) -> ... heads seq d", heads=self.num_heads)
        v = rearrange(self.v_proj(x), "... seq (heads d) -> ... heads seq d", heads=self.num_heads)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # over each head's d, before RoPE rotates it

        start = 0 if kv_cache is None else kv_cache._lengths[layer]
        if self.rope is not None:
            if token_positions is None:
                token_positions = torch.arange(start, start + seq_len, device=x.device)
            else:
                token_positions = token_positions.unsqueeze(-2)  # (..., 1, seq): the same for every head
            q, k = self.rope(q, token_positions), self.rope(k, token_positions)

        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (batch, heads, start + seq, head_dim)
        # Query i (absolute position start + i) may see keys 0 .. start + i.
        if self.fused_kernels and fast.applies(q, k, v):
            out = fast.causal_attention(q, k, v, offset=start)
        else:
            out = scaled_dot_product_attention(q, k, v, causal_mask(seq_len, start + seq_len, device=x.device))
        return self.output_proj(rearrange(out, "... heads seq d -> ... seq (heads d)"))  # (..., seq, d_model)
