"""The fast paths of the model: hand-written backward passes, tiled causal attention and fused projections.

Every module of `cs336_basics` is written in its textbook form and differentiated by autograd; that is the
default. The functions here compute the same numbers with fewer kernels and less saved memory, for an eager
training step on a CPU (under `torch.compile` the textbook form gets fused kernels of its own).
`TransformerLM(config, fused_kernels=True)` or `model.use_fused_kernels()` switches a model onto them; the
trainer of `cs336_lab` does. They take float32 and float64 only (`applies`): half precision keeps the
textbook form, which computes its reductions in float32. `reference_tests/test_fast_kernels.py` checks each
against its textbook form, values and gradients, and gradchecks the hand-written backwards in float64.

What each one replaces, and what it saves (eager training step, B8×256, the TinyStories shapes: d_model 512,
4 layers, 16 heads, vocab 10000, on 2 CPU threads; the whole step is 1.3x faster with all of them on, the
torch-native peer at 0.93-0.96x of ours; see `docs/bench/NOTES.md` and `python -m bench --only model`):

    rms_norm          `x / rms(x) * g`: autograd keeps x², the mean and x·r and runs a kernel per op;
                      this keeps x and r, backward in three passes.
    swiglu            one matmul for w1 and w3, and the gate `SiLU(a) ⊙ b` with both halves' gradients
                      written into one buffer (autograd would cat them).
    rotate_pairs      RoPE as two full-width products instead of a dozen half-width kernels and a stack;
                      backward is the rotation by the opposite angle.
    qkv_projection    one matmul for q, k and v (the weights stay three parameters: the state-dict keys).
    attention         softmax in place and the backward from P and O only (FlashAttention's row-sum trick).
    causal_attention  query tiles that skip the key blocks above the diagonal (62.5 % of the matmul work at
                      T = 256), each tile's softmax exact because it holds its whole row of keys.
    cross_entropy     the forward's exponentials turned into the gradient in place.

The largest savings come from causal_attention and cross_entropy (the two largest activations of a small
model: the scores and the logits); the others each save a few percent.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
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


# ------------------------------------------------------------------------------------------------ RMSNorm


def rms_norm(x: Float[Tensor, " ... d_model"], weight: Float[Tensor, " d_model"], eps: float) -> Tensor:
    """`layers.RMSNorm`'s `x / sqrt(mean(x²) + eps) * weight` with a hand-written backward."""
    return _RMSNorm.apply(x, weight, eps)


class _RMSNorm(torch.autograd.Function):
    """With x̂ = x · r (r = 1/rms) and gradient g of the output:

        dw = Σ g ⊙ x̂ (over the leading dims)        dx = r · (g⊙w − x̂ · mean(g⊙w ⊙ x̂))
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:  # noqa: ANN001
        inv_rms = torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, inv_rms)
        return x * inv_rms * weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        x, weight, inv_rms = ctx.saved_tensors
        x_hat = x * inv_rms
        grad_w = (grad_out * x_hat).reshape(-1, x.shape[-1]).sum(dim=0) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = grad_out * weight
            grad_x = g.sub_(x_hat.mul_((g * x_hat).mean(dim=-1, keepdim=True))).mul_(inv_rms)
        return grad_x, grad_w, None


# ------------------------------------------------------------------------------------------------- SwiGLU


def swiglu(
    x: Float[Tensor, " ... d_model"],
    w1: Float[Tensor, " d_ff d_model"],
    w2: Float[Tensor, " d_model d_ff"],
    w3: Float[Tensor, " d_ff d_model"],
) -> Float[Tensor, " ... d_model"]:
    """`layers.SwiGLU`'s `W2(SiLU(W1 x) ⊙ W3 x)`: one matmul for w1 and w3, and a hand-written gate."""
    h = x @ torch.cat((w1, w3)).T  # (..., 2 d_ff): [W1 x | W3 x]
    return swiglu_gate(h) @ w2.T


