"""The modern recipe's model switches (issue 24) against independent oracles: QK-norm, ReLU², tied embeddings
and the logit soft-cap, plus a guard that the default switches leave the handout's model as it was.

Every oracle is written here from torch built-ins (`F.relu`, `F.scaled_dot_product_attention`, a hand-written
RMSNorm and RoPE); each test names the plausible mistake it catches, and most also assert that the mistaken
formula gives another answer on the test's input (so the input cannot hide the mistake).
"""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F

from cs336_basics.attention import MultiHeadSelfAttention
from cs336_basics.checkpoint import load_checkpoint, save_checkpoint
from cs336_basics.layers import ReLU2FeedForward
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW
from cs336_basics.rope import RotaryPositionalEmbedding

SMALL = dict(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4)
HANDOUT_KEYS = (
    ["token_embeddings.weight"]
    + [
        f"layers.{i}.{name}.weight"
        for i in range(2)
        for name in (
            "attn.q_proj",
            "attn.k_proj",
            "attn.v_proj",
            "attn.output_proj",
            "ffn.w1",
            "ffn.w2",
            "ffn.w3",
            "ln1",
            "ln2",
        )
    ]
    + ["ln_final.weight", "lm_head.weight"]
)


# ------------------------------------------------------------------------------------------------ oracles


def naive_rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def naive_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate adjacent pairs (x[2k], x[2k+1]) of `x` (B, H, T, d) by angle position * theta^(-2k/d)."""
    d, t = x.shape[-1], x.shape[-2]
    out = torch.empty_like(x)
    for pos in range(t):
        for k in range(d // 2):
            angle = torch.tensor(pos * theta ** (-2 * k / d), dtype=torch.float64)
            c, s = torch.cos(angle).item(), torch.sin(angle).item()
            a, b = x[..., pos, 2 * k], x[..., pos, 2 * k + 1]
            out[..., pos, 2 * k], out[..., pos, 2 * k + 1] = a * c - b * s, a * s + b * c
    return out


def naive_qk_norm_attention(attn: MultiHeadSelfAttention, x: torch.Tensor, theta: float, order: str = "norm_rope"):
    """Causal attention with QK-norm; `order` also computes the mistakes: "rope_norm" (QK-norm after RoPE)
    and "whole" (one RMSNorm over all of d_model instead of per head, gains tiled across the heads)."""
    B, T, D = x.shape
    H = attn.num_heads
    d = D // H
    gq, gk, eps = attn.q_norm.weight.detach(), attn.k_norm.weight.detach(), attn.q_norm.eps

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)

    q, k, v = (x @ lin.weight.detach().T for lin in (attn.q_proj, attn.k_proj, attn.v_proj))
    if order == "whole":
        q, k = naive_rms_norm(q, gq.repeat(H), eps), naive_rms_norm(k, gk.repeat(H), eps)
    q, k, v = heads(q), heads(k), heads(v)
    if order == "norm_rope":
        q, k = naive_rms_norm(q, gq, eps), naive_rms_norm(k, gk, eps)
    q, k = naive_rope(q, theta), naive_rope(k, theta)
    if order == "rope_norm":
        q, k = naive_rms_norm(q, gq, eps), naive_rms_norm(k, gk, eps)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(B, T, D) @ attn.output_proj.weight.detach().T


# ------------------------------------------------------------------------------------------------ QK-norm


def _qk_norm_attention(seed: int = 0) -> MultiHeadSelfAttention:
    torch.manual_seed(seed)
    rope = RotaryPositionalEmbedding(10_000.0, 8, 16)
    attn = MultiHeadSelfAttention(32, 4, rope=rope, qk_norm=True, eps=1e-5)
    with torch.no_grad():  # NOTE: non-uniform gains: with gain 1, norm and rotation commute (RoPE keeps norms)
        attn.q_norm.weight.copy_(torch.rand(8) * 2 + 0.1)
        attn.k_norm.weight.copy_(torch.rand(8) * 2 + 0.1)
    return attn


def test_qk_norm_is_per_head_before_rope() -> None:
    """Mistakes caught: QK-norm after RoPE instead of before (RMSNorm with a non-uniform gain does not commute
    with the rotation); one RMSNorm over the whole d_model instead of each head's d; no QK-norm at all."""
    attn = _qk_norm_attention()
    x = torch.randn(2, 7, 32) * 3
    expected = naive_qk_norm_attention(attn, x, 10_000.0)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    for mistake in ("rope_norm", "whole"):
        assert not torch.allclose(naive_qk_norm_attention(attn, x, 10_000.0, mistake), expected, atol=1e-3)
    attn.q_norm = attn.k_norm = None
    assert not torch.allclose(attn(x), expected, atol=1e-3)


