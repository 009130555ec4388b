"""cs336_basics: the assignment, a Transformer language model built from scratch in PyTorch.

This package is exactly what a student writes and what `tests/adapters.py` calls. Everything public is
importable from the top level, e.g. ``from cs336_basics import TransformerLM, ModelConfig, AdamW, Tokenizer``.
The modules, in reading order: `functional` (softmax, SiLU), `layers`, `rope`, `attention`, `model`, `loss`,
`optimizer`, `muon`, `data`, `checkpoint`, the tokenizer (`pretokenize`, `bpe_trainer`, `tokenizer`) and `decoding`.
`fast` holds the optional hand-written kernels that `TransformerLM(..., fused_kernels=True)` switches on.
"""

from __future__ import annotations

from cs336_basics.attention import KVCache, MultiHeadSelfAttention, scaled_dot_product_attention
from cs336_basics.bpe_trainer import train_bpe
from cs336_basics.checkpoint import load_checkpoint, save_checkpoint
from cs336_basics.data import get_batch, iterate_batches
from cs336_basics.decoding import complete, generate
from cs336_basics.functional import silu, softmax
from cs336_basics.layers import Embedding, Linear, ReLU2FeedForward, RMSNorm, SiLUFeedForward, SwiGLU, default_d_ff
from cs336_basics.loss import cross_entropy, cross_entropy_with_z_loss, perplexity
from cs336_basics.model import ModelConfig, TransformerBlock, TransformerLM
from cs336_basics.muon import Muon, MuonAdamW, muon_param_groups
from cs336_basics.optimizer import AdamW, get_lr_cosine_schedule, gradient_clipping, wsd_lr_schedule
from cs336_basics.rope import RotaryPositionalEmbedding
from cs336_basics.tokenizer import Tokenizer

__version__ = "0.1.0"

# The keyword extensions of the handout's signatures that this package supports, declared for the `cs336`
# tools (cs336_lab/assignment.py): reproducible batches from a numpy Generator, parallel BPE training.
CS336_EXTRAS = ("get_batch.generator", "train_bpe.num_workers", "train_bpe.show_progress")

__all__ = [
    # neural-network parts
    "softmax",
    "silu",
    "Linear",
    "Embedding",
    "RMSNorm",
    "SwiGLU",
    "SiLUFeedForward",
    "ReLU2FeedForward",
    "default_d_ff",
    "RotaryPositionalEmbedding",
    "scaled_dot_product_attention",
    "MultiHeadSelfAttention",
    "KVCache",
    # the model
    "ModelConfig",
    "TransformerBlock",
    "TransformerLM",
    # training primitives
    "cross_entropy",
    "cross_entropy_with_z_loss",
    "perplexity",
    "AdamW",
    "Muon",
    "MuonAdamW",
    "muon_param_groups",
    "get_lr_cosine_schedule",
    "wsd_lr_schedule",
    "gradient_clipping",
    "get_batch",
    "iterate_batches",
    "save_checkpoint",
    "load_checkpoint",
    # tokenizer
    "train_bpe",
    "Tokenizer",
    # decoding
    "generate",
    "complete",
]
