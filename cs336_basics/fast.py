"""The fast paths of the model: hand-written backward passes and tiled causal attention.

Every module of `cs336_basics` is written in its textbook form and differentiated by autograd; that is the
default. The kernels here compute the same numbers with fewer kernels and far less saved memory, for an eager
training step on a CPU. `TransformerLM(config, fused_kernels=True)` or `model.use_fused_kernels()` switches
a model's attention onto them; the trainer of `cs336_lab` does, and uses `cross_entropy` below for its loss.
They take float32 and float64 only (`applies`): half precision keeps the textbook form, which computes its
softmax in float32. `project_tests/basics/test_fast_kernels.py` checks each against its textbook form, values and
gradients, and gradchecks the hand-written backwards in float64.

    causal_attention  query tiles that skip the key blocks above the diagonal (62.5 % of the matmul work at
                      T = 256), each tile's softmax exact because it holds its whole row of keys, with the
                      backward of `attention`; short sequences go to `attention` with a mask.
    attention         softmax in place, and the backward from P and O only (FlashAttention's row-sum
                      trick) instead of autograd keeping the scores and their shifted and exponentiated copies.
    cross_entropy     the forward's exponentials turned into the gradient in place.

NOTE: measured on 1 CPU thread, forward + backward at the TinyStories shapes (B8×256, d_model 512, 16 heads,
vocab 10000), median CPU time: causal attention per layer 475 ms textbook vs 98 ms here (4.8x), cross-entropy
363 ms vs 136 ms (2.7x); the whole training step 1.34x faster (torch-native peer / ours: 0.75 textbook,
1.00 with these; `docs/bench/NOTES.md`). Hand-written kernels for RMSNorm, the SwiGLU gate, RoPE and fused
q/k/v and w1/w3 projections were measured too and dropped: each was within 1.06x of its textbook form (under
1 % of a step). `torch.compile` of the textbook form fuses such elementwise chains by itself (see
`python -m bench --only model --scale`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

FAST_DTYPES = (torch.float32, torch.float64)


def applies(*tensors: Tensor) -> bool:
    """Whether these tensors can take a fast path: one dtype, float32 or float64.

    >>> applies(torch.zeros(2), torch.ones(2)), applies(torch.zeros(2, dtype=torch.bfloat16))
    (True, False)
    """
    dtype = tensors[0].dtype
    return dtype in FAST_DTYPES and all(t.dtype == dtype for t in tensors)


# ---------------------------------------------------------------------------------------------- attention


def attention(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    V: Float[Tensor, " ... keys d_v"],
    mask: Bool[Tensor, " ... queries keys"] | None = None,
) -> Float[Tensor, " ... queries d_v"]:
    """`attention.scaled_dot_product_attention` with the softmax in place and a hand-written backward."""
    return _Attention.apply(Q, K, V, mask, 1.0 / math.sqrt(Q.shape[-1]))


class _Attention(torch.autograd.Function):
    """Autograd through the elementary ops keeps the scores, their shifted and exponentiated copies and more,
    each (queries × keys) per head. The backward needs only the weights P = softmax(S) and the output O = P V:

        dV = Pᵀ dO        dP = dO Vᵀ        dS = P ⊙ (dP − rowsum(dO ⊙ O))
        dQ = s·dS K       dK = s·dSᵀ Q

    (rowsum(dP ⊙ P) = rowsum(dO ⊙ O), a (queries × d_v) product instead of a (queries × keys) one: the trick
    of FlashAttention's backward.)
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


# Query rows per tile of `causal_attention` (at least; long sequences get at most `MAX_TILES` tiles, each
# tile costing a dozen kernel launches): the blocks below the diagonal are computed, the ones above skipped.
CAUSAL_BLOCK = 64
MAX_TILES = 8


def causal_attention(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    V: Float[Tensor, " ... keys d_v"],
    offset: int = 0,
) -> Float[Tensor, " ... queries d_v"]:
    """Attention with the causal mask `key <= offset + query`, never materialised for long sequences.

    `offset` is the number of keys before the first query (cached positions). The queries are taken in tiles
    of `CAUSAL_BLOCK` rows or more (at most `MAX_TILES` tiles), and a tile meets only the keys it may see
    (its row of the triangle), so the blocks above the diagonal are never computed; only the diagonal block
    needs a mask. Each tile holds its whole row of keys, so its softmax is exact without online rescaling.
    """
    queries, keys = Q.shape[-2], K.shape[-2]
    if keys != offset + queries:
        raise ValueError(f"causal attention needs offset + queries = keys, got {offset} + {queries} != {keys}")
    if queries == 1:
        return attention(Q, K, V)  # one new token sees every key
    if queries <= CAUSAL_BLOCK:
        return attention(Q, K, V, torch.ones(queries, keys, dtype=torch.bool, device=Q.device).tril(offset))
    return _CausalAttention.apply(Q, K, V, offset, 1.0 / math.sqrt(Q.shape[-1]))


def _tiles(queries: int, offset: int) -> list[tuple[int, int, int]]:
    """(first query, end query, end key) of every query tile.

    >>> _tiles(150, 2)
    [(0, 64, 66), (64, 128, 130), (128, 150, 152)]
    """
    block = max(CAUSAL_BLOCK, -(-queries // MAX_TILES))
    return [(a, min(a + block, queries), offset + min(a + block, queries)) for a in range(0, queries, block)]


class _CausalAttention(torch.autograd.Function):
    """The tiles of `causal_attention`, forward and backward (the formulas of `_Attention`, tile by tile).

    Forward keeps, per tile, P_i = softmax(Q_i K[:e]ᵀ s) (rows a..b, keys 0..e). Backward, per tile:
    dV[:e] += P_iᵀ dO_i,  dS_i = P_i ⊙ (dO_i V[:e]ᵀ − rowsum(dO_i ⊙ O_i)),  dQ_i = s dS_i K[:e],
    dK[:e] += s dS_iᵀ Q_i.
    """

    @staticmethod
    def forward(ctx, Q: Tensor, K: Tensor, V: Tensor, offset: int, scale: float) -> Tensor:  # noqa: ANN001
        # NOTE: contiguous operands: a tile of a strided view (the heads split off a projection) would be
        # copied by every batched matmul that reads it, once per tile.
        K, V = K.contiguous(), V.contiguous()
        out = Q.new_empty(*Q.shape[:-1], V.shape[-1])
        q_scaled = Q * scale
        tiles = _tiles(Q.shape[-2], offset)
        block = tiles[0][1]
        diagonal = torch.ones(block, block, dtype=torch.bool, device=Q.device).triu(diagonal=1)
        weights = []
        for a, b, e in tiles:
            p = q_scaled[..., a:b, :] @ K[..., :e, :].transpose(-2, -1)  # (..., b - a, e)
            p[..., e - (b - a) :].masked_fill_(diagonal[: b - a, : b - a], float("-inf"))
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


# ------------------------------------------------------------------------------------------ cross-entropy


def cross_entropy(logits: Float[Tensor, " ... vocab_size"], targets: Int[Tensor, " ..."]) -> Float[Tensor, ""]:
    """`loss.cross_entropy` with a hand-written backward."""
    if not applies(logits):
        logits = logits.float()  # NOTE: as the textbook form: a half-precision log-sum-exp loses most digits
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, vocab)
    return _CrossEntropy.apply(flat_logits, targets.reshape(-1).long())


class _CrossEntropy(torch.autograd.Function):
    """d loss / d logits = (softmax − onehot) / N.

    Autograd would keep the shifted logits and their exponentials and run a chain of elementwise backward
    kernels. Here the forward's exponentials exp(o − max) are kept (one N × vocab tensor, the LM head's
    logits being the largest activation of a small model) with their row sums, and the backward turns them
    into the gradient in place with one scaling pass plus a scatter, instead of recomputing the softmax.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # noqa: ANN001
        # NOTE: everything is taken relative to the row max: logsumexp itself (≈ max) minus the target logit
        # would cancel catastrophically for logits around 1e4 that differ by 1e-2.
        row_max = logits.amax(dim=-1, keepdim=True)  # (N, 1)
        exp = (logits - row_max).exp_()  # (N, vocab)
        row_sum = exp.sum(dim=-1, keepdim=True)  # (N, 1)
        log_normaliser = row_sum.log().squeeze(-1)  # logsumexp - max, (N,)
        target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - row_max.squeeze(-1)  # (N,)
        ctx.save_for_backward(logits, targets, row_max, row_sum)
        # NOTE: kept outside save_for_backward: the first backward turns it into the gradient in place (a fresh
        # N × vocab tensor costs a pass of page faults); a second backward through a retained graph recomputes.
        ctx.exp = exp
        return (log_normaliser - target_logit).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        logits, targets, row_max, row_sum = ctx.saved_tensors
        exp, ctx.exp = ctx.exp, None
        if exp is None:
            exp = (logits - row_max).exp_()
        scale = grad_loss / logits.shape[0]
        grad = exp.mul_(scale / row_sum)  # softmax · grad / N, (N, vocab)
        grad.scatter_add_(-1, targets.unsqueeze(-1), (-scale).expand(targets.shape[0], 1).to(grad.dtype))
        return grad, None
