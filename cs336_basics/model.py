"""The Transformer language model: its configuration, the Transformer block and the full LM.

    token ids ─ Embedding ─ [TransformerBlock] × num_layers ─ RMSNorm ─ Linear (lm_head) ─ logits

A pre-norm block is two residual lines, `x + attn(ln1(x))` then `x + ffn(ln2(x))`. The switches of
`ModelConfig` give the ablations of the handout: no RMSNorm, post-norm, no position embedding (NoPE) and
an ungated SiLU feed-forward network; `ModelConfig.init` picks the initialisation of every Linear
(`cs336_basics/init.py`, default: the handout's). The modern recipe's switches (all off by default):

    qk_norm          RMSNorm on each head's queries and keys, before RoPE (`attention.py`)
    ffn_type=relu2   the feed-forward network `W2 ReLU(W1 x)²` (`layers.py`)
    tie_embeddings   lm_head.weight IS token_embeddings.weight (one Parameter)
    logit_softcap    c > 0: logits = c tanh(logits / c), in `forward`, so that the loss, the evaluation and
                     the generation all see the same capped logits
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
from cs336_basics.functional import soft_cap
from cs336_basics.init import LINEAR_SCHEMES, InitScheme, linear_init, tied_embedding_
from cs336_basics.layers import Embedding, Linear, ReLU2FeedForward, RMSNorm, SiLUFeedForward, SwiGLU, default_d_ff
from cs336_basics.rope import RotaryPositionalEmbedding


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the architecture of a `TransformerLM`.

    `d_ff=None` picks the default of the feed-forward type: `default_d_ff(d_model)` (≈ 8/3 · d_model) for
    SwiGLU, 4 · d_model for the 2-matrix SiLU and ReLU² networks (equal parameter counts). After construction `d_ff` is
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
    ffn_type: Literal["swiglu", "silu", "relu2"] = "swiglu"
    # Initialisation of every Linear (cs336_basics/init.py); "assignment" is the handout's.
    init: InitScheme = "assignment"
    # The modern recipe's switches (see the module docstring).
    qk_norm: bool = False
    tie_embeddings: bool = False
    logit_softcap: float = 0.0  # 0 = off

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
            "ffn_type": ("swiglu", "silu", "relu2"),
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
        self._check_recipe_switches()

    def _check_recipe_switches(self) -> None:
        for name in ("qk_norm", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        cap = self.logit_softcap
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 <= cap < float("inf"):
            raise ValueError(f"ModelConfig.logit_softcap must be a finite number >= 0 (0 = off), got {cap!r}")

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
        ffn_type: Literal["swiglu", "silu", "relu2"] = "swiglu",
        qk_norm: bool = False,
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
        self.attn = MultiHeadSelfAttention(
            d_model, num_heads, rope=rope, qk_norm=qk_norm, eps=eps, device=device, dtype=dtype
        )
        ffn_classes = {"swiglu": SwiGLU, "silu": SiLUFeedForward, "relu2": ReLU2FeedForward}
        if ffn_type not in ffn_classes:
            raise ValueError(f"ffn_type must be one of {tuple(ffn_classes)}, got {ffn_type!r}")
        self.ffn: nn.Module = ffn_classes[ffn_type](d_model, d_ff, device=device, dtype=dtype)
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
                qk_norm=c.qk_norm,
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
        if c.tie_embeddings:
            self._tie_embeddings()
        # NOTE: every layer has already drawn the handout's initialisation; the default must not draw again,
        # or the same seed would give other weights than before (demo, snapshots and tests rely on them).
        if c.init != "assignment":
            self.reset_parameters()
        self.use_fused_kernels(fused_kernels)

    def _tie_embeddings(self) -> None:
        """Make `lm_head.weight` the token-embedding Parameter itself (not a copy), drawn by `tied_embedding_`.

        One Parameter in two places: its gradient sums both uses, the optimizer steps it once. Its
        initialisation is N(0, 1/d_model), not the embedding's N(0, 1): as the head's matrix, N(0, 1) rows would
        make the untrained logits about sqrt(d_model) times larger than an untied head's (measured: first loss
        408 nats at d_model 512, V 4096). The state dict still lists both keys, sharing one storage (see
        `load_state_dict`).
        """
        self.lm_head.weight = self.token_embeddings.weight
        tied_embedding_(self.token_embeddings.weight)

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
            if module is self.lm_head and self.config.tie_embeddings:
                continue  # the shared matrix is drawn once, below
            if isinstance(module, Linear) and scheme != "assignment":
                linear_init(scheme)(module.weight)
            elif scheme == "assignment" or isinstance(module, (Embedding, RMSNorm)):
                module.reset_parameters()
        if self.config.tie_embeddings:
            tied_embedding_(self.token_embeddings.weight)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of trainable parameters, a tied matrix once; `exclude_embeddings` leaves out the
        token-embedding table (the convention of scaling-law papers; an untied `lm_head` is counted, a tied one
        goes with the table)."""
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
        logits = self.lm_head(self.ln_final(x))  # (batch, seq, vocab_size)
        if self.config.logit_softcap > 0:
            logits = soft_cap(logits, self.config.logit_softcap)
        return logits

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
        """`nn.Module.load_state_dict`, also accepting keys prefixed `_orig_mod.` by `torch.compile`.

        A tied model's state dict holds both `token_embeddings.weight` and `lm_head.weight` (torch lists a shared
        Parameter under every name; `torch.save` stores the one storage once). Loading one needs the two to be
        equal: two different matrices (an untied model's) would otherwise be copied into the same Parameter,
        the last one silently winning.
        """
        state = strip_compile_prefix(dict(state_dict))
        if self.config.tie_embeddings:
            _check_tied(state)
        result = super().load_state_dict(state, strict=strict, assign=assign)
        if self.config.tie_embeddings:  # `assign=True` puts a new Parameter under each key: one again
            self.lm_head.weight = self.token_embeddings.weight
        return result


def _check_tied(state: Mapping[str, Any]) -> None:
    embedding, head = state.get("token_embeddings.weight"), state.get("lm_head.weight")
    if embedding is None or head is None or embedding is head:
        return
    if embedding.shape != head.shape or not torch.equal(embedding, head.to(embedding.device)):
        raise ValueError(
            "this model ties lm_head.weight to token_embeddings.weight; expected equal matrices under the two "
            "keys, got different ones (an untied model's weights? build it with tie_embeddings=False)"
        )
