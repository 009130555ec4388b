"""Resource accounting: parameters, forward/training FLOPs, AdamW training memory and MFU of a `ModelSpec`
(`cs336_common/model_spec.py`).

Everything here is arithmetic on the config (no model is built), so it answers "how big / how slow /
how much memory" for shapes far too large to instantiate, e.g. `PRESETS["gpt2-xl"]`. The tests check the
counts against a real `TransformerLM` (`numel()`) and against `torch.utils.flop_counter.FlopCounterMode`.

Notation (used in every comment below): B batch, T sequence length, d = d_model, h = num_heads,
d_k = d / h, F = d_ff, V = vocab_size, L = num_layers.

    >>> cfg = PRESETS["gpt2-small"]
    >>> count_parameters(cfg)["total"]
    190460160
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from cs336_common.model_spec import ModelSpec

# The GPT-2 shapes of the handout's accounting problem (vocab 50,257, context 1,024) with this architecture.
# NOTE: d_ff = 4 * d_model, as the handout's GPT-2 XL accounting question states (d_ff 6,400 for d_model 1,600),
# not the ~8/3 * d_model SwiGLU default, so that answers can be checked against the handout's numbers.
PRESETS: dict[str, ModelSpec] = {
    "gpt2-small": ModelSpec(vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=3072),
    "gpt2-medium": ModelSpec(
        vocab_size=50257, context_length=1024, d_model=1024, num_layers=24, num_heads=16, d_ff=4096
    ),
    "gpt2-large": ModelSpec(
        vocab_size=50257, context_length=1024, d_model=1280, num_layers=36, num_heads=20, d_ff=5120
    ),
    "gpt2-xl": ModelSpec(vocab_size=50257, context_length=1024, d_model=1600, num_layers=48, num_heads=25, d_ff=6400),
    # The handout's TinyStories model (section 7).
    "tinystories": ModelSpec(
        vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344, rope_theta=10000.0
    ),
}

# Dense (no sparsity) peak FLOP/s from the vendors' data sheets, by GPU name fragment and compute dtype.
# Lookup is by substring of `torch.cuda.get_device_name()`, first match wins: keep specific names first.
# "fp32" is plain FP32 on CUDA cores (TF32 tensor cores are faster: A100 156e12, H100 SXM 494.5e12).
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.5e12, "fp16": 989.5e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.5e12, "fp16": 756.5e12, "fp32": 51.2e12},
    "H100": {"bf16": 989.5e12, "fp16": 989.5e12, "fp32": 66.9e12},  # SXM
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12},
}

_DTYPE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def resolved_d_ff(config: ModelSpec) -> int:
    """The feed-forward width the model uses: `ModelSpec` resolves `d_ff=None` to its default
    (`implied_d_ff(d_model, ffn_type)` of cs336_common/model_spec.py) when it is built."""
    assert config.d_ff is not None, "ModelSpec.__post_init__ resolves d_ff"
    return int(config.d_ff)


def _final_norm(config: ModelSpec) -> int:
    """1 if the model ends in an RMSNorm: pre-norm only (a post-norm stack already ends in one)."""
    return int(config.use_rmsnorm and config.norm_position == "pre")


def _num_ffn_matrices(config: ModelSpec) -> int:
    """SwiGLU has w1, w2, w3; the SiLU ablation and ReLU² have w1, w2."""
    return 3 if config.ffn_type == "swiglu" else 2


def count_parameters(config: ModelSpec) -> dict[str, int]:
    """Parameter counts by component, plus `total` and `non_embedding` (total minus the token embeddings).

    Per layer: q, k, v, output projections 4 d^2; feed-forward 3 d F (SwiGLU) or 2 d F (SiLU, ReLU²);
    two RMSNorm gains 2 d (none without RMSNorm); QK-norm's two gains 2 d_k. Once: embeddings V d, LM head
    V d (0 when tied: the head is the embedding matrix), and the final RMSNorm gain d (pre-norm only).
    RoPE has no parameters (its sin/cos tables are non-persistent buffers).

        >>> count_parameters(ModelSpec(vocab_size=10, context_length=4, d_model=8, num_layers=1,
        ...                              num_heads=2, d_ff=16))["total"]
        824
    """
    d, L, V = config.d_model, config.num_layers, config.vocab_size
    F = resolved_d_ff(config)
    norm = d if config.use_rmsnorm else 0
    counts = {
        "token_embeddings": V * d,
        "attention": L * 4 * d * d,
        "ffn": L * _num_ffn_matrices(config) * d * F,
        "norms": L * 2 * norm + _final_norm(config) * d + L * 2 * config.qk_norm * config.head_dim,
        "lm_head": 0 if config.tie_embeddings else V * d,
    }
    counts["total"] = sum(counts.values())
    counts["non_embedding"] = counts["total"] - counts["token_embeddings"]
    return counts


def forward_flops(config: ModelSpec, seq_len: int, batch_size: int = 1) -> dict[str, float]:
    """FLOPs of one forward pass, by kind of matrix multiply, summed over layers, plus `total`.

    A matmul of (m, k) by (k, n) costs 2 m n k FLOPs (one multiply and one add per term). Hence, for
    B T tokens: each d->d projection 2 B T d^2; QK^T per head 2 T T d_k, over h heads 2 B T^2 d; the
    attention-weighted sum of values likewise 2 B T^2 d (the causal mask does not skip work in a dense
    implementation); each feed-forward matrix 2 B T d F; the LM head 2 B T d V (tied or not). Elementwise work
    (norms, QK-norm, SiLU/ReLU², RoPE, residual adds: O(B T d); the softmax: O(B h T^2); the logit soft-cap:
    O(B T V)) is not counted, as in `FlopCounterMode`.

        >>> cfg = ModelSpec(vocab_size=10, context_length=4, d_model=8, num_layers=1, num_heads=2, d_ff=16)
        >>> forward_flops(cfg, seq_len=4)["total"]
        6272.0
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got seq_len={seq_len}, batch_size={batch_size}")
    d, L, V = config.d_model, config.num_layers, config.vocab_size
    F = resolved_d_ff(config)
    tokens = batch_size * seq_len
    flops = {
        "attention_qkv_projections": L * 3 * 2.0 * tokens * d * d,
        "attention_scores": L * 2.0 * batch_size * seq_len * seq_len * d,  # QK^T
        "attention_values": L * 2.0 * batch_size * seq_len * seq_len * d,  # softmax(...) V
        "attention_output_projection": L * 2.0 * tokens * d * d,
        "ffn": L * _num_ffn_matrices(config) * 2.0 * tokens * d * F,
        "lm_head": 2.0 * tokens * d * V,
    }
    flops["total"] = sum(flops.values())
    return flops


