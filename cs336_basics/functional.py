"""Stateless tensor functions the neural-network parts are built from: softmax and SiLU.

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
