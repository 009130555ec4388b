"""Stateless tensor functions the neural-network parts are built from: softmax, SiLU, ReLU² and the soft cap.

Both are written with elementary tensor ops (nothing from torch's ready-made layers), as the assignment asks.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

# Reduced-precision inputs are computed in float32 and rounded once at the end: exp() and the sum of a
# softmax row lose several bits when done in bfloat16.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def softmax(x: Float[Tensor, " ..."], dim: int) -> Float[Tensor, " ..."]:
    """Numerically stable softmax over dimension `dim` (any dim, negative allowed).

    Subtracting the maximum first keeps `exp` from overflowing; the result is unchanged because
    softmax is invariant to adding a constant to its inputs. Masked entries of `-inf` get probability 0.

    >>> softmax(torch.tensor([1000.0, 1000.0]), dim=0)
    tensor([0.5000, 0.5000])
    >>> softmax(torch.tensor([[0.0], [float("-inf")]]), dim=0)
    tensor([[1.],
            [0.]])
    """
    if not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f"softmax dim must be in [{-x.ndim}, {x.ndim}) for a {x.ndim}-d tensor, got {dim}")
    compute = x.float() if x.dtype in _LOW_PRECISION else x
    # NOTE: detach the max: it is a constant shift, so no gradient should flow through it (cheaper backward).
    shifted = compute - compute.amax(dim=dim, keepdim=True).detach()
    exp = torch.exp(shifted)
    # Multiplying by the reciprocal is cheaper than dividing, forward and backward (one division per row).
    return (exp * (1.0 / exp.sum(dim=dim, keepdim=True))).to(x.dtype)


def silu(x: Float[Tensor, " ..."]) -> Float[Tensor, " ..."]:
    """SiLU (a.k.a. swish) activation `x * sigmoid(x)`, elementwise.

    >>> silu(torch.tensor([0.0, 1.0]))
    tensor([0.0000, 0.7311])
    """
    compute = x.float() if x.dtype in _LOW_PRECISION else x
    return (compute * torch.sigmoid(compute)).to(x.dtype)


def relu_squared(x: Float[Tensor, " ..."]) -> Float[Tensor, " ..."]:
    """ReLU² `max(x, 0)²`, elementwise: the activation of the modern recipe's 2-matrix feed-forward network.

    NOTE: the order matters: squaring first would give x² (negative inputs would come back positive).

    >>> relu_squared(torch.tensor([-2.0, 0.5, 3.0]))
    tensor([0.0000, 0.2500, 9.0000])
    """
    return x.clamp_min(0).square()


def soft_cap(x: Float[Tensor, " ..."], cap: float) -> Float[Tensor, " ..."]:
    """`cap * tanh(x / cap)`: about x for |x| << cap, never beyond ±cap (Gemma 2's logit soft-capping).

    >>> soft_cap(torch.tensor([0.1, 100.0, -100.0]), 10.0)
    tensor([  0.1000,  10.0000, -10.0000])
    """
    if not cap > 0:
        raise ValueError(f"the soft cap must be positive, got {cap!r}")
    return cap * torch.tanh(x / cap)
