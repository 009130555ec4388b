"""The fast paths of `cs336_basics/fast.py` against the textbook forms of the modules they speed up.

Tiled causal attention, the attention backward, cross-entropy and the multi-tensor AdamW: each must give the
numbers of the textbook form (autograd through elementary ops, a per-tensor loop), values and gradients, and
each hand-written backward must pass `torch.autograd.gradcheck` in float64. A whole model with
`fused_kernels=True` must match the textbook model, training and decoding with a KV cache.
"""

from __future__ import annotations

import math

import pytest
import torch

from cs336_basics import fast
from cs336_basics.attention import MultiHeadSelfAttention, causal_mask, scaled_dot_product_attention
from cs336_basics.loss import cross_entropy
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW


def _qkv(queries: int, keys: int, d: int = 8, batch: tuple[int, ...] = (2, 3)) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(queries * 1000 + keys)
    shapes = ((*batch, queries, d), (*batch, keys, d), (*batch, keys, d))
    dtype = torch.float64
    return tuple(torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes)


def _assert_same_values_and_grads(fast_out, textbook_out, inputs, rtol: float, atol: float) -> None:
    torch.testing.assert_close(fast_out, textbook_out, rtol=rtol, atol=atol)
    grad = torch.randn_like(textbook_out)
    got = torch.autograd.grad(fast_out, inputs, grad)
    want = torch.autograd.grad(textbook_out, inputs, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    ("queries", "offset"),
    [
        (1, 0),
        (1, 7),
        (fast.CAUSAL_BLOCK, 0),
        (fast.CAUSAL_BLOCK + 1, 0),
        (3 * fast.CAUSAL_BLOCK + 5, 0),
        (2 * fast.CAUSAL_BLOCK, 9),
    ],
    ids=["one", "one-cached", "one-block", "two-tiles", "four-tiles", "tiles-cached"],
)
def test_causal_attention_matches_the_masked_formula(queries: int, offset: int) -> None:
    q, k, v = _qkv(queries, queries + offset)
    expected = scaled_dot_product_attention(q, k, v, causal_mask(queries, queries + offset))
    actual = fast.causal_attention(q, k, v, offset=offset)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    _assert_same_values_and_grads(actual, expected, (q, k, v), rtol=1e-10, atol=1e-10)


def test_causal_attention_gradcheck_across_tiles() -> None:
    q, k, v = _qkv(fast.CAUSAL_BLOCK + 3, fast.CAUSAL_BLOCK + 5, d=2, batch=(1,))
    assert torch.autograd.gradcheck(lambda q, k, v: fast.causal_attention(q, k, v, offset=2), (q, k, v), fast_mode=True)


def test_causal_attention_rejects_a_wrong_offset() -> None:
    q, k, v = _qkv(4, 6)
    with pytest.raises(ValueError, match="offset"):
        fast.causal_attention(q, k, v, offset=0)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape", "masked"),
    [
        ((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 6), True),
        ((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 6), False),
        ((5, 4), (1, 2, 7, 4), (7, 3), True),  # broadcast leading dims: gradients must be summed back
    ],
    ids=["masked", "unmasked", "broadcast"],
)
def test_attention_backward_matches_the_textbook_form(q_shape, k_shape, v_shape, masked) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = (q_shape, k_shape, v_shape)
    Q, K, V = (torch.randn(*s, dtype=torch.float64, generator=gen, requires_grad=True) for s in shapes)
    mask = None
    if masked:
        mask = torch.rand(q_shape[-2], k_shape[-2], generator=gen) > 0.4
        mask[:, 0] = True  # no fully masked row (those are NaN by definition)
    assert torch.autograd.gradcheck(lambda q, k, v: fast.attention(q, k, v, mask), (Q, K, V))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (Q, K, V))
    textbook = scaled_dot_product_attention(q32, k32, v32, mask)
    _assert_same_values_and_grads(fast.attention(q32, k32, v32, mask), textbook, (q32, k32, v32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 11), (3, 4, 11)], ids=["2d", "3d"])
def test_cross_entropy_fast_path_matches_the_textbook_form(shape) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    assert torch.autograd.gradcheck(lambda x: fast.cross_entropy(x, targets), (logits,))
    _assert_same_values_and_grads(
        fast.cross_entropy(logits, targets), cross_entropy(logits, targets), (logits,), rtol=1e-10, atol=1e-12
    )


