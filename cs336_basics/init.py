"""Weight initialisation schemes, from tensor ops: Xavier/Glorot, Kaiming/He, orthogonal, truncated normal.

Every scheme fills a weight stored like torch's, `W (fan_out, fan_in, *kernel)`, in place and returns it:

    scheme       distribution                                  why
    xavier       N(0, 2/(fan_in+fan_out)) or U(±√(6/(fan_in+fan_out)))   keeps the variance of activations
                                                               (forward) and gradients (backward) balanced
    kaiming      N(0, 2/fan) or U(±√(6/fan)), fan = fan_in      the factor 2 (the ReLU gain²) makes up for
                 (or fan_out)                                  the half of the signal a ReLU zeroes
    orthogonal   the Q of a QR decomposition of a normal matrix all singular values 1: norms preserved
    assignment   Linear N(0, 2/(d_in+d_out)) truncated at ±3σ, Embedding N(0, 1) truncated at ±3, RMSNorm 1

A uniform U(-l, l) has variance l²/3, so the uniform limits are √3 times the normal standard deviations.

`ModelConfig.init` names the scheme of every `Linear` of the LM (`LINEAR_SCHEMES`); the token embedding
keeps N(0, 1) truncated at ±3 (a lookup table has no fan-in to balance) and every RMSNorm gain starts at 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Mode = Literal["fan_in", "fan_out"]
InitScheme = Literal["assignment", "xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform", "orthogonal"]


def fan_in_and_fan_out(shape: Sequence[int], groups: int = 1) -> tuple[int, int]:
    """`(fan_in, fan_out)` of a weight of `shape` = `(out_features, in_features, *kernel)`, as torch stores it.

    fan_in = inputs seen by one output = `shape[1] · ∏kernel`; fan_out = `shape[0] · ∏kernel`.

    Worked example: `Conv2d(in_channels=64, out_channels=128, kernel_size=3, groups=4)` stores its weight as
    `(128, 64/4, 3, 3) = (128, 16, 3, 3)`: each output channel sees the 16 channels of its group over a 3×3
    window, fan_in = 16·3·3 = 144 (= in_channels/groups · kh · kw), and fan_out = 128·3·3 = 1152
    (= out_channels · kh · kw).

    >>> fan_in_and_fan_out((128, 16, 3, 3), groups=4), fan_in_and_fan_out((30, 20))
    ((144, 1152), (20, 30))

    NOTE: `shape[1]` is already `in_channels / groups`; dividing by `groups` again is the classic mistake.
    `groups` only checks that the output channels split evenly into the groups.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"fan-in and fan-out need a weight of at least 2 dimensions, got shape {shape}")
    if any(s <= 0 for s in shape):
        raise ValueError(f"every dimension of the weight must be positive, got shape {shape}")
    if groups < 1 or shape[0] % groups != 0:
        raise ValueError(f"groups must be a positive divisor of out_channels={shape[0]}, got groups={groups}")
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def _fan(weight: Tensor, mode: Mode) -> int:
    fan_in, fan_out = fan_in_and_fan_out(weight.shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


@torch.no_grad()
def normal_(weight: Tensor, std: float) -> Tensor:
    """Fill `weight` with N(0, std²)."""
    return weight.normal_(0.0, std)


@torch.no_grad()
def uniform_(weight: Tensor, limit: float) -> Tensor:
    """Fill `weight` with U(-limit, limit), whose variance is limit²/3."""
    return weight.uniform_(-limit, limit)


def trunc_normal_(weight: Tensor, std: float = 1.0, a: float = -2.0, b: float = 2.0, mean: float = 0.0) -> Tensor:
    """Fill `weight` with N(mean, std²) conditioned on `[a, b]` (absolute bounds, not multiples of std).

    NOTE: the values are those of a normal *restricted* to the interval, not clamped into it: nothing piles
    up at the bounds, and the standard deviation comes out a little below `std` (0.986 · std at ±3σ).
    """
    if not a < b:
        raise ValueError(f"truncation interval needs a < b, got a={a}, b={b}")
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return nn.init.trunc_normal_(weight, mean=mean, std=std, a=a, b=b)


def xavier_normal_(weight: Tensor) -> Tensor:
    """Glorot & Bengio (2010): N(0, 2 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(weight.shape)
    return normal_(weight, math.sqrt(2.0 / (fan_in + fan_out)))


def xavier_uniform_(weight: Tensor) -> Tensor:
    """Glorot & Bengio (2010): U(±√(6 / (fan_in + fan_out))), the same variance as `xavier_normal_`."""
    fan_in, fan_out = fan_in_and_fan_out(weight.shape)
    return uniform_(weight, math.sqrt(6.0 / (fan_in + fan_out)))


def kaiming_normal_(weight: Tensor, mode: Mode = "fan_in") -> Tensor:
    """He et al. (2015), ReLU gain: N(0, 2 / fan); `fan_in` keeps the forward pass, `fan_out` the backward."""
    return normal_(weight, math.sqrt(2.0 / _fan(weight, mode)))


def kaiming_uniform_(weight: Tensor, mode: Mode = "fan_in") -> Tensor:
    """He et al. (2015), ReLU gain: U(±√(6 / fan)), the same variance as `kaiming_normal_`."""
    return uniform_(weight, math.sqrt(6.0 / _fan(weight, mode)))


@torch.no_grad()
def orthogonal_(weight: Tensor, gain: float = 1.0) -> Tensor:
    """Saxe et al. (2014): a (semi-)orthogonal matrix, W Wᵀ = I (wide W) or Wᵀ W = I (tall W), times `gain`.

    The weight is flattened to `(rows, rest)`; the QR decomposition of a normal matrix of the taller
    orientation gives orthonormal columns, and multiplying them by the signs of R's diagonal makes the
    result uniformly distributed over orthogonal matrices (QR alone would favour some).
    """
    if weight.ndim < 2:
        raise ValueError(f"orthogonal initialisation needs a weight of at least 2 dimensions, got {weight.ndim}")
    rows = weight.shape[0]
    cols = weight.numel() // rows
    flat = torch.randn(max(rows, cols), min(rows, cols), device=weight.device, dtype=torch.float32)
    q, r = torch.linalg.qr(flat)  # q: (max, min) with orthonormal columns
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if rows < cols:
        q = q.T
    weight.copy_((gain * q).reshape(weight.shape))
    return weight


# ------------------------------------------------------------------------------- the assignment's scheme


def assignment_linear_(weight: Tensor) -> Tensor:
    """A Linear weight `(d_out, d_in)`: N(0, σ²) with σ² = 2 / (d_in + d_out), truncated at ±3σ."""
    fan_in, fan_out = fan_in_and_fan_out(weight.shape)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return trunc_normal_(weight, std=std, a=-3.0 * std, b=3.0 * std)


def assignment_embedding_(weight: Tensor) -> Tensor:
    """An embedding table: N(0, 1) truncated at ±3."""
    return trunc_normal_(weight, std=1.0, a=-3.0, b=3.0)


def tied_embedding_(weight: Tensor) -> Tensor:
    """A table that is also the output layer (`tie_embeddings`), `(vocab_size, d_model)`: N(0, 1/d_model)
    truncated at ±3σ, so that the untrained logits (a unit-RMS vector times each row) have about unit variance,
    as an untied head's do. N(0, 1) rows would make them sqrt(d_model) times larger (first loss: hundreds of nats
    at d_model 512). The embedding's own scale does not matter in a pre-norm model: every block reads it normed."""
    std = weight.shape[-1] ** -0.5
    return trunc_normal_(weight, std=std, a=-3.0 * std, b=3.0 * std)