def test_qk_norm_parameters_and_eps() -> None:
    """The gains are named `attn.q_norm.weight` / `attn.k_norm.weight`, one per head dimension, start at 1,
    and take the model's eps (a mistake: RMSNorm's default eps whatever the model's)."""
    model = TransformerLM(ModelConfig(**SMALL, qk_norm=True, eps=1e-3))
    state = model.state_dict()
    assert sorted(k for k in state if "_norm" in k) == sorted(
        f"layers.{i}.attn.{n}_norm.weight" for i in range(2) for n in ("q", "k")
    )
    assert state["layers.0.attn.q_norm.weight"].shape == (8,)
    assert torch.equal(state["layers.1.attn.k_norm.weight"], torch.ones(8))
    assert model.layers[0].attn.q_norm.eps == model.layers[0].attn.k_norm.eps == 1e-3


def test_qk_norm_with_kv_cache_equals_full_forward() -> None:
    """Decoding token by token through the KV cache gives the full forward's logits with QK-norm on (a mistake:
    the cached keys stored before the norm, or the new query left unnormalised in the cached path)."""
    torch.manual_seed(1)
    model = TransformerLM(ModelConfig(**SMALL, qk_norm=True))
    with torch.no_grad():
        for block in model.layers:
            block.attn.q_norm.weight.uniform_(0.2, 2.0)
            block.attn.k_norm.weight.uniform_(0.2, 2.0)
    tokens = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_kv_cache(batch_size=2)
        steps = [model(tokens[:, :4], kv_cache=cache)] + [
            model(tokens[:, i : i + 1], kv_cache=cache) for i in range(4, 10)
        ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ ReLU²


def test_relu2_ffn_against_torch() -> None:
    """`w2(relu(w1 x)²)`. Mistakes caught: relu without the square; the square before the relu (= x²)."""
    torch.manual_seed(0)
    ffn = ReLU2FeedForward(16, 24)
    x = torch.randn(3, 5, 16)
    w1, w2 = ffn.w1.weight.detach(), ffn.w2.weight.detach()
    expected = F.relu(x @ w1.T).pow(2) @ w2.T
    torch.testing.assert_close(ffn(x), expected)
    assert not torch.allclose(F.relu(x @ w1.T) @ w2.T, expected, atol=1e-3)  # no square
    assert not torch.allclose(F.relu((x @ w1.T).pow(2)) @ w2.T, expected, atol=1e-3)  # square first
    assert sorted(n for n, _ in ffn.named_parameters()) == ["w1.weight", "w2.weight"]


def test_relu2_model_default_width_is_four_d_model() -> None:
    """`d_ff=None` with relu2 resolves to 4 d_model (a mistake: SwiGLU's 8/3 d_model rule)."""
    config = ModelConfig(**SMALL, ffn_type="relu2")
    assert config.d_ff == 4 * 32
    model = TransformerLM(config)
    assert model.state_dict()["layers.0.ffn.w1.weight"].shape == (128, 32)
    assert not any(".w3." in k for k in model.state_dict())


# ------------------------------------------------------------------------------------------------ tied embeddings


def test_tied_embeddings_share_one_parameter_counted_once() -> None:
    """Mistakes caught: tying by copying (two Parameters); the shared matrix counted twice."""
    untied, tied = TransformerLM(ModelConfig(**SMALL)), TransformerLM(ModelConfig(**SMALL, tie_embeddings=True))
    assert tied.lm_head.weight is tied.token_embeddings.weight
    assert sum(p.numel() for p in tied.parameters()) == sum(p.numel() for p in untied.parameters()) - 50 * 32
    assert tied.num_parameters() == sum(p.numel() for p in tied.parameters())
    assert sorted(tied.state_dict()) == sorted(untied.state_dict())  # both keys, one storage
    state = tied.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["token_embeddings.weight"].data_ptr()


def test_tied_gradient_sums_both_uses_and_one_step_keeps_them_equal() -> None:
    """The tied gradient is the embedding's gradient plus the head's (computed on an untied model holding the
    same matrix twice); after an optimizer step the two uses still hold one matrix. Mistake caught: tying by
    copying at construction (the two copies get different gradients and drift apart)."""
    torch.manual_seed(0)
    tied = TransformerLM(ModelConfig(**SMALL, tie_embeddings=True))
    untied = TransformerLM(ModelConfig(**SMALL))
    untied.load_state_dict(tied.state_dict())
    tokens = torch.randint(0, 50, (2, 9))
    for model in (tied, untied):
        F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    expected = untied.token_embeddings.weight.grad + untied.lm_head.weight.grad
    torch.testing.assert_close(tied.token_embeddings.weight.grad, expected)
    AdamW(tied.parameters(), lr=1e-2).step()
    assert torch.equal(tied.lm_head.weight, tied.token_embeddings.weight)
    assert not torch.equal(tied.token_embeddings.weight, untied.token_embeddings.weight)  # it did move


@pytest.mark.parametrize("init", ["assignment", "xavier_normal"])
def test_tied_matrix_is_drawn_at_the_head_scale(init: str) -> None:
    """The shared matrix is N(0, 1/d_model) truncated at ±3σ, so the untrained logits have about unit variance
    and the first loss is near ln(V). Mistakes: keeping the embedding's N(0, 1) (a first loss far above ln V),
    or `reset_parameters` redrawing the table as a plain embedding."""
    torch.manual_seed(0)
    d_model, vocab = 64, 500
    model = TransformerLM(
        ModelConfig(**{**SMALL, "vocab_size": vocab, "d_model": d_model}, tie_embeddings=True, init=init)
    )
    std = d_model**-0.5
    for _ in range(2):
        weight = model.lm_head.weight.detach()
        assert (
            weight is model.token_embeddings.weight.detach()
            or weight.data_ptr() == model.token_embeddings.weight.data_ptr()
        )
        assert 0.9 * std < weight.std().item() < 1.1 * std and weight.abs().max().item() <= 3.0 * std + 1e-6
        tokens = torch.randint(0, vocab, (4, 16))
        with torch.no_grad():
            first_loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.roll(-1, 1).flatten())
        assert first_loss.item() < math.log(vocab) + 1.5, first_loss
        model.reset_parameters()