def test_cross_entropy_backward_twice_through_a_retained_graph() -> None:
    logits = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    loss = fast.cross_entropy(logits, targets)
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)
    (expected,) = torch.autograd.grad(cross_entropy(logits, targets), logits)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def _twin_models(dtype: torch.dtype, **changes) -> tuple[TransformerLM, TransformerLM]:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, context_length=160, d_model=32, num_layers=2, num_heads=4, **changes)
    textbook = TransformerLM(config, dtype=dtype)
    fused = TransformerLM(config, dtype=dtype, fused_kernels=True)
    fused.load_state_dict(textbook.state_dict())
    return textbook, fused


@pytest.mark.parametrize(
    ("dtype", "seq_len", "tol"),
    [
        (torch.float64, 1, 1e-12),
        (torch.float64, 65, 1e-12),
        (torch.float64, 150, 1e-12),
        (torch.float32, 150, 1e-5),
        (torch.bfloat16, 33, 0.0),
    ],
    ids=["f64-one", "f64-two-tiles", "f64-three-tiles", "f32", "bf16-textbook"],
)
def test_a_fused_model_matches_the_textbook_model(dtype: torch.dtype, seq_len: int, tol: float) -> None:
    textbook, fused = _twin_models(dtype)
    assert list(fused.state_dict()) == list(textbook.state_dict())
    gen = torch.Generator().manual_seed(seq_len)
    x, y = torch.randint(0, 97, (2, seq_len), generator=gen), torch.randint(0, 97, (2, seq_len), generator=gen)
    loss_textbook, loss_fused = cross_entropy(textbook(x), y), fast.cross_entropy(fused(x), y)
    if dtype == torch.bfloat16:  # no fast path in half precision: the very same computation
        loss_fused = cross_entropy(fused(x), y)
        assert torch.equal(loss_fused, loss_textbook)
    torch.testing.assert_close(loss_fused, loss_textbook, rtol=tol, atol=tol)
    loss_textbook.backward()
    loss_fused.backward()
    for (name, a), b in zip(textbook.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=tol, atol=tol, msg=name)


def test_a_fused_model_decodes_with_a_kv_cache_like_the_textbook_model() -> None:
    textbook, fused = _twin_models(torch.float64, ffn_type="silu", norm_position="post")
    prompt = torch.randint(0, 97, (2, 70), generator=torch.Generator().manual_seed(3))
    caches = textbook.new_kv_cache(2), fused.new_kv_cache(2)
    with torch.no_grad():
        for chunk in (prompt[:, :66], prompt[:, 66:67], prompt[:, 67:]):
            torch.testing.assert_close(fused(chunk, caches[1]), textbook(chunk, caches[0]), rtol=1e-12, atol=1e-12)


def test_use_fused_kernels_switches_every_layer_both_ways() -> None:
    textbook, fused = _twin_models(torch.float32)
    switchable = [m for m in fused.modules() if isinstance(m, MultiHeadSelfAttention)]
    assert len(switchable) == 2 and all(m.fused_kernels for m in switchable)
    assert not any(m.fused_kernels for m in textbook.modules() if isinstance(m, MultiHeadSelfAttention))
    fused.use_fused_kernels(False)
    assert not any(m.fused_kernels for m in switchable)


def _naive_adamw(
    params: list[torch.Tensor], grads: list[list[torch.Tensor | None]], lr: float, betas: tuple, eps: float, wd: float
) -> list[torch.Tensor]:
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
    grads = [
        [
            torch.randn(p.shape, generator=gen, dtype=torch.float64) if (i, s) not in {(1, 1), (2, 0), (2, 1)} else None
            for i, p in enumerate(params)
        ]
        for s in range(4)
    ]
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


def test_the_tools_train_and_sample_with_the_fast_kernels() -> None:
    from cs336_common.model_spec import ModelSpec
    from cs336_lab.assignment import Assignment
    from cs336_lab.train import default_model_factory

    spec = ModelSpec(vocab_size=50, context_length=16, d_model=16, num_layers=2, num_heads=2)
    model = default_model_factory(spec, torch.device("cpu"))
    attention = [m for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    assert len(attention) == 2 and all(m.fused_kernels for m in attention)
    assert not any(
        m.fused_kernels
        for m in Assignment.load().build_model(spec, "cpu").modules()
        if isinstance(m, MultiHeadSelfAttention)
    ), "fused kernels are opt-in"
    assert Assignment.load().fast_cross_entropy is fast.cross_entropy