def training_flops_per_token(config: ModelSpec, seq_len: int | None = None) -> float:
    """FLOPs of one training step (forward + backward) per token: 3x the forward.

    The backward computes two matmuls per forward matmul (the gradient of the input and of the weight),
    hence ~2x the forward; the optimizer step is O(parameters) and ignored. `seq_len` defaults to the
    config's context length. For long contexts this is ~6 N + 12 L T d (N = non-embedding parameters).
    """
    seq_len = config.context_length if seq_len is None else seq_len
    return 3.0 * forward_flops(config, seq_len)["total"] / seq_len


def activation_elements(config: ModelSpec, batch_size: int, seq_len: int) -> dict[str, float]:
    """Elements of the activations saved for the backward pass, by component (the handout's accounting).

    Per layer: two RMSNorm outputs 2 B T d (none without RMSNorm); Q, K, V 3 B T d; QK^T scores and their softmax 2 B h T^2;
    the attention-weighted values B T d; the output projection B T d; SwiGLU W1 x, SiLU(W1 x), W3 x and
    their product 4 B T F (SiLU network: W1 x and SiLU(W1 x) 2 B T F), and W2's output B T d.
    Once: the final RMSNorm B T d (pre-norm only), the logits B T V and their softmax in the cross entropy B T V.
    """
    d, h, L, V = config.d_model, config.num_heads, config.num_layers, config.vocab_size
    F = resolved_d_ff(config)
    BT = batch_size * seq_len
    ffn_inner = 4 if config.ffn_type == "swiglu" else 2
    return {
        "norms": (L * 2.0 * config.use_rmsnorm + _final_norm(config)) * BT * d,
        "attention": L * (3.0 * BT * d + 2.0 * batch_size * h * seq_len * seq_len + 2.0 * BT * d),
        "ffn": L * (ffn_inner * BT * F + BT * d),
        "logits_and_loss": 2.0 * BT * V,
    }


