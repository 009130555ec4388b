"""The only door between the grading tests and an implementation.

Each adapter builds the implementation's module (or calls its function), loads the given weights and
runs it: no logic lives here. Graders swap this file together with `cs336_basics/`; the names, parameter
names and meanings follow the CS336 (Spring 2025) Assignment 1 contract (see docs/INTERFACE.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import IO, Any, BinaryIO

import numpy.typing as npt
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

import cs336_basics as impl


def run_linear(
    d_in: int,
    d_out: int,
    weights: Float[Tensor, " d_out d_in"],
    in_features: Float[Tensor, " ... d_in"],
) -> Float[Tensor, " ... d_out"]:
    """Apply a bias-free linear layer `y = x W^T` with the given weights.

    Args:
        d_in: size of the input dimension.
        d_out: size of the output dimension.
        weights: the weight matrix, stored (d_out, d_in).
        in_features: input tensor (..., d_in).

    Returns:
        The output (..., d_out). Square weights (d_in == d_out) are graded too: there `x @ W` runs without a
        shape error but is wrong. For bf16 inputs a bf16 or a float32 result is accepted (bf16 is advisory),
        within 2^-6 relative of the exact answer (2-4 bf16 ulps of the result: any correct bf16 arithmetic).
    """
    layer = impl.Linear(d_in, d_out, device=weights.device, dtype=weights.dtype)
    layer.load_state_dict({"weight": weights})
    return layer(in_features)


def run_embedding(
    vocab_size: int,
    d_model: int,
    weights: Float[Tensor, " vocab_size d_model"],
    token_ids: Int[Tensor, " ..."],
) -> Float[Tensor, " ... d_model"]:
    """Look up the embedding vectors of `token_ids` in the table `weights`.

    Args:
        vocab_size: number of rows of the table.
        d_model: size of each embedding vector.
        weights: the embedding table (vocab_size, d_model).
        token_ids: integer token ids of any shape.

    Returns:
        The embeddings (..., d_model).
    """
    layer = impl.Embedding(vocab_size, d_model, device=weights.device, dtype=weights.dtype)
    layer.load_state_dict({"weight": weights})
    return layer(token_ids)


def run_swiglu(
    d_model: int,
    d_ff: int,
    w1_weight: Float[Tensor, " d_ff d_model"],
    w2_weight: Float[Tensor, " d_model d_ff"],
    w3_weight: Float[Tensor, " d_ff d_model"],
    in_features: Float[Tensor, " ... d_model"],
) -> Float[Tensor, " ... d_model"]:
    """Run the SwiGLU feed-forward network `W2(SiLU(W1 x) * W3 x)` with the given weights.

    Args:
        d_model: model dimension (input and output size).
        d_ff: inner dimension.
        w1_weight, w2_weight, w3_weight: the three projection weights, stored (d_out, d_in).
        in_features: input tensor (..., d_model).

    Returns:
        The output (..., d_model).
    """
    ffn = impl.SwiGLU(d_model, d_ff, device=w1_weight.device, dtype=w1_weight.dtype)
    ffn.load_state_dict({"w1.weight": w1_weight, "w2.weight": w2_weight, "w3.weight": w3_weight})
    return ffn(in_features)


def run_scaled_dot_product_attention(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    V: Float[Tensor, " ... keys d_v"],
    mask: Bool[Tensor, " ... queries keys"] | None = None,
) -> Float[Tensor, " ... queries d_v"]:
    """Scaled dot-product attention `softmax(Q K^T / sqrt(d_k)) V`.

    Args:
        Q: queries (..., queries, d_k).
        K: keys (..., keys, d_k).
        V: values (..., keys, d_v).
        mask: optional boolean mask broadcastable to (..., queries, keys); True means "may attend".

    Returns:
        The attention output (..., queries, d_v). For bf16 inputs a bf16 or a float32 result is accepted,
        within 2^-6 relative (bf16 scores are rounded before exp()).
    """
    return impl.scaled_dot_product_attention(Q, K, V, mask)


def run_multihead_self_attention(
    d_model: int,
    num_heads: int,
    q_proj_weight: Float[Tensor, " d_k d_in"],
    k_proj_weight: Float[Tensor, " d_k d_in"],
    v_proj_weight: Float[Tensor, " d_v d_in"],
    o_proj_weight: Float[Tensor, " d_model d_v"],
    in_features: Float[Tensor, " ... sequence_length d_in"],
) -> Float[Tensor, " ... sequence_length d_out"]:
    """Causal multi-head self-attention without positional information.

    Args:
        d_model: model dimension.
        num_heads: number of heads; each head has d_model // num_heads dimensions.
        q_proj_weight, k_proj_weight, v_proj_weight: projection weights (num_heads * d_k, d_model), rows
            ordered head by head.
        o_proj_weight: output projection weight (d_model, num_heads * d_v).
        in_features: input (..., sequence_length, d_model).

    Returns:
        The output (..., sequence_length, d_model).
    """
    attn = impl.MultiHeadSelfAttention(d_model, num_heads, device=in_features.device, dtype=q_proj_weight.dtype)
    attn.load_state_dict(
        {
            "q_proj.weight": q_proj_weight,
            "k_proj.weight": k_proj_weight,
            "v_proj.weight": v_proj_weight,
            "output_proj.weight": o_proj_weight,
        }
    )
    return attn(in_features)


def run_multihead_self_attention_with_rope(
    d_model: int,
    num_heads: int,
    max_seq_len: int,
    theta: float,
    q_proj_weight: Float[Tensor, " d_k d_in"],
    k_proj_weight: Float[Tensor, " d_k d_in"],
    v_proj_weight: Float[Tensor, " d_v d_in"],
    o_proj_weight: Float[Tensor, " d_model d_v"],
    in_features: Float[Tensor, " ... sequence_length d_in"],
    token_positions: Int[Tensor, " ... sequence_length"] | None = None,
) -> Float[Tensor, " ... sequence_length d_out"]:
    """Causal multi-head self-attention with RoPE applied to the queries and keys of every head.

    Args:
        d_model: model dimension.
        num_heads: number of heads.
        max_seq_len: longest sequence the RoPE cache must cover.
        theta: the RoPE base Θ.
        q_proj_weight, k_proj_weight, v_proj_weight, o_proj_weight: as in `run_multihead_self_attention`.
        in_features: input (..., sequence_length, d_model).
        token_positions: optional positions (..., sequence_length); defaults to 0 .. sequence_length - 1.

    Returns:
        The output (..., sequence_length, d_model).
    """
    rope = impl.RotaryPositionalEmbedding(theta, d_model // num_heads, max_seq_len, device=in_features.device)
    attn = impl.MultiHeadSelfAttention(
        d_model, num_heads, rope=rope, device=in_features.device, dtype=q_proj_weight.dtype
    )
    attn.load_state_dict(
        {
            "q_proj.weight": q_proj_weight,
            "k_proj.weight": k_proj_weight,
            "v_proj.weight": v_proj_weight,
            "output_proj.weight": o_proj_weight,
        }
    )
    return attn(in_features, token_positions=token_positions)


def run_rope(
    d_k: int,
    theta: float,
    max_seq_len: int,
    in_query_or_key: Float[Tensor, " ... sequence_length d_k"],
    token_positions: Int[Tensor, " ... sequence_length"],
) -> Float[Tensor, " ... sequence_length d_k"]:
    """Rotate adjacent pairs of the last dimension by RoPE angles for the given positions.

    Args:
        d_k: size of the last dimension (even).
        theta: the RoPE base Θ.
        max_seq_len: longest sequence the precomputed cache must cover.
        in_query_or_key: the queries or keys (..., sequence_length, d_k).
        token_positions: positions (..., sequence_length).

    Returns:
        The rotated tensor, same shape. For bf16 input a bf16 or a float32 result is accepted (float32
        cos/sin buffers promote it; bf16 out is advisory), within 2^-6 relative (2-4 bf16 ulps).
    """
    rope = impl.RotaryPositionalEmbedding(theta, d_k, max_seq_len, device=in_query_or_key.device)
    return rope(in_query_or_key, token_positions)


def run_transformer_block(
    d_model: int,
    num_heads: int,
    d_ff: int,
    max_seq_len: int,
    theta: float,
    weights: dict[str, Tensor],
    in_features: Float[Tensor, " batch sequence_length d_model"],
) -> Float[Tensor, " batch sequence_length d_model"]:
    """Run one pre-norm Transformer block (RMSNorm, causal RoPE attention, RMSNorm, SwiGLU).

    Args:
        d_model, num_heads, d_ff: block sizes.
        max_seq_len: longest sequence the RoPE cache must cover.
        theta: the RoPE base Θ.
        weights: state dict with keys `attn.q_proj.weight`, `attn.k_proj.weight`, `attn.v_proj.weight`,
            `attn.output_proj.weight`, `ln1.weight`, `ffn.w1.weight`, `ffn.w2.weight`, `ffn.w3.weight`,
            `ln2.weight`.
        in_features: input (batch, sequence_length, d_model).

    Returns:
        The output (batch, sequence_length, d_model).
    """
    block = impl.TransformerBlock(
        d_model=d_model,
        num_heads=num_heads,
        d_ff=d_ff,
        max_seq_len=max_seq_len,
        theta=theta,
        device=in_features.device,
        dtype=weights["ln1.weight"].dtype,
    )
    block.load_state_dict(weights)
    return block(in_features)


def run_transformer_lm(
    vocab_size: int,
    context_length: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    rope_theta: float,
    weights: dict[str, Tensor],
    in_indices: Int[Tensor, " batch_size sequence_length"],
) -> Float[Tensor, " batch_size sequence_length vocab_size"]:
    """Run the Transformer LM on token ids and return unnormalised next-token logits.

    Args:
        vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta: the architecture.
        weights: state dict with keys `token_embeddings.weight`, `layers.{i}.<block key>` (see
            `run_transformer_block`), `ln_final.weight` and `lm_head.weight`.
        in_indices: token ids (batch_size, sequence_length), sequence_length <= context_length.

    Returns:
        Logits (batch_size, sequence_length, vocab_size). Graded in float32; a bf16 forward (bf16 weights,
        bf16 logits) is advisory, worth 0 points.
    """
    config = impl.ModelConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        d_ff=d_ff,
        rope_theta=rope_theta,
    )
    model = impl.TransformerLM(config, device=in_indices.device, dtype=weights["ln_final.weight"].dtype)
    model.load_state_dict(weights)
    return model(in_indices)


def run_rmsnorm(
    d_model: int,
    eps: float,
    weights: Float[Tensor, " d_model"],
    in_features: Float[Tensor, " ... d_model"],
) -> Float[Tensor, " ... d_model"]:
    """RMSNorm `x / sqrt(mean(x²) + eps) * g`, computed in float32 and returned in the input dtype.

    Args:
        d_model: size of the normalised dimension.
        eps: added to the mean square inside the square root.
        weights: the gain g (d_model,).
        in_features: input (..., d_model).

    Returns:
        The normalised tensor, same shape and dtype as `in_features`. bf16 results are checked within
        2^-6 relative (2-4 bf16 ulps of the result: a gain multiplied after the cast to bf16 is correct).
    """
    norm = impl.RMSNorm(d_model, eps=eps, device=weights.device, dtype=weights.dtype)
    norm.load_state_dict({"weight": weights})
    return norm(in_features)


def run_silu(in_features: Float[Tensor, " ..."]) -> Float[Tensor, " ..."]:
    """SiLU `x * sigmoid(x)`, elementwise.

    float32 inputs reach ±1000: e^x overflows float32 above x ≈ 88.7, so `x·e^x/(1 + e^x)` gives NaN there;
    `x * sigmoid(x)` and `x / (1 + exp(-x))` stay finite. For bf16 input a bf16 or a float32 result is
    accepted, within 2^-6 relative of the exact answer (2-4 bf16 ulps of the result), on every bf16 number
    in [-12, 12]: each correct formula computed in bf16 arithmetic fits (x·(1/(1+exp(-x))) needs 1.23·2^-7).
    """
    return impl.silu(in_features)


def run_get_batch(dataset: npt.NDArray, batch_size: int, context_length: int, device: str) -> tuple[Tensor, Tensor]:
    """Sample language-modelling inputs and targets from a 1-d array of token ids.

    Args:
        dataset: 1-d numpy array of integer token ids (possibly a np.memmap).
        batch_size: number of sequences.
        context_length: length of each sequence.
        device: torch device string, e.g. 'cpu' or 'cuda:0'. Pass it to torch unchanged: 'cuda:1' is GPU 1,
            while `torch.device('cuda:1').type` ('cuda') is the current GPU. Graded without a GPU by recording
            where torch is asked to place tensors (`torch.tensor(..., device=)`, `.to(device)`, `.cuda(i)`...).

    Returns:
        (x, y), both int64 (batch_size, context_length) on `device`, with y = x shifted by one token.

    Memory (graded): only the sampled windows are read. On a 512 MB np.memmap the resident memory may grow
    by less than 128 MB (the datasets of the assignment are larger than the RAM of many machines, so
    `np.asarray(dataset)` or `torch.from_numpy(dataset[:])` of the whole array is not an option).

    Raises:
        ValueError or RuntimeError: the dataset has fewer than context_length + 1 tokens (what numpy,
            Python or torch raise for an empty range of starts).
        RuntimeError or AssertionError: the device does not exist or is unavailable (what torch itself
            raises: RuntimeError, or AssertionError from a torch built without CUDA).
    """
    return impl.get_batch(dataset, batch_size, context_length, device)


def run_softmax(in_features: Float[Tensor, " ..."], dim: int) -> Float[Tensor, " ..."]:
    """Numerically stable softmax of `in_features` over dimension `dim`.

    Values are checked to float32 accuracy (also for float64 input); no output dtype is required.
    """
    return impl.softmax(in_features, dim)


def run_cross_entropy(
    inputs: Float[Tensor, " batch_size vocab_size"], targets: Int[Tensor, " batch_size"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy of `targets` under the logits `inputs`, averaged over all leading positions.

    Args:
        inputs: unnormalised logits (..., vocab_size).
        targets: correct class indices (...).

    Returns:
        A scalar tensor.
    """
    return impl.cross_entropy(inputs, targets)


