"""Resource accounting against the real thing: parameter counts against `numel()` of a built `TransformerLM`,
matmul FLOPs against `torch.utils.flop_counter.FlopCounterMode`, optimizer state against a real AdamW step;
hand-worked numbers for the handout's GPT-2 XL; the `cs336 accounting` command."""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cs336_lab.accounting as accounting
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW
from cs336_common.model_spec import ModelSpec
from cs336_lab.accounting import (
    PRESETS,
    count_parameters,
    forward_flops,
    mfu,
    peak_flops_for_device,
    training_flops_per_token,
    training_memory,
)

BASE = ModelConfig(vocab_size=97, context_length=32, d_model=48, num_layers=2, num_heads=4)
ABLATIONS = {
    "default": {},
    "d_ff_odd": {"d_ff": 100},
    "no_rmsnorm": {"use_rmsnorm": False},
    "post_norm": {"norm_position": "post"},
    "nope": {"position_embedding": "none"},
    "silu_ffn": {"ffn_type": "silu"},
    "relu2_ffn": {"ffn_type": "relu2"},
    "qk_norm": {"qk_norm": True},
    "tied": {"tie_embeddings": True},
    "softcap": {"logit_softcap": 30.0},
    "modern_recipe": {"ffn_type": "relu2", "qk_norm": True, "tie_embeddings": True, "logit_softcap": 15.0},
    "three_layers_one_head": {"num_layers": 3, "num_heads": 1},
}


@pytest.fixture(params=list(ABLATIONS.values()), ids=list(ABLATIONS))
def config(request: pytest.FixtureRequest) -> ModelConfig:
    return dataclasses.replace(BASE, **request.param)


def _numel(model: torch.nn.Module, keep=lambda name: True) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if keep(name))


def test_doctests() -> None:
    assert doctest.testmod(accounting).failed == 0


# ---------------------------------------------------------------------------------------------- parameters


def test_parameter_counts_match_model(config: ModelConfig) -> None:
    model = TransformerLM(config)
    counts = count_parameters(config)
    assert counts["total"] == _numel(model) == model.num_parameters()
    assert counts["non_embedding"] == model.num_parameters(exclude_embeddings=True)
    assert counts["token_embeddings"] == _numel(model, lambda n: n.startswith("token_embeddings."))
    assert counts["lm_head"] == _numel(model, lambda n: n.startswith("lm_head."))
    assert counts["attention"] == _numel(model, lambda n: ".attn." in n and "_norm." not in n)  # QK-norm: a norm
    assert counts["ffn"] == _numel(model, lambda n: ".ffn." in n)
    assert counts["norms"] == _numel(model, lambda n: "ln" in n.split(".")[-2] or n.split(".")[-2].endswith("_norm"))


def test_modern_recipe_hand_worked() -> None:
    """Tied embeddings counted once (V d, no head), ReLU² two matrices (2 d F, F = 4 d), QK-norm 2 d_k gains per
    layer. Mistakes this catches: the tied matrix counted twice (+V d), ReLU² given SwiGLU's three matrices."""
    spec = ModelSpec(**{**BASE.to_dict(), "d_ff": None, "ffn_type": "relu2", "qk_norm": True, "tie_embeddings": True})
    V, d, L, F, dk = 97, 48, 2, 4 * 48, 12
    assert spec.d_ff == F
    assert count_parameters(spec)["total"] == V * d + L * (4 * d * d + 2 * d * F + 2 * d + 2 * dk) + d
    assert count_parameters(spec)["lm_head"] == 0


@pytest.mark.parametrize("name", sorted(PRESETS), ids=sorted(PRESETS))
def test_preset_parameter_counts_match_model(name: str) -> None:
    # shapes only: no memory, no initialisation cost
    model = TransformerLM(ModelConfig(**PRESETS[name].to_dict()), device="meta")
    assert count_parameters(PRESETS[name])["total"] == _numel(model)


def test_gpt2_xl_hand_worked() -> None:
    """The handout's GPT-2 XL shapes (V 50,257, T 1,024, L 48, d 1,600, h 25, F 6,400), worked by hand."""
    cfg = PRESETS["gpt2-xl"]
    # 2 V d + L (4 d^2 + 3 d F + 2 d) + d
    assert count_parameters(cfg)["total"] == 2 * 50257 * 1600 + 48 * (4 * 1600**2 + 3 * 1600 * 6400 + 2 * 1600) + 1600
    assert count_parameters(cfg)["total"] == 2_127_057_600
    flops = forward_flops(cfg, seq_len=1024)
    assert flops["ffn"] == 48 * 3 * 2 * 1024 * 1600 * 6400  # the FFN dominates: ~3.02e12 of ~4.51e12
    assert flops["attention_scores"] == flops["attention_values"] == 48 * 2 * 1024 * 1024 * 1600
    assert flops["lm_head"] == 2 * 1024 * 1600 * 50257
    assert flops["total"] == pytest.approx(4.513e12, rel=1e-3)
    mem = training_memory(cfg, batch_size=1)
    assert mem["parameters"] == mem["gradients"] == 4 * 2_127_057_600
    assert mem["optimizer_state"] == 2 * mem["parameters"]


