"""Attention: the scaled dot-product kernel, causal multi-head self-attention and its key/value cache."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from cs336_basics.functional import softmax
from cs336_basics.layers import Linear
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
    if Q.dtype in _FAST_DTYPES and Q.dtype == K.dtype == V.dtype:
        return _Attention.apply(Q, K, V, mask, 1.0 / math.sqrt(d_k))
    return attention_by_composition(Q, K, V, mask)


_FAST_DTYPES = (torch.float32, torch.float64)


def attention_by_composition(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    V: Float[Tensor, " ... keys d_v"],
    mask: Bool[Tensor, " ... queries keys"] | None = None,
) -> Float[Tensor, " ... queries d_v"]:
    """The textbook form, differentiated by autograd; used for reduced precision (softmax runs in float32)."""
    # Scaling Q (queries × d_k numbers) is cheaper than scaling the scores (queries × keys), forward and back.
    scores = (Q * (1.0 / math.sqrt(Q.shape[-1]))) @ K.transpose(-2, -1)  # (..., queries, keys)
    if mask is not None:
        # NOTE: torch.where is one pass over the scores; masked_fill(~mask) is an inversion, a copy and a fill.
        scores = torch.where(mask, scores, float("-inf"))
    return softmax(scores, dim=-1) @ V  # (..., queries, d_v)


class _Attention(torch.autograd.Function):
    """`attention_by_composition` with the softmax done in place and a hand-written backward.

    Autograd through the elementary ops keeps the scores, their shifted and exponentiated copies and more, each
    (queries × keys) per head. The backward needs only the weights P = softmax(S) and the output O = P V:

        dV = Pᵀ dO        dP = dO Vᵀ        dS = P ⊙ (dP − rowsum(dO ⊙ O))        dQ = s·dS K        dK = s·dSᵀ Q

    (rowsum(dP ⊙ P) = rowsum(dO ⊙ O), a (queries × d_v) product instead of a (queries × keys) one: the trick
    of FlashAttention's backward.) `reference_tests` check it against autograd with `torch.autograd.gradcheck`.
    """

    @staticmethod
    def forward(ctx, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None, scale: float) -> Tensor:  # noqa: ANN001
        weights = (Q * scale) @ K.transpose(-2, -1)  # (..., queries, keys): S, overwritten by P below
        if mask is not None:
            weights.masked_fill_(~mask, float("-inf"))
        weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
        weights.mul_(1.0 / weights.sum(dim=-1, keepdim=True))  # P; a fully masked row is NaN, as in the maths
        out = weights @ V  # (..., queries, d_v)
        ctx.save_for_backward(Q, K, V, weights, out)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        Q, K, V, weights, out = ctx.saved_tensors
        grad_q = grad_k = grad_v = None
        if ctx.needs_input_grad[2]:
            grad_v = (weights.transpose(-2, -1) @ grad_out).sum_to_size(V.shape)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_scores = grad_out @ V.transpose(-2, -1)  # dP, (..., queries, keys)
            grad_scores.sub_((grad_out * out).sum(dim=-1, keepdim=True)).mul_(weights)  # dS
            if ctx.needs_input_grad[0]:
                grad_q = ((grad_scores @ K) * ctx.scale).sum_to_size(Q.shape)
            if ctx.needs_input_grad[1]:
                grad_k = ((grad_scores.transpose(-2, -1) @ Q) * ctx.scale).sum_to_size(K.shape)
        return grad_q, grad_k, grad_v, None, None


# Query rows per tile of `causal_attention` (at least; long sequences get at most `_MAX_TILES` tiles, each
# tile costing a dozen kernel launches): the blocks below the diagonal are computed, the ones above skipped.
_CAUSAL_BLOCK = 64
_MAX_TILES = 8


def causal_attention(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    V: Float[Tensor, " ... keys d_v"],
    offset: int = 0,
) -> Float[Tensor, " ... queries d_v"]:
    """`scaled_dot_product_attention` with the causal mask `key <= offset + query`, never materialised.

    `offset` is the number of keys before the first query (cached positions). The same numbers as the
    masked kernel, at about half the matmul work for long sequences: the queries are taken in tiles of
    `_CAUSAL_BLOCK` rows or more (at most `_MAX_TILES` tiles), and a tile meets only the keys it may see (its row of the triangle), so the
    blocks above the diagonal are never computed; only the diagonal block needs a mask. Each tile holds
    its whole row of keys, so its softmax is exact without an online rescaling.
    """
    queries, keys = Q.shape[-2], K.shape[-2]
    if keys != offset + queries:
        raise ValueError(f"causal attention needs offset + queries = keys, got {offset} + {queries} != {keys}")
    if Q.dtype not in _FAST_DTYPES or not Q.dtype == K.dtype == V.dtype or queries <= _CAUSAL_BLOCK:
        if queries == 1:
            return scaled_dot_product_attention(Q, K, V)  # one new token sees every key
        mask = torch.ones(queries, keys, dtype=torch.bool, device=Q.device).tril(diagonal=offset)
        return scaled_dot_product_attention(Q, K, V, mask)
    return _CausalAttention.apply(Q, K, V, offset, 1.0 / math.sqrt(Q.shape[-1]))


def _tiles(queries: int, offset: int) -> list[tuple[int, int, int]]:
    """(first query, end query, end key) of every query tile.

    >>> _tiles(150, 2)
    [(0, 64, 66), (64, 128, 130), (128, 150, 152)]
    """
    block = max(_CAUSAL_BLOCK, -(-queries // _MAX_TILES))
    return [(a, min(a + block, queries), offset + min(a + block, queries)) for a in range(0, queries, block)]


class _CausalAttention(torch.autograd.Function):
    """The tiles of `causal_attention`, forward and backward (the formulas of `_Attention`, tile by tile).

    Forward keeps, per tile, P_i = softmax(Q_i K[:e]ᵀ s) (rows a..b, keys 0..e). Backward, per tile:
    dV[:e] += P_iᵀ dO_i,  dS_i = P_i ⊙ (dO_i V[:e]ᵀ − rowsum(dO_i ⊙ O_i)),  dQ_i = s dS_i K[:e],
    dK[:e] += s dS_iᵀ Q_i.
    """

    @staticmethod
    def forward(ctx, Q: Tensor, K: Tensor, V: Tensor, offset: int, scale: float) -> Tensor:  # noqa: ANN001
        queries = Q.shape[-2]
        # NOTE: contiguous operands: a tile of a strided view (v sliced out of the fused qkv product) would be
        # copied by every batched matmul that reads it, once per tile.
        K, V = K.contiguous(), V.contiguous()
        out = Q.new_empty(*Q.shape[:-1], V.shape[-1])
        q_scaled = Q * scale
        tiles = _tiles(queries, offset)
        block = tiles[0][1]
        diagonal = torch.ones(block, block, dtype=torch.bool, device=Q.device).triu(diagonal=1)
        weights = []
        for a, b, e in tiles:
            p = q_scaled[..., a:b, :] @ K[..., :e, :].transpose(-2, -1)  # (..., b - a, e)
            p[..., e - (b - a):].masked_fill_(diagonal[: b - a, : b - a], float("-inf"))
            p.sub_(p.amax(dim=-1, keepdim=True)).exp_()
            p.mul_(1.0 / p.sum(dim=-1, keepdim=True))
            out[..., a:b, :] = p @ V[..., :e, :]
            weights.append(p)
        ctx.save_for_backward(Q, K, V, out, *weights)
        ctx.scale, ctx.offset = scale, offset
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        Q, K, V, out, *weights = ctx.saved_tensors
        Q, grad_out, scale = Q.contiguous(), grad_out.contiguous(), ctx.scale
        grad_q, grad_k, grad_v = torch.empty_like(Q), torch.zeros_like(K), torch.zeros_like(V)
        row_dot = (grad_out * out).sum(dim=-1, keepdim=True)  # rowsum(dO ⊙ O), (..., queries, 1)
        for (a, b, e), p in zip(_tiles(Q.shape[-2], ctx.offset), weights):
            d_out = grad_out[..., a:b, :]
            grad_v[..., :e, :] += p.transpose(-2, -1) @ d_out
            d_s = (d_out @ V[..., :e, :].transpose(-2, -1)).sub_(row_dot[..., a:b, :]).mul_(p)
            grad_q[..., a:b, :] = d_s @ K[..., :e, :]
            grad_k[..., :e, :] += d_s.transpose(-2, -1) @ Q[..., a:b, :]
        return grad_q.mul_(scale), grad_k.mul_(scale), grad_v, None, None


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

    The projections hold all heads at once (rows ordered head by head); q, k and v are computed by one
    matrix multiply with the three weights stacked, and heads are then split off the feature dimension.

    Args:
        d_model: model dimension; must be divisible by `num_heads`.
        num_heads: number of heads, each of size d_model // num_heads.
        rope: a RoPE module with d_k = d_model // num_heads (may be shared between layers), or None.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        rope: RotaryPositionalEmbedding | None = None,
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

    def reset_parameters(self) -> None:
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.output_proj):
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
        # One matmul for q, k and v: the three weights stay separate parameters (the state-dict keys), their
        # concatenation (3·d_model² numbers, cheap beside the product) feeds a single wider GEMM.
        weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        qkv = rearrange(x @ weight.T, "... seq (three heads d) -> three ... heads seq d", three=3, heads=self.num_heads)
        qk, v = qkv[:2], qkv[2]

        start = 0 if kv_cache is None else kv_cache._lengths[layer]
        if self.rope is not None:
            if token_positions is None:
                token_positions = torch.arange(start, start + seq_len, device=x.device)
            else:
                token_positions = token_positions.unsqueeze(-2)  # (..., 1, seq): the same for every head
            qk = self.rope(qk, token_positions)  # queries and keys rotated by one call
        q, k = qk[0], qk[1]

        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (batch, heads, start + seq, d)
        # Query i (absolute position start + i) may see keys 0 .. start + i. A single new token sees all.
        out = causal_attention(q, k, v, offset=start)  # (..., heads, seq, d)
        return self.output_proj(rearrange(out, "... heads seq d -> ... seq (heads d)"))
