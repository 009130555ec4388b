"""Details of the reference model that the graded tests leave open: initialisation, d_ff rounding, error
messages, the ablation switches, state-dict layout, the KV cache and the configuration round trip."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import json
import math

import pytest
import torch

from cs336_basics import (
    Embedding,
    KVCache,
    Linear,
    ModelConfig,
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryPositionalEmbedding,
    SiLUFeedForward,
    SwiGLU,
    TransformerBlock,
    TransformerLM,
    default_d_ff,
    scaled_dot_product_attention,
    softmax,
)
from oracle.model import OracleTransformerLM

TINY = ModelConfig(vocab_size=37, context_length=12, d_model=16, num_layers=2, num_heads=2)


@pytest.fixture
def tiny_model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TINY)


@pytest.mark.parametrize("module", ["functional", "layers", "rope", "attention", "model"], ids=str)
def test_docstring_examples(module: str) -> None:
    module_object = importlib.import_module(f"cs336_basics.{module}")
    result = doctest.testmod(module_object, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in cs336_basics.{module}"


# ----------------------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize(
    ("d_model", "expected"), [(512, 1344), (768, 2048), (1024, 2752), (1600, 4288), (100, 256), (16, 64)]
)
def test_default_d_ff_is_about_8_thirds_rounded_to_64(d_model: int, expected: int) -> None:
    d_ff = default_d_ff(d_model)
    assert d_ff == expected
    assert d_ff % 64 == 0 and abs(d_ff - 8 * d_model / 3) <= 32 or d_ff == 64


def test_default_d_ff_rejects_nonpositive() -> None:
    with pytest.raises(ValueError, match="positive"):
        default_d_ff(0)


def test_linear_init_is_truncated_normal_with_glorot_variance() -> None:
    torch.manual_seed(0)
    weight = Linear(300, 500).weight.detach()
    sigma = math.sqrt(2 / (300 + 500))
    # A normal truncated at ±3σ has standard deviation 0.9866σ.
    assert weight.std().item() == pytest.approx(0.9866 * sigma, rel=0.02)
    assert abs(weight.mean().item()) < 0.01 * sigma
    assert weight.abs().max().item() <= 3 * sigma
    assert weight.abs().max().item() > 2.5 * sigma  # the tails are there, just cut


def test_embedding_init_is_standard_normal_truncated_at_3() -> None:
    torch.manual_seed(0)
    weight = Embedding(2000, 64).weight.detach()
    assert weight.std().item() == pytest.approx(0.9866, rel=0.02)
    assert weight.abs().max().item() <= 3.0


def test_rmsnorm_gain_starts_at_one_and_reset_restores_it() -> None:
    norm = RMSNorm(8)
    assert torch.equal(norm.weight.detach(), torch.ones(8))
    with torch.no_grad():
        norm.weight.mul_(3)
    norm.reset_parameters()
    assert torch.equal(norm.weight.detach(), torch.ones(8))


def test_model_reset_parameters_reinitialises_every_weight(tiny_model: TransformerLM) -> None:
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.fill_(7.0)
    tiny_model.reset_parameters()
    for key, value in tiny_model.state_dict().items():
        assert not torch.all(value == 7.0), key
        assert value.shape == before[key].shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_every_module_honours_device_and_dtype(dtype: torch.dtype) -> None:
    modules = [
        Linear(4, 6, device="cpu", dtype=dtype),
        Embedding(5, 4, device="cpu", dtype=dtype),
        RMSNorm(4, device="cpu", dtype=dtype),
        SwiGLU(4, 8, device="cpu", dtype=dtype),
        SiLUFeedForward(4, device="cpu", dtype=dtype),
        MultiHeadSelfAttention(4, 2, device="cpu", dtype=dtype),
        TransformerBlock(4, 2, 8, 6, 10000.0, device="cpu", dtype=dtype),
        TransformerLM(dataclasses.replace(TINY, d_ff=None), device="cpu", dtype=dtype),
    ]
    for module in modules:
        for name, p in module.named_parameters():
            assert p.dtype == dtype and p.device.type == "cpu", f"{type(module).__name__}.{name}"
    logits = modules[-1](torch.tensor([[1, 2, 3]]))
    assert logits.dtype == dtype


# ---------------------------------------------------------------------------------------- error messages


def test_wrong_weight_shape_names_expected_and_actual() -> None:
    with pytest.raises(ValueError, match=r"expected shape \(6, 4\), got \(4, 6\)"):
        Linear(4, 6).load_state_dict({"weight": torch.zeros(4, 6)})
    with pytest.raises(ValueError, match=r"ln_final\.weight.*expected shape \(16,\), got \(8,\)"):
        TransformerLM(TINY).load_state_dict({**TransformerLM(TINY).state_dict(), "ln_final.weight": torch.ones(8)})


def test_heads_must_divide_d_model() -> None:
    with pytest.raises(ValueError, match="d_model=10, num_heads=3"):
        MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="d_model=10, num_heads=3"):
        ModelConfig(vocab_size=5, context_length=4, d_model=10, num_layers=1, num_heads=3)


@pytest.mark.parametrize("bad_id", [-1, TINY.vocab_size], ids=["negative", "vocab_size"])
def test_token_ids_outside_vocab_are_rejected(tiny_model: TransformerLM, bad_id: int) -> None:
    with pytest.raises(ValueError, match=rf"\[0, {TINY.vocab_size}\).*{bad_id}"):
        tiny_model(torch.tensor([[1, bad_id, 2]]))


def test_float_token_ids_are_rejected(tiny_model: TransformerLM) -> None:
    with pytest.raises(TypeError, match="integer"):
        tiny_model(torch.tensor([[1.0, 2.0]]))


def test_sequence_longer_than_context_is_rejected(tiny_model: TransformerLM) -> None:
    with pytest.raises(ValueError, match=f"13 tokens.*context_length={TINY.context_length}"):
        tiny_model(torch.zeros(1, 13, dtype=torch.long))


def test_rope_rejects_long_sequences_bad_positions_and_odd_d_k() -> None:
    rope = RotaryPositionalEmbedding(10000.0, 4, max_seq_len=8)
    with pytest.raises(ValueError, match=r"sequence length 9 exceeds .*max_seq_len=8"):
        rope(torch.zeros(9, 4))
    with pytest.raises(ValueError, match=r"\[0, 8\).*got \[0, 8\]"):
        rope(torch.zeros(2, 4), torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="d_k=4"):
        rope(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="even d_k.*d_k=5"):
        RotaryPositionalEmbedding(10000.0, 5, 8)


def test_attention_input_checks() -> None:
    q = torch.zeros(3, 4)
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, q, q, torch.ones(3, 3))
    with pytest.raises(ValueError, match="Q has 4, K has 5"):
        scaled_dot_product_attention(q, torch.zeros(3, 5), q)
    with pytest.raises(ValueError, match="K has 3, V has 2"):
        scaled_dot_product_attention(q, q, torch.zeros(2, 4))


def test_softmax_rejects_bad_dim() -> None:
    with pytest.raises(ValueError, match=r"\[-2, 2\).*got 2"):
        softmax(torch.zeros(2, 3), dim=2)


# ------------------------------------------------------------------------------------- config round trip


def test_config_json_round_trip_and_d_ff_resolution() -> None:
    assert TINY.d_ff == default_d_ff(16)
    assert dataclasses.replace(TINY, ffn_type="silu", d_ff=None).d_ff == 64
    config = dataclasses.replace(TINY, norm_position="post", rope_theta=500.0)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dmodel": 16}, r"unknown ModelConfig keys \['dmodel'\]"),
        ({"vocab_size": None}, "missing required keys"),
        ({"norm_position": "middle"}, r"norm_position must be one of \('pre', 'post'\), got 'middle'"),
        ({"ffn_type": "relu"}, "ffn_type"),
        ({"position_embedding": "alibi"}, "position_embedding"),
        ({"num_layers": 0}, "num_layers must be a positive int, got 0"),
        ({"d_ff": -4}, "d_ff must be a positive int or None, got -4"),
    ],
    ids=["unknown_key", "missing_key", "norm_position", "ffn_type", "position_embedding", "num_layers", "d_ff"],
)
def test_config_validation(changes: dict, message: str) -> None:
    data = TINY.to_dict() | changes
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


# ---------------------------------------------------------------------------------- state dict and size


def test_state_dict_keys_follow_the_interface(tiny_model: TransformerLM) -> None:
    block = [
        "attn.q_proj.weight",
        "attn.k_proj.weight",
        "attn.v_proj.weight",
        "attn.output_proj.weight",
        "ln1.weight",
        "ffn.w1.weight",
        "ffn.w2.weight",
        "ffn.w3.weight",
        "ln2.weight",
    ]
    expected = {"token_embeddings.weight", "ln_final.weight", "lm_head.weight"}
    expected |= {f"layers.{i}.{key}" for i in range(TINY.num_layers) for key in block}
    assert set(tiny_model.state_dict()) == expected  # RoPE tables are non-persistent


def test_rope_tables_are_shared_by_all_layers(tiny_model: TransformerLM) -> None:
    ropes = {id(layer.attn.rope) for layer in tiny_model.layers}
    assert ropes == {id(tiny_model.rope)}


def test_loads_torch_compile_prefixed_keys(tiny_model: TransformerLM) -> None:
    prefixed = {f"_orig_mod.{k}": v + 1 for k, v in tiny_model.state_dict().items()}
    fresh = TransformerLM(TINY)
    fresh.load_state_dict(prefixed)
    assert torch.equal(fresh.lm_head.weight, prefixed["_orig_mod.lm_head.weight"])


def test_num_parameters_matches_the_formula(tiny_model: TransformerLM) -> None:
    V, D, L, F = TINY.vocab_size, TINY.d_model, TINY.num_layers, TINY.d_ff
    per_block = 4 * D * D + 3 * D * F + 2 * D
    assert tiny_model.num_parameters() == 2 * V * D + L * per_block + D
    assert tiny_model.num_parameters(exclude_embeddings=True) == V * D + L * per_block + D


def test_every_parameter_gets_a_gradient(tiny_model: TransformerLM) -> None:
    logits = tiny_model(torch.randint(0, TINY.vocab_size, (2, 7)))
    logits.logsumexp(-1).mean().backward()
    for name, p in tiny_model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_oracle_twin_computes_the_same_logits(tiny_model: TransformerLM) -> None:
    twin = OracleTransformerLM(
        TINY.vocab_size, TINY.context_length, TINY.d_model, TINY.num_layers, TINY.num_heads, TINY.d_ff, TINY.rope_theta
    )
    twin.load_state_dict(tiny_model.state_dict())
    ids = torch.randint(0, TINY.vocab_size, (3, TINY.context_length))
    torch.testing.assert_close(twin(ids), tiny_model(ids), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ ablation switches


def _ablation(**changes: object) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(dataclasses.replace(TINY, **changes))


def test_no_rmsnorm_has_no_norm_weights() -> None:
    model = _ablation(use_rmsnorm=False)
    assert not [k for k in model.state_dict() if "ln" in k]
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


def test_post_norm_block_normalises_after_each_residual() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, 32, 8, 10000.0, norm_position="post")
    with torch.no_grad():
        block.ln1.weight.uniform_(0.5, 1.5)
        block.ln2.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 16)
    h = block.ln1(x + block.attn(x))
    torch.testing.assert_close(block(x), block.ln2(h + block.ffn(h)))
    assert isinstance(_ablation(norm_position="post").ln_final, torch.nn.Identity)


def test_nope_is_blind_to_the_order_of_earlier_tokens() -> None:
    """Without position embeddings, one causal attention layer sees the earlier tokens as a set (deeper
    layers would not: the hidden state of token 0 or 1 depends on what it could see)."""
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    swapped = torch.tensor([[5, 3, 7, 9, 11]])
    nope, rope = _ablation(position_embedding="none", num_layers=1), _ablation(num_layers=1)
    assert all(layer.attn.rope is None for layer in nope.layers)
    torch.testing.assert_close(nope(ids)[:, 2:], nope(swapped)[:, 2:])
    assert not torch.allclose(rope(ids)[:, 2:], rope(swapped)[:, 2:])


def test_silu_ffn_uses_two_matrices_of_4_d_model() -> None:
    model = _ablation(ffn_type="silu", d_ff=None)
    ffn = model.layers[0].ffn
    assert isinstance(ffn, SiLUFeedForward) and not hasattr(ffn, "w3")
    assert ffn.w1.weight.shape == (4 * TINY.d_model, TINY.d_model)


# -------------------------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize(
    "changes", [{}, {"position_embedding": "none"}, {"norm_position": "post"}], ids=["rope", "nope", "post_norm"]
)
def test_kv_cache_decoding_matches_full_forward(changes: dict) -> None:
    model = _ablation(**changes)
    ids = torch.randint(0, TINY.vocab_size, (3, TINY.context_length))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(batch_size=3)
        pieces = [model(ids[:, :5], kv_cache=cache)]  # a prompt, then one token at a time
        for t in range(5, TINY.context_length):
            pieces.append(model(ids[:, t : t + 1], kv_cache=cache))
    assert cache.length == TINY.context_length
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_kv_cache_limits(tiny_model: TransformerLM) -> None:
    cache = tiny_model.new_kv_cache(batch_size=1)
    assert isinstance(cache, KVCache)
    with torch.no_grad():
        tiny_model(torch.zeros(1, TINY.context_length, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match=f"12 cached \\+ 1 new.*context_length={TINY.context_length}"):
            tiny_model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
        cache.reset()
        assert cache.length == 0
        with pytest.raises(ValueError, match="batch size 1, got a batch of 2"):
            tiny_model(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache)