def run_gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
    """Clip the gradients of `parameters` in place so that their global L2 norm is at most `max_l2_norm`.

    Parameters without a gradient are skipped; the scale is max_l2_norm / (norm + 1e-6) (eps = 1e-6,
    graded: at a total norm of 1e-4 the eps changes the scale by 1%).
    """
    impl.gradient_clipping(parameters, max_l2_norm)


def get_adamw_cls() -> Any:
    """Return the AdamW optimizer class (a `torch.optim.Optimizer` subclass)."""
    return impl.AdamW


def run_get_lr_cosine_schedule(
    it: int,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    cosine_cycle_iters: int,
) -> float:
    """Learning rate at iteration `it` of a cosine schedule with linear warm-up.

    Args:
        it: the iteration.
        max_learning_rate: α_max, reached at the end of warm-up.
        min_learning_rate: α_min, the floor after the cosine cycle.
        warmup_iters: T_w, number of warm-up iterations.
        cosine_cycle_iters: T_c, the iteration where the cosine cycle ends.

    Returns:
        The learning rate.
    """
    return impl.get_lr_cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters)


def run_save_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    out: str | os.PathLike | BinaryIO | IO[bytes],
) -> None:
    """Serialise the model, the optimizer and the iteration number to `out` (a path or a binary file).

    `optimizer` is any `torch.optim.Optimizer` (the tests use torch's AdamW, so this is graded on its own).
    """
    impl.save_checkpoint(model, optimizer, iteration, out)


