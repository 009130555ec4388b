"""Rotary positional embeddings (RoPE, Su et al. 2021).

RoPE encodes the position `i` of a query or key by rotating each adjacent pair `(x[2k], x[2k+1])` by the
angle `i · Θ^(-2k/d)`. The dot product of a rotated query and key then depends only on their relative
position. The cos/sin tables are computed once for every position up to `max_seq_len` (one module can be
shared by all layers) and stored as non-persistent buffers: they follow `.to(device)` but never enter a
checkpoint.
"""

from __future__ import annotations

import torch
from einops import rearrange
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
        cos, sin = self._tables(x.shape[-2], token_positions)  # (..., seq, d_k/2)
        compute_dtype = torch.promote_types(x.dtype, cos.dtype)
        # Each pair (x[2k], x[2k+1]) is rotated by the angle of its position and frequency k.
        x_even, x_odd = rearrange(x.to(compute_dtype), "... seq (half two) -> two ... seq half", two=2)
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)  # (..., seq, half, 2)
        return rearrange(rotated, "... seq half two -> ... seq (half two)").to(x.dtype)

    def _tables(self, seq_len: int, token_positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """cos and sin of the angles at `token_positions` (default `0 .. seq_len-1`), (..., seq, d_k/2) each."""
        if token_positions is None:
            if seq_len > self.max_seq_len:
                raise ValueError(f"sequence length {seq_len} exceeds the RoPE cache (max_seq_len={self.max_seq_len})")
            return self.cos[:seq_len], self.sin[:seq_len]
        if token_positions.shape[-1] != seq_len:
            raise ValueError(
                f"token_positions must end in the sequence length {seq_len}, got shape {tuple(token_positions.shape)}"
            )
        # NOTE: the range check reads two numbers back from the device; skipped inside torch.compile.
        if not torch.compiler.is_compiling() and token_positions.numel() > 0:
            low, high = int(token_positions.min()), int(token_positions.max())
            if low < 0 or high >= self.max_seq_len:
                raise ValueError(
                    f"token positions must lie in [0, {self.max_seq_len}) (max_seq_len), got [{low}, {high}]"
                )
        return self.cos[token_positions], self.sin[token_positions]

    def extra_repr(self) -> str:
        return f"theta={self.theta}, d_k={self.d_k}, max_seq_len={self.max_seq_len}"