def test_tied_checkpoint_round_trips_and_refuses_untied_weights() -> None:
    """save/load_checkpoint keep the tie and the values; an untied model's two different matrices are refused
    with one clear reason (a mistake: loading them silently, the last key winning)."""
    torch.manual_seed(0)
    config = ModelConfig(**SMALL, tie_embeddings=True, qk_norm=True, ffn_type="relu2", logit_softcap=5.0)
    model = TransformerLM(config)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 50, (2, 9))
    model(tokens).sum().backward()
    optimizer.step()
    buffer = io.BytesIO()
    save_checkpoint(model, optimizer, 7, buffer)
    buffer.seek(0)
    fresh = TransformerLM(config)
    assert load_checkpoint(buffer, fresh, AdamW(fresh.parameters(), lr=1e-2)) == 7
    assert fresh.lm_head.weight is fresh.token_embeddings.weight
    torch.testing.assert_close(fresh(tokens), model(tokens), rtol=0, atol=0)
    fresh.load_state_dict(model.state_dict(), assign=True)  # a new Parameter per key: tied again after
    assert fresh.lm_head.weight is fresh.token_embeddings.weight
    untied_state = TransformerLM(ModelConfig(**SMALL)).state_dict()
    with pytest.raises(ValueError, match="ties lm_head.weight to token_embeddings.weight"):
        TransformerLM(ModelConfig(**SMALL, tie_embeddings=True)).load_state_dict(untied_state)


