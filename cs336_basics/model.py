"""The Transformer language model: its configuration, the Transformer block and the full LM.

    token ids ─ Embedding ─ [TransformerBlock] × num_layers ─ RMSNorm ─ Linear (lm_head) ─ logits

A pre-norm block is two residual lines, `x + attn(ln1(x))` then `x + ffn(ln2(x))`. The switches of
`ModelConfig` give the ablations of the handout: no RMSNorm, post-norm, no position embedding (NoPE) and
an ungated SiLU feed-forward network; `ModelConfig.init` picks the initialisation of every Linear
(`cs336_basics/init.py`, default: the handout's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from cs336_basics.attention import KVCache, MultiHeadSelfAttention
from cs336_basics.checkpoint import strip_compile_prefix
from cs336_basics.init import LINEAR_SCHEMES, InitScheme, linear_init
from cs336_basics.layers import Embedding, Linear, RMSNorm, SiLUFeedForward, SwiGLU, default_d_ff
from cs336_basics.rope import RotaryPositionalEmbedding


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the architecture of a `TransformerLM`.

    `d_ff=None` picks the default of the feed-forward type: `default_d_ff(d_model)` (≈ 8/3 · d_model) for
    SwiGLU, 4 · d_model for the plain SiLU network (equal parameter counts). After construction `d_ff` is
    always an int. NOTE: `dataclasses.replace(config, d_model=...)` keeps that resolved value; pass
    `d_ff=None` as well to re-derive it.
    """

    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int | None = None
    rope_theta: float = 10000.0
    eps: float = 1e-5
    # Ablation switches (handout section 7.3).
    use_rmsnorm: bool = True
    norm_position: Literal["pre", "post"] = "pre"
    position_embedding: Literal["rope", "none"] = "rope"
    ffn_type: Literal["swiglu", "silu"] = "swiglu"
    # Initialisation of every Linear (cs336_basics/init.py); "assignment" is the handout's.
    init: InitScheme = "assignment"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"d_model must be divisible by num_heads, got d_model={self.d_model}, num_heads={self.num_heads}"
            )
        choices = {
            "norm_position": ("pre", "post"),
            "position_embedding": ("rope", "none"),
            "ffn_type": ("swiglu", "silu"),
            "init": tuple(LINEAR_SCHEMES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.position_embedding == "rope" and (self.d_model // self.num_heads) % 2 != 0:
            raise ValueError(f"RoPE needs an even head size, got d_model/num_heads = {self.d_model // self.num_heads}")
        if self.d_ff is None:
            d_ff = default_d_ff(self.d_model) if self.ffn_type == "swiglu" else 4 * self.d_model
            object.__setattr__(self, "d_ff", d_ff)
        elif isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0:
            raise ValueError(f"ModelConfig.d_ff must be a positive int or None, got {self.d_ff!r}")
        if self.rope_theta <= 0 or self.eps <= 0:
            raise ValueError(f"rope_theta and eps must be positive, got {self.rope_theta} and {self.eps}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `ModelConfig.from_dict(c.to_dict()) == c`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Build a config from a dict, rejecting unknown keys (a typo must not silently become a default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; expected a subset of {sorted(known)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"ModelConfig is missing required keys {missing}")
        return cls(**d)


class TransformerBlock(nn.Module):
    """One Transformer block: causal self-attention then a feed-forward network, each in a residual branch.

    Pre-norm (default): `x + attn(ln1(x))`, then `x + ffn(ln2(x))`. Post-norm (the original Transformer):
    `ln1(x + attn(x))`, then `ln2(x + ffn(x))`. `rope` may be shared with the other blocks; when it is not
    given and `position_embedding="rope"`, the block makes its own from `max_seq_len` and `theta`.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int | None,
        max_seq_len: int,
        theta: float,
        *,
        eps: float = 1e-5,
        use_rmsnorm: bool = True,
        norm_position: Literal["pre", "post"] = "pre",
        position_embedding: Literal["rope", "none"] = "rope",
        ffn_type: Literal["swiglu", "silu"] = "swiglu",
        rope: RotaryPositionalEmbedding | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")
        if position_embedding == "rope" and rope is None:
            rope = RotaryPositionalEmbedding(theta, d_model // num_heads, max_seq_len, device=device)
        elif position_embedding == "none":
            rope = None
        elif position_embedding != "rope":
            raise ValueError(f"position_embedding must be 'rope' or 'none', got {position_embedding!r}")
        self.pre_norm = norm_position == "pre"
        self.attn = MultiHeadSelfAttention(d_model, num_heads, rope=rope, device=device, dtype=dtype)
        if ffn_type == "swiglu":
            self.ffn: nn.Module = SwiGLU(d_model, d_ff, device=device, dtype=dtype)
        elif ffn_type == "silu":
            self.ffn = SiLUFeedForward(d_model, d_ff, device=device, dtype=dtype)
        else:
            raise ValueError(f"ffn_type must be 'swiglu' or 'silu', got {ffn_type!r}")
        make_norm = (lambda: RMSNorm(d_model, eps, device=device, dtype=dtype)) if use_rmsnorm else nn.Identity
        self.ln1: nn.Module = make_norm()
        self.ln2: nn.Module = make_norm()

    def forward(
        self,
        x: Float[Tensor, " batch seq d_model"],
        token_positions: Int[Tensor, " batch seq"] | None = None,
        *,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> Float[Tensor, " batch seq d_model"]:
        def attn(h: Tensor) -> Tensor:
            return self.attn(h, token_positions, kv_cache=kv_cache, layer=layer)

        if self.pre_norm:
            x = x + attn(self.ln1(x))
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + attn(x))
        return self.ln2(x + self.ffn(x))


class TransformerLM(nn.Module):
    """A decoder-only Transformer language model returning unnormalised next-token logits.

    The layers run in their textbook form, differentiated by autograd; `fused_kernels=True` switches the
    attention to the hand-written kernels of `cs336_basics/fast.py` (see `use_fused_kernels`).

    >>> model = TransformerLM(ModelConfig(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=2))
    >>> model(torch.tensor([[1, 2, 3]])).shape
    torch.Size([1, 3, 10])
    """

    def __init__(
        self,
        config: ModelConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        fused_kernels: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"TransformerLM expects a ModelConfig, got {type(config).__name__}")
        self.config = config
        c = config
        # One RoPE table for all layers (non-persistent buffers: not in the state dict).
        self.rope = (
            RotaryPositionalEmbedding(c.rope_theta, c.head_dim, c.context_length, device=device)
            if c.position_embedding == "rope"
            else None
        )
        self.token_embeddings = Embedding(c.vocab_size, c.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(
                c.d_model,
                c.num_heads,
                c.d_ff,
                c.context_length,
                c.rope_theta,
                eps=c.eps,
                use_rmsnorm=c.use_rmsnorm,
                norm_position=c.norm_position,
                position_embedding=c.position_embedding,
                ffn_type=c.ffn_type,
                rope=self.rope,
                device=device,
                dtype=dtype,
            )
            for _ in range(c.num_layers)
        )
        # A post-norm stack already ends in a norm, so only the pre-norm model has a final one.
        self.ln_final: nn.Module = (
            RMSNorm(c.d_model, c.eps, device=device, dtype=dtype)
            if c.use_rmsnorm and c.norm_position == "pre"
            else nn.Identity()
        )
        self.lm_head = Linear(c.d_model, c.vocab_size, device=device, dtype=dtype)
        # NOTE: every layer has already drawn the handout's initialisation; the default must not draw again,
        # or the same seed would give other weights than before (demo, snapshots and tests rely on them).
        if c.init != "assignment":
            self.reset_parameters()
        self.use_fused_kernels(fused_kernels)

    def use_fused_kernels(self, enabled: bool = True) -> TransformerLM:
        """Switch every layer that has one (attention) to (or back from) its kernel in `cs336_basics/fast.py`:
        the same function, a faster eager training step. The weights and the state dict do not change."""
        self.fused_kernels = enabled
        for module in self.modules():
            if hasattr(module, "fused_kernels"):
                module.fused_kernels = enabled
        return self

    def reset_parameters(self) -> None:
        """Re-initialise every weight: each Linear by `config.init`, embeddings and gains as in the handout."""
        scheme = self.config.init
        for module in self.modules():
            if module is self or not hasattr(module, "reset_parameters"):
                continue
            if isinstance(module, Linear) and scheme != "assignment":
                linear_init(scheme)(module.weight)
            elif scheme == "assignment" or isinstance(module, (Embedding, RMSNorm)):
                module.reset_parameters()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of trainable parameters; `exclude_embeddings` leaves out the token-embedding table
        (the convention of scaling-law papers; the untied `lm_head` is counted)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.token_embeddings.weight.numel()
        return total

    def new_kv_cache(self, batch_size: int) -> KVCache:
        """An empty cache for incremental decoding of `batch_size` sequences up to `context_length` tokens."""
        c, weight = self.config, self.lm_head.weight
        shape = (c.num_layers, batch_size, c.num_heads, c.head_dim, c.context_length)
        return KVCache(*shape, device=weight.device, dtype=weight.dtype)

    def forward(
        self, in_indices: Int[Tensor, " batch seq"], kv_cache: KVCache | None = None
    ) -> Float[Tensor, " batch seq vocab_size"]:
        """Logits for every position of `in_indices`.

        With `kv_cache`, `in_indices` holds only the new tokens: they take the positions after those already
        cached, attend to them, and are appended to the cache.
        """
        self._check_input(in_indices, 0 if kv_cache is None else kv_cache.length)
        x = self.token_embeddings(in_indices)  # (batch, seq, d_model)
        for i, block in enumerate(self.layers):
            x = block(x, kv_cache=kv_cache, layer=i)
        return self.lm_head(self.ln_final(x))  # (batch, seq, vocab_size)

    def _check_input(self, in_indices: Tensor, start: int) -> None:
        if in_indices.is_floating_point() or in_indices.is_complex() or in_indices.dtype == torch.bool:
            raise TypeError(f"token ids must be an integer tensor, got dtype {in_indices.dtype}")
        seq_len = in_indices.shape[-1] if in_indices.ndim else 0
        if start + seq_len > self.config.context_length:
            raise ValueError(
                f"sequence of {start + seq_len} tokens ({start} cached + {seq_len} new) exceeds "
                f"context_length={self.config.context_length}"
            )
        # NOTE: min/max read two numbers back from the device (a sync on GPU); torch.compile skips the check
        # and an out-of-range id then trips the embedding's own index check.
        if not torch.compiler.is_compiling() and in_indices.numel() > 0:
            low, high = int(in_indices.min()), int(in_indices.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"token ids must lie in [0, {self.config.vocab_size}) (vocab_size), got ids in [{low}, {high}]"
                )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """`nn.Module.load_state_dict`, also accepting keys prefixed `_orig_mod.` by `torch.compile`."""
        return super().load_state_dict(strip_compile_prefix(dict(state_dict)), strict=strict, assign=assign)
