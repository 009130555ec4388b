"""The hand-written fast paths of the model (issue 16) against the textbook formulas they replace.

Tiled causal attention, RMSNorm, the fused SwiGLU gate, RoPE, cross-entropy and the multi-tensor AdamW: each
must give the numbers of the obvious implementation (autograd through elementary ops, a per-tensor loop),
and its hand-written backward must pass `torch.autograd.gradcheck` in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from cs336_basics.attention import _CAUSAL_BLOCK, attention_by_composition, causal_attention
from cs336_basics.layers import RMSNorm, _RMSNorm, swiglu_gate
from cs336_basics.loss import cross_entropy, cross_entropy_by_composition
from cs336_basics.optimizer import AdamW
from cs336_basics.rope import RotaryPositionalEmbedding


def _qkv(queries: int, keys: int, d: int = 8, batch: tuple[int, ...] = (2, 3)) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(queries * 1000 + keys)
    shapes = ((*batch, queries, d), (*batch, keys, d), (*batch, keys, d))
    dtype = torch.float64
    return tuple(torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes)


@pytest.mark.parametrize(
    ("queries", "offset"),
    [(1, 0), (1, 7), (_CAUSAL_BLOCK, 0), (_CAUSAL_BLOCK + 1, 0), (3 * _CAUSAL_BLOCK + 5, 0), (2 * _CAUSAL_BLOCK, 9)],
)
def test_causal_attention_matches_the_masked_formula(queries: int, offset: int) -> None:
    q, k, v = _qkv(queries, queries + offset)
    mask = torch.ones(queries, queries + offset, dtype=torch.bool).tril(diagonal=offset)
    expected = attention_by_composition(q, k, v, mask)
    actual = causal_attention(q, k, v, offset=offset)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(expected)
    for got, want in zip(torch.autograd.grad(actual, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_causal_attention_gradcheck_across_tiles() -> None:
    q, k, v = _qkv(_CAUSAL_BLOCK + 3, _CAUSAL_BLOCK + 5, d=2, batch=(1,))
    assert torch.autograd.gradcheck(lambda q, k, v: causal_attention(q, k, v, offset=2), (q, k, v), fast_mode=True)


def test_causal_attention_rejects_a_wrong_offset() -> None:
    q, k, v = _qkv(4, 6)
    with pytest.raises(ValueError, match="offset"):
        causal_attention(q, k, v, offset=0)


def test_rmsnorm_fast_path_matches_the_formula_and_gradcheck() -> None:
    norm = RMSNorm(6, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    weight = norm.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: _RMSNorm.apply(x, w, 1e-5), (x, weight))


def test_swiglu_gate_matches_silu_times_up_and_gradcheck() -> None:
    h = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    a, b = h.chunk(2, dim=-1)
    torch.testing.assert_close(swiglu_gate(h), a * torch.sigmoid(a) * b)
    assert torch.autograd.gradcheck(swiglu_gate, (h,))


def test_rope_fast_path_is_the_pairwise_rotation_exactly() -> None:
    rope = RotaryPositionalEmbedding(10000.0, 8, 16)
    x = torch.randn(2, 3, 10, 8)
    cos, sin = rope.cos[:10], rope.sin[:10]
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    expected = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    assert torch.equal(rope(x), expected)


def test_rope_fast_path_gradcheck_with_broadcast_positions() -> None:
    rope = RotaryPositionalEmbedding(10000.0, 4, 16, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)  # broadcast against (2, 5) positions
    positions = torch.tensor([[0, 3, 5, 7, 15], [1, 2, 3, 4, 5]])
    assert torch.autograd.gradcheck(lambda x: rope(x, positions), (x,))


def test_cross_entropy_backward_twice_through_a_retained_graph() -> None:
    logits = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    loss = cross_entropy(logits, targets)
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)
    (expected,) = torch.autograd.grad(cross_entropy_by_composition(logits, targets), logits)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def _naive_adamw(params: list[torch.Tensor], grads: list[list[torch.Tensor | None]], lr: float, betas: tuple,
                 eps: float, wd: float) -> list[torch.Tensor]:
    """The handout's algorithm, one tensor at a time, each with its own step count."""
    params = [p.detach().clone() for p in params]
    state = [None] * len(params)
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            if g is None:
                continue
            if state[i] is None:
                state[i] = [0, torch.zeros_like(g), torch.zeros_like(g)]
            state[i][0] += 1
            t, m, v = state[i]
            m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
            v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
            step = lr * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
            params[i].addcdiv_(m, v.sqrt().add_(eps), value=-step)
            params[i].mul_(1 - lr * wd)
    return params


def test_multi_tensor_adamw_matches_the_per_tensor_loop_with_uneven_step_counts() -> None:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((3, 4), (5,), (2, 2))]
    # Parameter 1 is frozen at step 2, parameter 2 joins at step 3: three different step counts.
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) if (i, s) not in {(1, 1), (2, 0), (2, 1)}
              else None for i, p in enumerate(params)] for s in range(4)]
    hyper = dict(lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    live = [torch.nn.Parameter(p.clone()) for p in params]
    opt = AdamW(live, **hyper)
    for step_grads in grads:
        for p, g in zip(live, step_grads):
            p.grad = g
        opt.step()
    expected = _naive_adamw(params, grads, hyper["lr"], hyper["betas"], hyper["eps"], hyper["weight_decay"])
    for got, want in zip(live, expected):
        assert torch.equal(got.detach(), want)
    assert [opt.state[p]["step"] for p in live] == [4, 3, 2]