# ---------------------------------------------------------------------------------------------- FLOPs


def _count(config: ModelConfig, batch_size: int, seq_len: int, backward: bool = False) -> FlopCounterMode:
    torch.manual_seed(0)
    model = TransformerLM(config)
    x = torch.randint(0, config.vocab_size, (batch_size, seq_len))
    with FlopCounterMode(display=False) as counter:
        logits = model(x)
        if backward:
            logits.sum().backward()
    return counter


def _flops_of(counter: FlopCounterMode, suffixes: tuple[str, ...], op: str | None = None) -> int:
    """FLOPs of the modules whose qualified name ends with one of `suffixes` (optionally one op only)."""
    total = 0
    for module, by_op in counter.get_flop_counts().items():
        if module.endswith(suffixes):
            total += sum(n for o, n in by_op.items() if op is None or str(o).endswith(op))
    return total


@pytest.mark.parametrize(("batch_size", "seq_len"), [(1, 1), (2, 16), (3, 32)], ids=["1x1", "2x16", "3x32"])
def test_forward_flops_match_flop_counter(config: ModelConfig, batch_size: int, seq_len: int) -> None:
    """Exact agreement: FlopCounterMode counts only matmuls (2 m n k), exactly what `forward_flops` counts."""
    counter = _count(config, batch_size, seq_len)
    expected = forward_flops(config, seq_len, batch_size)
    assert counter.get_total_flops() == expected["total"]
    # Counts are hierarchical (a module's include its children's). The q/k/v projections may run as one fused
    # matmul in the attention module itself: they are its plain matmuls minus those of the output projection.
    qkv = _flops_of(counter, (".attn",), op=".mm") - _flops_of(counter, (".attn.output_proj",), op=".mm")
    assert qkv == expected["attention_qkv_projections"]
    assert _flops_of(counter, (".attn.output_proj",)) == expected["attention_output_projection"]
    # QK^T and the weighted sum of values are the two batched matmuls of the attention module itself.
    assert _flops_of(counter, (".attn",), op="bmm") == expected["attention_scores"] + expected["attention_values"]
    assert _flops_of(counter, (".ffn",)) == expected["ffn"]
    assert _flops_of(counter, ("lm_head",)) == expected["lm_head"]


def test_training_flops_are_three_forwards() -> None:
    """Backward computes two matmuls per forward matmul (input and weight gradients): fwd + bwd = 3 fwd."""
    counter = _count(BASE, batch_size=2, seq_len=16, backward=True)
    assert counter.get_total_flops() == 3 * forward_flops(BASE, 16, 2)["total"]
    assert training_flops_per_token(BASE, 16) * 2 * 16 == counter.get_total_flops()


def test_training_flops_default_seq_len_is_context_length() -> None:
    assert training_flops_per_token(BASE) == training_flops_per_token(BASE, BASE.context_length)


@pytest.mark.parametrize("seq_len", [1, 1024], ids=["T1", "T1024"])
def test_training_flops_are_six_n_plus_attention(seq_len: int) -> None:
    """The classic estimate: 6 N (N = matmul weights, embeddings and gains excluded) plus 12 L T d for QK^T
    and the weighted values (4 L T d forward per token, times 3)."""
    cfg = PRESETS["gpt2-small"]
    n = count_parameters(cfg)
    six_n = 6 * (n["total"] - n["token_embeddings"] - n["norms"])
    assert training_flops_per_token(cfg, seq_len) == six_n + 12 * cfg.num_layers * seq_len * cfg.d_model


# ---------------------------------------------------------------------------------------------- memory


def test_optimizer_state_matches_real_adamw() -> None:
    model = TransformerLM(BASE)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, BASE.vocab_size, (1, 8))).sum().backward()
    optimizer.step()
    state_elements = sum(
        t.numel() for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0
    )
    mem = training_memory(BASE, batch_size=1, bytes_per_element=4)
    assert mem["optimizer_state"] == 4 * state_elements
    assert mem["gradients"] == 4 * sum(p.grad.numel() for p in model.parameters())