def swiglu_gate(h: Float[Tensor, " ... two_d_ff"]) -> Float[Tensor, " ... d_ff"]:
    """`SiLU(a) ⊙ b` where `a, b` are the first and second halves of the last dimension of `h`."""
    return _SwiGLUGate.apply(h)


class _SwiGLUGate(torch.autograd.Function):
    """The gradient of both halves of `h = [a | b]` written into one buffer shaped like `h`:

        db = g ⊙ a σ(a)        da = g ⊙ b ⊙ σ(a) (1 + a (1 − σ(a)))
    """

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:  # noqa: ANN001
        a, b = h.chunk(2, dim=-1)
        sig = torch.sigmoid(a)
        ctx.save_for_backward(h, sig)
        return a * sig * b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> Tensor:  # noqa: ANN001
        h, sig = ctx.saved_tensors
        a, b = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h)
        grad_a, grad_b = grad_h.chunk(2, dim=-1)
        torch.mul(a, sig, out=grad_b)  # SiLU(a)
        # σ(a) (1 + a (1 − σ(a))) = σ(a) + SiLU(a) (1 − σ(a))
        torch.sub(1, sig, out=grad_a).mul_(grad_b).add_(sig).mul_(b).mul_(grad_out)
        grad_b.mul_(grad_out)
        return grad_h


# --------------------------------------------------------------------------------------------------- RoPE


def rotate_pairs(
    x: Float[Tensor, " ... seq d_k"], cos: Float[Tensor, " ... seq half"], sin: Float[Tensor, " ... seq half"]
) -> Float[Tensor, " ... seq d_k"]:
    """`rope.RotaryPositionalEmbedding`'s rotation of each pair `(x[2k], x[2k+1])` by the angle of `cos, sin`.

    Computed as `x ⊙ c + swap(x) ⊙ s` with c = (cos, cos, ...) and s = (−sin, sin, ...): the same products
    and sums as the pairwise formula, so exactly the same numbers.
    """
    cos_full = cos.repeat_interleave(2, dim=-1)  # (..., seq, d_k)
    sin_full = rearrange(torch.stack((-sin, sin), dim=-1), "... half two -> ... (half two)")
    return _Rotate.apply(x, cos_full, sin_full)


def _swap_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...)."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


class _Rotate(torch.autograd.Function):
    """A rotation's transpose is the rotation by the opposite angle: backward is `g ⊙ c + swap(g ⊙ s)`."""

    @staticmethod
    def forward(ctx, x: Tensor, cos_full: Tensor, sin_full: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(cos_full, sin_full)
        ctx.x_shape = x.shape
        return x * cos_full + _swap_pairs(x) * sin_full

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        cos_full, sin_full = ctx.saved_tensors
        grad = grad_out * cos_full + _swap_pairs(grad_out * sin_full)
        return grad.sum_to_size(ctx.x_shape), None, None


# -------------------------------------------------------------------------------------------- projections


def qkv_projection(
    x: Float[Tensor, " ... seq d_model"], q_weight: Tensor, k_weight: Tensor, v_weight: Tensor, num_heads: int
) -> Float[Tensor, " three ... heads seq head_dim"]:
    """Queries, keys and values of every head by one matmul with the three weights stacked.

    The concatenation (3·d_model² numbers) is cheap beside the product; the weights stay three parameters.
    """
    weight = torch.cat((q_weight, k_weight, v_weight))  # (3 d_model, d_model)
    qkv = x @ weight.T  # (..., seq, 3 d_model)
    return rearrange(qkv, "... seq (three heads d) -> three ... heads seq d", three=3, heads=num_heads)


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

        dV = Pᵀ dO        dP = dO Vᵀ        dS = P ⊙ (dP − rowsum(dO ⊙ O))        dQ = s·dS K        dK = s·dSᵀ Q

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
        # NOTE: contiguous operands: a tile of a strided view (v sliced out of the fused qkv product) would be
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