def training_memory(
    config: ModelSpec, batch_size: int, seq_len: int | None = None, bytes_per_element: int = 4
) -> dict[str, float]:
    """Bytes of AdamW training: parameters, gradients, optimizer state (m and v), activations and total.

    Every tensor is counted at `bytes_per_element` (4 for float32), as in the handout's accounting.

        >>> mem = training_memory(PRESETS["gpt2-xl"], batch_size=1)
        >>> round(mem["parameters"] / 2**30, 2), mem["optimizer_state"] == 2 * mem["parameters"]
        (7.92, True)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bytes_per_element < 1:
        raise ValueError(f"bytes_per_element must be >= 1, got {bytes_per_element}")
    seq_len = config.context_length if seq_len is None else seq_len
    n = count_parameters(config)["total"]
    memory = {
        "parameters": float(n * bytes_per_element),
        "gradients": float(n * bytes_per_element),
        "optimizer_state": float(2 * n * bytes_per_element),
        "activations": sum(activation_elements(config, batch_size, seq_len).values()) * bytes_per_element,
    }
    memory["total"] = sum(memory.values())
    return memory


def peak_flops_for_device(device: str | torch.device, dtype: torch.dtype | None = None) -> float | None:
    """Peak dense FLOP/s of a known GPU for `dtype` (default bfloat16, the usual MFU reference), else None.

    Returns None for the CPU, for unknown GPUs and for dtypes the table lacks: the caller then reports no MFU
    unless the user gives `--peak-flops`.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    key = _DTYPE_KEYS.get(dtype if dtype is not None else torch.bfloat16)
    for fragment, peaks in PEAK_FLOPS.items():
        if fragment in name:
            return peaks.get(key) if key is not None else None
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the hardware peak.

    >>> mfu(tokens_per_s=1000.0, flops_per_token=6e9, peak_flops=1.2e13)
    0.5
    """
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return tokens_per_s * flops_per_token / peak_flops


# ----------------------------------------------------------------------------------------------------------
# `cs336 accounting`: a readable report.


def _human(x: float, unit: str = "") -> str:
    """`1.5e9 -> '1.50 G'`: engineering prefixes, binary for bytes.

    >>> _human(1536, "B"), _human(2.5e12, "FLOP")
    ('1.50 KiB', '2.50 TFLOP')
    """
    base, prefixes = (
        (1024.0, ["", "Ki", "Mi", "Gi", "Ti", "Pi"]) if unit == "B" else (1000.0, ["", "K", "M", "G", "T", "P"])
    )
    i = 0
    while abs(x) >= base and i < len(prefixes) - 1:
        x /= base
        i += 1
    return f"{x:.2f} {prefixes[i]}{unit}"


def format_report(
    config: ModelSpec,
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    bytes_per_element: int = 4,
    peak_flops: float | None = None,
    title: str = "model",
) -> str:
    """The text `cs336 accounting` prints: parameters, forward FLOPs by matmul, training memory."""
    seq_len = config.context_length if seq_len is None else seq_len
    params = count_parameters(config)
    flops = forward_flops(config, seq_len, batch_size)
    memory = training_memory(config, batch_size, seq_len, bytes_per_element)
    lines = [
        f"{title}: vocab {config.vocab_size}, context {config.context_length}, d_model {config.d_model}, "
        f"layers {config.num_layers}, heads {config.num_heads}, d_ff {resolved_d_ff(config)}, ffn {config.ffn_type}",
        "",
        f"{'parameters':<34}{'count':>16}{'share':>9}",
    ]
    for name, n in params.items():
        lines.append(f"  {name:<32}{n:>16,}{n / params['total']:>9.1%}")
    lines += ["", f"{'forward FLOPs (B=' + str(batch_size) + ', T=' + str(seq_len) + ')':<34}{'FLOPs':>16}{'share':>9}"]
    for name, f in flops.items():
        lines.append(f"  {name:<32}{f:>16.4g}{f / flops['total']:>9.1%}")
    per_token = training_flops_per_token(config, seq_len)
    lines += ["", f"training FLOPs per token (3x forward): {per_token:.4g}"]
    if peak_flops:
        lines.append(
            f"at peak {_human(peak_flops, 'FLOP/s')}: {peak_flops / per_token:,.0f} tokens/s at 100% MFU, "
            f"one step of {batch_size * seq_len:,} tokens >= {per_token * batch_size * seq_len / peak_flops:.4g} s"
        )
    lines += ["", f"{'AdamW training memory (' + str(bytes_per_element) + ' B/element)':<34}{'bytes':>16}{'':>9}"]
    for name, b in memory.items():
        lines.append(f"  {name:<32}{_human(b, 'B'):>16}{b / memory['total']:>9.1%}")
    return "\n".join(lines)


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register `cs336 accounting [--preset NAME | --config FILE | model flags] [--batch-size ...]`."""
    from cs336_lab.config import add_dataclass_arguments

    parser = subparsers.add_parser(
        "accounting",
        help="parameters, FLOPs and training memory of a model config or preset",
        description="Print parameter counts, forward FLOPs by matmul and AdamW training memory.",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="a named model shape; model flags given explicitly override it"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--seq-len", type=int, default=None, help="sequence length (default: context_length)")
    parser.add_argument("--bytes-per-element", type=int, default=4, help="4 for float32 (default), 2 for bf16")
    parser.add_argument("--peak-flops", type=float, default=None, help="hardware peak FLOP/s for time estimates")
    add_dataclass_arguments(parser, ModelSpec)
    parser.set_defaults(func=_handle)
    return parser


def _handle(args: argparse.Namespace) -> int:
    from cs336_lab.config import UNSET, config_from_args

    if args.preset is not None:
        if args.config:
            raise ValueError(f"give either --preset or --config, not both (got {args.preset!r} and {args.config!r})")
        overrides = {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(ModelSpec)
            if getattr(args, f.name, UNSET) is not UNSET
        }
        config, title = dataclasses.replace(PRESETS[args.preset], **overrides), args.preset
    else:
        config, title = config_from_args(ModelSpec, args), "model"
    report = format_report(
        config,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        bytes_per_element=args.bytes_per_element,
        peak_flops=args.peak_flops,
        title=title,
    )
    print(report)
    return 0
