"""`ModelSpec`: the one tools-side description of a Transformer LM, declared and validated here only.

The trainer's config nests it (`TrainConfig.model`, flags `--d-model`, `--eps`, ...), `cs336 accounting`
does its arithmetic on it, the demo and the grader's trusted LM take it. Its fields are the handout's
(`vocab_size`, `context_length`, `d_model`, `num_layers`, `num_heads`, `d_ff`, `rope_theta`), RMSNorm's `eps`,
and the ablation switches of the reference's `ModelConfig` (the student-side declaration in
`cs336_basics/model.py`, which cannot import this package). Field defaults are the handout's model, so a
spec whose extras (every field after `rope_theta`) hold their defaults is one that any package's
`TransformerLM(vocab_size=, ..., rope_theta=)` builds (`handout_fields`, `non_default_extras`).

Adding a switch: a field here (a `bool` is checked as one; a `Literal` gets a line in `_CHOICES`), and the
same field in the package's `ModelConfig` with the layer that reads it. Flags, config files, sweeps, checkpoints and the
"this package lacks the extra" error follow from the field.

This module never imports `cs336_basics`, `cs336_lab` or `cs336_grading`, nor torch.

    >>> spec = ModelSpec(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=2)
    >>> spec.d_ff, ModelSpec.from_dict(spec.to_dict()) == spec
    (64, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

#: The fields of the handout's `TransformerLM(...)` signature, in its order.
HANDOUT_FIELDS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta")

NormPosition = Literal["pre", "post"]
PositionEmbedding = Literal["rope", "none"]
FfnType = Literal["swiglu", "silu", "relu2"]
InitScheme = Literal["assignment", "xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform", "orthogonal"]
_CHOICES = {
    "norm_position": NormPosition,
    "position_embedding": PositionEmbedding,
    "ffn_type": FfnType,
    "init": InitScheme,
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def handout_d_ff(d_model: int) -> int:
    """The handout's SwiGLU width: about 8/3 d_model, a multiple of 64 (at least 64).

    >>> handout_d_ff(512), handout_d_ff(768), handout_d_ff(16)
    (1344, 2048, 64)
    """
    return max(64, 64 * round(8 * d_model / 3 / 64))


def implied_d_ff(d_model: int, ffn_type: str = "swiglu") -> int:
    """`d_ff` for `d_ff=None`: `handout_d_ff` for SwiGLU, 4 d_model for the 2-matrix networks (SiLU, ReLU²),
    so that all three hold about the same parameters.

    >>> implied_d_ff(512), implied_d_ff(512, "silu"), implied_d_ff(512, "relu2")
    (1344, 2048, 2048)
    """
    return handout_d_ff(d_model) if ffn_type == "swiglu" else 4 * d_model


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines the architecture of a Transformer LM (see the module docstring).

    `d_ff=None` resolves to `implied_d_ff(d_model, ffn_type)` at construction; afterwards `d_ff` is an int.
    NOTE: `dataclasses.replace(spec, d_model=...)` keeps the resolved `d_ff`; pass `d_ff=None` to re-derive it.
    """

    vocab_size: int = field(default=10_000, metadata=_help("tokens in the vocabulary (the tokenizer's size)"))
    context_length: int = field(default=256, metadata=_help("longest sequence the model reads, in tokens"))
    d_model: int = field(default=512, metadata=_help("width of the residual stream"))
    num_layers: int = field(default=4, metadata=_help("Transformer blocks"))
    num_heads: int = field(default=16, metadata=_help("attention heads per block; must divide d_model"))
    d_ff: int | None = field(default=None, metadata=_help("feed-forward width; none = about 8/3 d_model (SwiGLU)"))
    rope_theta: float = field(default=10_000.0, metadata=_help("RoPE base frequency"))
    eps: float = field(default=1e-5, metadata=_help("RMSNorm epsilon"))
    # Ablation switches (handout section 7.3) and the initialisation of every Linear.
    use_rmsnorm: bool = field(default=True, metadata=_help("ablation: --no-use-rmsnorm drops every RMSNorm"))
    norm_position: NormPosition = field(
        default="pre", metadata=_help("RMSNorm before (pre) or after (post) each sub-layer")
    )
    position_embedding: PositionEmbedding = field(
        default="rope", metadata=_help("position information: rotary (rope) or none (NoPE)")
    )
    ffn_type: FfnType = field(
        default="swiglu", metadata=_help("feed-forward network: gated SwiGLU, plain SiLU, or ReLU² (w2 relu(w1 x)²)")
    )
    init: InitScheme = field(default="assignment", metadata=_help("initialisation scheme of every Linear"))
    # The modern recipe's switches (issue 24); the defaults are the handout's model.
    qk_norm: bool = field(
        default=False, metadata=_help("RMSNorm (gain per head dimension) on each head's queries and keys, before RoPE")
    )
    tie_embeddings: bool = field(
        default=False, metadata=_help("the LM head reuses the token-embedding matrix (one parameter)")
    )
    logit_softcap: float = field(
        default=0.0, metadata=_help("c > 0 caps the output logits to c tanh(logits / c); 0 = off")
    )

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads"):
            _check_positive_int(name, getattr(self, name))
        if self.d_model % self.num_heads != 0:
            raise ValueError(
                f"d_model must be divisible by num_heads, got d_model={self.d_model}, num_heads={self.num_heads}"
            )
        for f in dataclasses.fields(self):  # every on/off switch (annotated `bool`)
            if f.type in ("bool", bool) and not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"ModelSpec.{f.name} must be a bool, got {getattr(self, f.name)!r}")
        _check_choices(self)
        if self.position_embedding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head size, got d_model/num_heads = {self.head_dim}")
        for name in ("rope_theta", "eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"ModelSpec.{name} must be a positive finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        cap = self.logit_softcap
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 <= cap < float("inf"):
            raise ValueError(f"ModelSpec.logit_softcap must be a finite number >= 0 (0 = off), got {cap!r}")
        object.__setattr__(self, "logit_softcap", float(cap))
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", implied_d_ff(self.d_model, self.ffn_type))
        _check_positive_int("d_ff", self.d_ff)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field; `ModelSpec.from_dict(s.to_dict()) == s`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """A spec from a dict of its fields; an unknown key is an error (a typo must not become a default)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"ModelSpec.from_dict expects a mapping of fields, got {type(data).__name__}")
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown ModelSpec keys {unknown}; expected a subset of {list(field_names())}")
        return cls(**data)

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> ModelSpec:
        """The spec of a stored run config: a `[model]` table (`config["model"]`, today's form), or the model
        keys among the flat keys of a config written before `TrainConfig` nested the spec; other keys ignored.
        """
        nested = config.get("model")
        if isinstance(nested, Mapping):
            return cls.from_dict(nested)
        return cls.from_dict({k: v for k, v in config.items() if k in field_names()})

    def handout_fields(self) -> dict[str, Any]:
        """The keyword arguments of the handout's `TransformerLM(...)`."""
        return {name: getattr(self, name) for name in HANDOUT_FIELDS}

    def non_default_extras(self) -> dict[str, Any]:
        """The fields beyond the handout's whose value is not the handout model's (an ablation, another eps)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in HANDOUT_FIELDS and getattr(self, f.name) != f.default
        }


def field_names() -> tuple[str, ...]:
    """The names of `ModelSpec`'s fields, in order."""
    return tuple(f.name for f in dataclasses.fields(ModelSpec))


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"ModelSpec.{name} must be a positive int, got {value!r}")


def _check_choices(spec: ModelSpec) -> None:
    for name, choices in _CHOICES.items():
        if getattr(spec, name) not in get_args(choices):
            raise ValueError(f"ModelSpec.{name} must be one of {get_args(choices)}, got {getattr(spec, name)!r}")


__all__ = ["ModelSpec", "HANDOUT_FIELDS", "handout_d_ff", "implied_d_ff", "field_names"]