def test_activation_memory_hand_worked() -> None:
    """B=2, T=8, d=48, h=4, F=128 (default_d_ff(48)), V=97, L=2, float32."""
    B, T, d, h, F, V, L = 2, 8, 48, 4, 128, 97, 2
    assert BASE.d_ff == F
    per_layer = 2 * B * T * d + 3 * B * T * d + 2 * B * h * T * T + 2 * B * T * d + 4 * B * T * F + B * T * d
    expected = L * per_layer + B * T * d + 2 * B * T * V
    assert training_memory(BASE, batch_size=B, seq_len=T)["activations"] == 4 * expected
    assert training_memory(BASE, batch_size=B, seq_len=T, bytes_per_element=2)["activations"] == 2 * expected


def test_memory_total_and_scaling() -> None:
    one = training_memory(BASE, batch_size=1)
    four = training_memory(BASE, batch_size=4)
    assert one["total"] == one["parameters"] + one["gradients"] + one["optimizer_state"] + one["activations"]
    assert four["activations"] == 4 * one["activations"]
    assert four["parameters"] == one["parameters"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: forward_flops(BASE, seq_len=0), "seq_len"),
        (lambda: forward_flops(BASE, seq_len=4, batch_size=0), "batch_size"),
        (lambda: training_memory(BASE, batch_size=0), "batch_size"),
        (lambda: training_memory(BASE, batch_size=1, bytes_per_element=0), "bytes_per_element"),
        (lambda: mfu(1.0, 1.0, peak_flops=0.0), "peak_flops"),
    ],
    ids=["seq_len", "batch", "memory_batch", "bytes", "peak"],
)
def test_bad_input_raises(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------- peak FLOP/s, MFU


def test_mfu() -> None:
    assert mfu(tokens_per_s=2e3, flops_per_token=1e9, peak_flops=4e12) == pytest.approx(0.5)


def test_peak_flops_cpu_is_unknown() -> None:
    assert peak_flops_for_device("cpu") is None


@pytest.mark.parametrize(
    ("gpu_name", "dtype", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", None, 989.5e12),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.5e12),
        ("NVIDIA H200", torch.float32, 66.9e12),
        ("NVIDIA A100-SXM4-80GB", torch.float16, 312e12),
        ("Tesla V100-SXM2-16GB", torch.bfloat16, None),  # no bf16 on a V100
        ("Some Future GPU", None, None),
    ],
    ids=["h100", "h100_pcie", "h200_fp32", "a100_fp16", "v100_no_bf16", "unknown"],
)
def test_peak_flops_for_known_gpus(monkeypatch, gpu_name: str, dtype, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu_name)
    assert peak_flops_for_device("cuda", dtype) == expected


# ---------------------------------------------------------------------------------------------- the command


def _run_cli(argv: list[str], capsys) -> str:
    parser = argparse.ArgumentParser()
    accounting.add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_cli_preset(capsys) -> None:
    out = _run_cli(["accounting", "--preset", "gpt2-small", "--peak-flops", "989.5e12"], capsys)
    assert f"{count_parameters(PRESETS['gpt2-small'])['total']:,}" in out
    for key in [*forward_flops(BASE, 1), *training_memory(BASE, 1)]:
        assert key in out
    assert "tokens/s at 100% MFU" in out


def test_cli_model_flags_and_preset_override(capsys) -> None:
    flags = ["--vocab-size", "97", "--context-length", "32", "--d-model", "48", "--num-layers", "2", "--num-heads", "4"]
    out = _run_cli(["accounting", *flags, "--batch-size", "2"], capsys)
    assert f"{count_parameters(BASE)['total']:,}" in out and "B=2, T=32" in out
    out = _run_cli(["accounting", "--preset", "gpt2-small", "--num-layers", "6"], capsys)
    six = dataclasses.replace(PRESETS["gpt2-small"], num_layers=6)
    assert f"{count_parameters(six)['total']:,}" in out


def test_cli_config_file(tmp_path, capsys) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(BASE.to_dict()))
    out = _run_cli(["accounting", "--config", str(path), "--seq-len", "8"], capsys)
    assert f"{count_parameters(BASE)['total']:,}" in out and "T=8" in out


def test_cli_preset_and_config_conflict(tmp_path, capsys) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(BASE.to_dict()))
    with pytest.raises(ValueError, match="either --preset or --config"):
        _run_cli(["accounting", "--preset", "gpt2-small", "--config", str(path)], capsys)


def test_cli_main_entry_point(capsys) -> None:
    cli = pytest.importorskip("cs336_lab.cli")
    assert cli.main(["accounting", "--preset", "tinystories"]) == 0
    assert f"{count_parameters(PRESETS['tinystories'])['total']:,}" in capsys.readouterr().out