def run_load_checkpoint(
    src: str | os.PathLike | BinaryIO | IO[bytes],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> int:
    """Restore the model and the optimizer from `src` and return the saved iteration number."""
    return impl.load_checkpoint(src, model, optimizer)


def get_tokenizer(
    vocab: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    special_tokens: list[str] | None = None,
) -> Any:
    """Build a byte-level BPE tokenizer from a vocabulary, its merges and optional special tokens.

    Args:
        vocab: token id -> token bytes.
        merges: the merges in the order they were learned.
        special_tokens: strings that are never split; they are added to the vocabulary when missing.

    Returns:
        An object with `encode(str) -> list[int]`, `encode_iterable(Iterable[str]) -> Iterator[int]` and
        `decode(list[int]) -> str`. Ids are checked against tiktoken built from the same vocabulary and
        merges; of overlapping special tokens the longest wins; bytes that do not form valid UTF-8 decode
        to U+FFFD. `encode_iterable` gives the ids of `encode` of the joined text for any chunking
        (a whitespace run or a special token cut by a chunk's edge included), and streams: its peak memory
        must not grow with the input (8x the input may grow the peak by at most 2 MiB). Two tokenizers
        share no state (a cache belongs to the instance, not to the class).
    """
    return impl.Tokenizer(vocab, merges, special_tokens)


def run_train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str],
    **kwargs: Any,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on the text file `input_path`.

    Args:
        input_path: path to a UTF-8 text file.
        vocab_size: final vocabulary size, including the 256 bytes and the special tokens.
        special_tokens: strings added to the vocabulary that never take part in merges.

    Returns:
        (vocab, merges): token id -> bytes, and the merges in the order they were learned. The ids are
        exactly 0 .. len(vocab)-1 (ids index the rows of an embedding table), also when training stops
        early because no pair is left: then the vocabulary is smaller than `vocab_size`, still dense.

    Speed (graded): merges update the pair counts incrementally. 100 extra merges on a 0.8 MB corpus must
    cost less than 50 naive recounts of every pair of every word, timed in the same test (the upstream
    suite's form of this: under 1.5 s on its corpus.en with vocab_size 500).
    """
    return impl.train_bpe(input_path, vocab_size, special_tokens, **kwargs)
