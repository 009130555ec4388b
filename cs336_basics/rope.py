"""Rotary positional embeddings (RoPE, Su et al. 2021).

RoPE encodes the position `i` of a query or key by rotating each adjacent pair `(x[2k], x[2k+1])` by the
angle `i · Θ^(-2k/d)`. The dot product of a rotated query and key then depends only on their relative
position. The cos/sin tables are computed once for every position up to `max_seq_len` (one module can be
shared by all layers) and stored as non-persistent buffers: they follow `.to(device)` but never enter a
checkpoint.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


def rope_angles(d_k: int, max_seq_len: int, theta: float, device: torch.device | str | None = None) -> Tensor:
    """The rotation angle of every (position, pair) as a float32 tensor (max_seq_len, d_k // 2).

    >>> rope_angles(4, 2, 100.0)
    tensor([[0.0000, 0.0000],
            [1.0000, 0.1000]])
    """
    # Frequencies Θ^(-2k/d) for k = 0 .. d/2 - 1, computed in float64 so the table is exact to float32.
    exponents = torch.arange(0, d_k, 2, dtype=torch.float64, device=device) / d_k
    inv_freq = theta ** (-exponents)
    positions = torch.arange(max_seq_len, dtype=torch.float64, device=device)
    return torch.outer(positions, inv_freq).float()


def _swap_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...)."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


class _Rotate(torch.autograd.Function):
    """The pair rotation as `x ⊙ c + swap(x) ⊙ s` with c = (cos, cos, ...) and s = (−sin, sin, ...): the same
    products and sums as the pairwise formula (so the same numbers), in full-width passes. A rotation's
    transpose is the rotation by the opposite angle, so the backward is `g ⊙ c + swap(g ⊙ s)`; autograd
    through the pairwise formula would run a dozen half-width kernels and a stack.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cos_full: Tensor, sin_full: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(cos_full, sin_full)
        ctx.x_shape = x.shape
        return x * cos_full + _swap_pairs(x) * sin_full

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        cos_full, sin_full = ctx.saved_tensors
        grad = grad_out * cos_full + _swap_pairs(grad_out * sin_full)
        return grad.sum_to_size(ctx.x_shape), None, None


class RotaryPositionalEmbedding(nn.Module):
    """Rotates adjacent pairs of the last dimension of queries or keys by position-dependent angles.

    Args:
        theta: the base Θ of the frequencies (10000 in the original Transformer).
        d_k: size of the rotated (last) dimension; must be even.
        max_seq_len: number of positions the tables cover; positions must lie in [0, max_seq_len).
        device: where the tables live.
        dtype: dtype of the tables (default float32; keep float32 even for bf16 models).
    """

    cos: Tensor
    sin: Tensor

    def __init__(
        self,
        theta: float,
        d_k: int,
        max_seq_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if d_k <= 0 or d_k % 2 != 0:
            raise ValueError(f"RoPE needs a positive even d_k (it rotates pairs), got d_k={d_k}")
        if max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
        if theta <= 0:
            raise ValueError(f"theta must be positive, got {theta}")
        self.theta = theta
        self.d_k = d_k
        self.max_seq_len = max_seq_len
        angles = rope_angles(d_k, max_seq_len, theta, device=device)  # (max_seq_len, d_k // 2)
        table_dtype = dtype or torch.float32
        self.register_buffer("cos", angles.cos().to(table_dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(table_dtype), persistent=False)

    def forward(
        self,
        x: Float[Tensor, " ... seq d_k"],
        token_positions: Int[Tensor, " ... seq"] | None = None,
    ) -> Float[Tensor, " ... seq d_k"]:
        """Rotate `x` for the given positions (default `0 .. seq-1`).

        `token_positions` broadcasts against the leading dims of `x` aligned from the right, e.g.
        positions (seq,) for x (batch, heads, seq, d_k), or (batch, 1, seq) for per-sequence positions.
        """
        if x.shape[-1] != self.d_k:
            raise ValueError(f"RoPE expected the last dimension of x to be d_k={self.d_k}, got shape {tuple(x.shape)}")
        seq_len = x.shape[-2]
        if token_positions is None:
            if seq_len > self.max_seq_len:
                raise ValueError(
                    f"sequence length {seq_len} exceeds the RoPE cache (max_seq_len={self.max_seq_len})"
                )
            cos, sin = self.cos[:seq_len], self.sin[:seq_len]  # (seq, d_k/2)
        else:
            if token_positions.shape[-1] != seq_len:
                raise ValueError(
                    f"token_positions must end in the sequence length {seq_len}, got shape "
                    f"{tuple(token_positions.shape)}"
                )
            # NOTE: the range check reads two numbers back from the device; skipped inside torch.compile.
            if not torch.compiler.is_compiling() and token_positions.numel() > 0:
                low, high = int(token_positions.min()), int(token_positions.max())
                if low < 0 or high >= self.max_seq_len:
                    raise ValueError(
                        f"token positions must lie in [0, {self.max_seq_len}) (max_seq_len), got [{low}, {high}]"
                    )
            cos, sin = self.cos[token_positions], self.sin[token_positions]  # (..., seq, d_k/2)
        if x.dtype == cos.dtype and x.dtype in (torch.float32, torch.float64):
            # Full-width tables (cos, cos, ...) and (-sin, sin, ...): x·cos + swap(x)·sin, see `_Rotate`.
            cos_full = cos.repeat_interleave(2, dim=-1)
            sin_full = torch.stack((-sin, sin), dim=-1).flatten(-2)
            return _Rotate.apply(x, cos_full, sin_full)
        compute_dtype = torch.promote_types(x.dtype, cos.dtype)
        pairs = x.to(compute_dtype).unflatten(-1, (-1, 2))  # (..., seq, d_k/2, 2)
        x_even, x_odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)

    def extra_repr(self) -> str:
        return f"theta={self.theta}, d_k={self.d_k}, max_seq_len={self.max_seq_len}"
