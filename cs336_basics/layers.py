"""The elementary layers of the Transformer: Linear, Embedding, RMSNorm and the three feed-forward networks.

Every layer takes explicit sizes plus `device`/`dtype`, initialises itself in `reset_parameters()`
(truncated normals as in the handout, see docs/INTERFACE.md) and names its parameters exactly like the
state-dict keys of the assignment, so `load_state_dict` needs no remapping.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from cs336_basics import init
from cs336_basics.functional import relu_squared, silu


def default_d_ff(d_model: int) -> int:
    """The SwiGLU inner size: about 8/3 · d_model, rounded to the nearest multiple of 64 (at least 64).

    8/3 keeps the parameter count of a 3-matrix SwiGLU equal to a 2-matrix FFN with 4 · d_model; a
    multiple of 64 keeps matrix shapes friendly to the hardware.

    >>> default_d_ff(512), default_d_ff(768), default_d_ff(16)
    (1344, 2048, 64)
    """
    if d_model <= 0:
        raise ValueError(f"d_model must be positive, got {d_model}")
    return max(64, 64 * round(8 * d_model / 3 / 64))


class ShapeCheckedModule(nn.Module):
    """A module whose `load_state_dict` rejects a wrongly shaped parameter with a `ValueError`.

    torch itself raises a `RuntimeError` listing every mismatch at the end; naming the key, the expected
    and the actual shape up front is friendlier to someone loading hand-made weights.
    """

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool, *args: Any
    ) -> None:
        for name, param in self._parameters.items():
            key = prefix + name
            if param is not None and key in state_dict and tuple(state_dict[key].shape) != tuple(param.shape):
                raise ValueError(
                    f"{type(self).__name__} weight {key!r}: expected shape {tuple(param.shape)}, "
                    f"got {tuple(state_dict[key].shape)}"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)


class Linear(ShapeCheckedModule):
    """A bias-free linear map `y = x Wᵀ` with W stored (out_features, in_features)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, σ²) with σ² = 2 / (d_in + d_out), truncated at ±3σ."""
        init.assignment_linear_(self.weight)

    def forward(self, x: Float[Tensor, " ... d_in"]) -> Float[Tensor, " ... d_out"]:
        # matmul folds the leading dims into one GEMM; `weight.T` is a free view.
        return x @ self.weight.T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Embedding(ShapeCheckedModule):
    """A lookup table mapping token ids to vectors: row `i` of `weight` is the embedding of token `i`."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1) truncated at ±3."""
        init.assignment_embedding_(self.weight)

    def forward(self, token_ids: Int[Tensor, " ..."]) -> Float[Tensor, " ... d_model"]:
        return self.weight[token_ids]

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"


class RMSNorm(ShapeCheckedModule):
    """Root-mean-square layer norm: `x / sqrt(mean(x²) + eps) * g` over the last dimension.

    NOTE: computed in at least float32 whatever the input dtype (squares of bf16 activations overflow or lose
    precision), then cast back to the input dtype.
    """

    def __init__(
        self,
        d_model: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(d_model, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gain 1: the layer starts as a pure normalisation."""
        init.ones_(self.weight)

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        in_dtype = x.dtype
        x = x.to(torch.promote_types(in_dtype, torch.float32))  # at least float32
        inv_rms = torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return (x * inv_rms * self.weight.to(x.dtype)).to(in_dtype)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


class SwiGLU(nn.Module):
    """The SwiGLU feed-forward network `W2(SiLU(W1 x) ⊙ W3 x)`: a SiLU-gated linear unit."""

    def __init__(
        self,
        d_model: int,
        d_ff: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_ff = default_d_ff(d_model) if d_ff is None else d_ff
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)  # gate
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)  # down projection
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)  # up projection

    def reset_parameters(self) -> None:
        for layer in (self.w1, self.w2, self.w3):
            layer.reset_parameters()

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        return self.w2(silu(self.w1(x)) * self.w3(x))


class SiLUFeedForward(nn.Module):
    """The ungated ablation `W2 SiLU(W1 x)`; `d_ff` defaults to 4 · d_model to match SwiGLU's parameters."""

    def __init__(
        self,
        d_model: int,
        d_ff: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        for layer in (self.w1, self.w2):
            layer.reset_parameters()

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        return self.w2(silu(self.w1(x)))


class ReLU2FeedForward(SiLUFeedForward):
    """The modern recipe's `W2 ReLU(W1 x)²` (Primer; modded-nanogpt): the SiLU network's two matrices (`w1`,
    `w2`, `d_ff` defaulting to 4 · d_model) with ReLU² as the activation."""

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        return self.w2(relu_squared(self.w1(x)))