# ------------------------------------------------------------------------------------------------ soft-cap


def test_logit_softcap_is_in_the_forward() -> None:
    """logits = c tanh(raw / c), raw being the uncapped model's logits. Mistakes caught: tanh without the
    scale (tanh(raw / c) or tanh(raw)); the cap applied only in the loss (the forward's logits uncapped)."""
    torch.manual_seed(0)
    capped = TransformerLM(ModelConfig(**SMALL, logit_softcap=2.0))
    plain = TransformerLM(ModelConfig(**SMALL))
    plain.load_state_dict(capped.state_dict())
    tokens = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        raw, logits = plain(tokens), capped(tokens)
    assert raw.abs().max() > 3.0  # the input reaches beyond the cap, so the cap has work to do
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
    assert logits.abs().max() < 2.0
    assert not torch.allclose(torch.tanh(raw / 2.0), logits, atol=1e-3)


# ------------------------------------------------------------------------------------------------ defaults and validation


def test_default_switches_keep_the_handout_model() -> None:
    """Default switches: the handout's state-dict keys exactly, and the same weights and logits as a model
    built with every new switch spelled out at its default (a mistake: a default-on switch, or an extra
    parameter such as an Identity-free q_norm that enters the state dict)."""
    torch.manual_seed(3)
    default = TransformerLM(ModelConfig(**SMALL))
    torch.manual_seed(3)
    spelled = TransformerLM(
        ModelConfig(**SMALL, qk_norm=False, tie_embeddings=False, logit_softcap=0.0, ffn_type="swiglu")
    )
    assert list(default.state_dict()) == HANDOUT_KEYS
    for key, value in default.state_dict().items():
        assert torch.equal(value, spelled.state_dict()[key])
    assert default.lm_head.weight is not default.token_embeddings.weight


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"qk_norm": 1}, TypeError, "qk_norm must be a bool"),
        ({"tie_embeddings": "yes"}, TypeError, "tie_embeddings must be a bool"),
        ({"logit_softcap": -1.0}, ValueError, "logit_softcap must be a finite number >= 0"),
        ({"logit_softcap": float("nan")}, ValueError, "logit_softcap"),
        ({"logit_softcap": float("inf")}, ValueError, "logit_softcap"),
        ({"logit_softcap": True}, ValueError, "logit_softcap"),
        ({"ffn_type": "relu"}, ValueError, "ffn_type must be one of"),
    ],
)
def test_model_config_refuses_bad_switches(changes: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ModelConfig(**SMALL, **changes)


def test_every_switch_on_trains_one_step() -> None:
    config = ModelConfig(**SMALL, qk_norm=True, ffn_type="relu2", tie_embeddings=True, logit_softcap=30.0)
    assert dataclasses.replace(config).to_dict() == ModelConfig.from_dict(config.to_dict()).to_dict()
    model = TransformerLM(config)
    tokens = torch.randint(0, 50, (2, 9))
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fused_kernels_compute_the_same_with_every_switch_on() -> None:
    """`fast.py` runs the attention after QK-norm and RoPE, so the switches need nothing from it: the fused
    model's logits and gradients equal the textbook's (a mistake: a fast path that skipped the norms)."""
    torch.manual_seed(0)
    config = ModelConfig(**SMALL, qk_norm=True, ffn_type="relu2", tie_embeddings=True, logit_softcap=10.0)
    textbook = TransformerLM(config)
    fused = TransformerLM(config, fused_kernels=True)
    fused.load_state_dict(textbook.state_dict())
    tokens = torch.randint(0, 50, (2, 16))
    outs = [model(tokens) for model in (textbook, fused)]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for out in outs:
        out.square().mean().backward()
    grads = [model.layers[0].attn.q_norm.weight.grad for model in (textbook, fused)]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
