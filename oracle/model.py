"""Oracle of the model area: the model adapters implemented with torch built-ins, and `OracleTransformerLM`,
a torch-native twin of our model (same state-dict keys) for benchmarks and the training-quality comparison.

The area is split in several files; this one re-exports the others, so tests import everything from here:
- `cs336_grading/expected/model.py`: every op written with torch built-ins (RoPE as complex multiplication,
  unlike ours), whose home is the grading package (it computes the graded cases' expected values);
- `model_snapshots.py`: the public draws of the graded cases (`SNAPSHOTS`; their home and the held-out draws:
  `cs336_grading/expected/draws.py`);
- `compare.py`: `assert_close`, the comparison every graded model test uses.

Nothing here imports `cs336_basics`. The oracle adapters run the ops in float32 (or bf16) with torch's own
kernels, which proves that a second, independent float32 implementation also meets the tolerances of the
graded tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cs336_grading.expected.model import (
    multihead_self_attention,
    rmsnorm,
    rope,
    rope_rotation,
    swiglu,
    transformer_block,
    transformer_lm,
)
from oracle.model_snapshots import SNAPSHOTS, lm_weights
from tests.cases import BLOCK, LM, MHA, RMSNORM_CASES, ROPE_CASES, SOFTMAX_DIMS

# Re-exported: the graded tests, `make_snapshots` and `adapters` find everything of the model area here.
from tests.compare import BF16_EPS, FLOAT32_EPS, assert_close

# ----------------------------------------------------------------------------------------------------------
# A torch-native twin of TransformerLM (nn.Linear, nn.RMSNorm, F.scaled_dot_product_attention)
# ----------------------------------------------------------------------------------------------------------


def _init_linear(layer: nn.Linear) -> None:
    std = math.sqrt(2.0 / (layer.in_features + layer.out_features))
    nn.init.trunc_normal_(layer.weight, std=std, a=-3 * std, b=3 * std)


class _OracleAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.output_proj = (
            nn.Linear(d_model, d_model, bias=False) for _ in range(4)
        )

    def forward(self, x: Tensor, rotation: Tensor) -> Tensor:
        B, T, D = x.shape
        H = self.num_heads

        def rotate(t: Tensor) -> Tensor:  # (B, T, H*d) -> (B, H, T, d), RoPE as complex products
            pairs = torch.view_as_complex(t.float().view(B, T, H, -1, 2))  # (B, T, H, d/2)
            return torch.view_as_real(pairs * rotation[:T, None]).view(B, T, H, -1).to(t.dtype).transpose(1, 2)

        q, k = rotate(self.q_proj(x)), rotate(self.k_proj(x))
        v = self.v_proj(x).view(B, T, H, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, d)
        return self.output_proj(out.transpose(1, 2).reshape(B, T, D))


class _OracleFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _OracleBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int, eps: float) -> None:
        super().__init__()
        self.attn = _OracleAttention(d_model, num_heads)
        self.ln1 = nn.RMSNorm(d_model, eps=eps)
        self.ffn = _OracleFFN(d_model, d_ff)
        self.ln2 = nn.RMSNorm(d_model, eps=eps)

    def forward(self, x: Tensor, rotation: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), rotation)
        return x + self.ffn(self.ln2(x))


class OracleTransformerLM(nn.Module):
    """The pre-norm RoPE Transformer LM from torch built-ins, with our state-dict keys and initialisation."""

    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        rope_theta: float = 10000.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embeddings = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(_OracleBlock(d_model, num_heads, d_ff, eps) for _ in range(num_layers))
        self.ln_final = nn.RMSNorm(d_model, eps=eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        rotation = rope_rotation(rope_theta, d_model // num_heads, torch.arange(context_length), torch.float64)
        # cos/sin rather than angles: they stay accurate if the module is cast to a lower precision.
        self.register_buffer("rope_cos", rotation.real.float(), persistent=False)
        self.register_buffer("rope_sin", rotation.imag.float(), persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _init_linear(module)
        nn.init.trunc_normal_(self.token_embeddings.weight, std=1.0, a=-3.0, b=3.0)

    def forward(self, in_indices: Tensor) -> Tensor:
        rotation = torch.complex(self.rope_cos.float(), self.rope_sin.float())
        x = self.token_embeddings(in_indices)
        for block in self.layers:
            x = block(x, rotation)
        return self.lm_head(self.ln_final(x))


# ----------------------------------------------------------------------------------------------------------
# The adapters of the model area, implemented by the oracle (same names and parameters as tests/adapters.py)
# ----------------------------------------------------------------------------------------------------------


def run_linear(d_in: int, d_out: int, weights: Tensor, in_features: Tensor) -> Tensor:
    return F.linear(in_features, weights)


def run_embedding(vocab_size: int, d_model: int, weights: Tensor, token_ids: Tensor) -> Tensor:
    return F.embedding(token_ids, weights)


def run_swiglu(
    d_model: int, d_ff: int, w1_weight: Tensor, w2_weight: Tensor, w3_weight: Tensor, in_features: Tensor
) -> Tensor:
    return swiglu(in_features, w1_weight, w2_weight, w3_weight)


def run_scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    return F.scaled_dot_product_attention(Q, K, V, attn_mask=mask)


def run_multihead_self_attention(
    d_model: int,
    num_heads: int,
    q_proj_weight: Tensor,
    k_proj_weight: Tensor,
    v_proj_weight: Tensor,
    o_proj_weight: Tensor,
    in_features: Tensor,
) -> Tensor:
    return multihead_self_attention(in_features, q_proj_weight, k_proj_weight, v_proj_weight, o_proj_weight, num_heads)


def run_multihead_self_attention_with_rope(
    d_model: int,
    num_heads: int,
    max_seq_len: int,
    theta: float,
    q_proj_weight: Tensor,
    k_proj_weight: Tensor,
    v_proj_weight: Tensor,
    o_proj_weight: Tensor,
    in_features: Tensor,
    token_positions: Tensor | None = None,
) -> Tensor:
    return multihead_self_attention(
        in_features, q_proj_weight, k_proj_weight, v_proj_weight, o_proj_weight, num_heads, theta, token_positions
    )


def run_rope(d_k: int, theta: float, max_seq_len: int, in_query_or_key: Tensor, token_positions: Tensor) -> Tensor:
    return rope(in_query_or_key, theta, token_positions)


def run_transformer_block(
    d_model: int,
    num_heads: int,
    d_ff: int,
    max_seq_len: int,
    theta: float,
    weights: dict[str, Tensor],
    in_features: Tensor,
) -> Tensor:
    return transformer_block(in_features, weights, num_heads, theta)


def run_transformer_lm(
    vocab_size: int,
    context_length: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    rope_theta: float,
    weights: dict[str, Tensor],
    in_indices: Tensor,
) -> Tensor:
    model = OracleTransformerLM(vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta)
    model.to(device=in_indices.device, dtype=weights["ln_final.weight"].dtype)
    model.load_state_dict(weights)
    return model(in_indices)


def run_rmsnorm(d_model: int, eps: float, weights: Tensor, in_features: Tensor) -> Tensor:
    return rmsnorm(in_features, weights, eps)


def run_silu(in_features: Tensor) -> Tensor:
    return F.silu(in_features)


def run_softmax(in_features: Tensor, dim: int) -> Tensor:
    return F.softmax(in_features, dim=dim)


__all__ = [
    "BF16_EPS",
    "BLOCK",
    "FLOAT32_EPS",
    "LM",
    "MHA",
    "RMSNORM_CASES",
    "ROPE_CASES",
    "SNAPSHOTS",
    "SOFTMAX_DIMS",
    "OracleTransformerLM",
    "assert_close",
    "lm_weights",
    "multihead_self_attention",
    "rmsnorm",
    "rope",
    "rope_rotation",
    "swiglu",
    "transformer_block",
    "transformer_lm",
    "run_linear",
    "run_embedding",
    "run_swiglu",
    "run_scaled_dot_product_attention",
    "run_multihead_self_attention",
    "run_multihead_self_attention_with_rope",
    "run_rope",
    "run_transformer_block",
    "run_transformer_lm",
    "run_rmsnorm",
    "run_silu",
    "run_softmax",
]