@torch.no_grad()
def ones_(weight: Tensor) -> Tensor:
    """RMSNorm gains: 1, so that the layer starts as a pure normalisation."""
    return weight.fill_(1.0)


@torch.no_grad()
def zeros_(weight: Tensor) -> Tensor:
    """Biases (this LM has none): 0."""
    return weight.zero_()


LINEAR_SCHEMES: dict[str, Callable[[Tensor], Tensor]] = {
    "assignment": assignment_linear_,
    "xavier_normal": xavier_normal_,
    "xavier_uniform": xavier_uniform_,
    "kaiming_normal": kaiming_normal_,
    "kaiming_uniform": kaiming_uniform_,
    "orthogonal": orthogonal_,
}


def linear_init(scheme: str) -> Callable[[Tensor], Tensor]:
    """The function that initialises a Linear weight under `scheme` (one of `LINEAR_SCHEMES`)."""
    if scheme not in LINEAR_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; expected one of {sorted(LINEAR_SCHEMES)}")
    return LINEAR_SCHEMES[scheme]


__all__ = [
    "InitScheme",
    "LINEAR_SCHEMES",
    "fan_in_and_fan_out",
    "normal_",
    "uniform_",
    "trunc_normal_",
    "tied_embedding_",
    "xavier_normal_",
    "xavier_uniform_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "orthogonal_",
    "assignment_linear_",
    "assignment_embedding_",
    "ones_",
    "zeros_",
    "linear_init",
]
