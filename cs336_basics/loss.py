"""The language-modelling loss: cross-entropy over the vocabulary (with PaLM's optional z-loss), and perplexity.

Both are written with the log-sum-exp trick: subtracting the row maximum before exponentiating keeps
`exp` in range for any finite logits (even ±1e4), and working with log-probabilities avoids the `log(0)`
that a softmax followed by a log would hit for very unlikely tokens.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor


def _check_shapes(logits: Tensor, targets: Tensor) -> None:
    if logits.ndim < 1:
        raise ValueError(f"logits must have a vocabulary dimension, got a {logits.ndim}-d tensor")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets must have the leading shape of the logits {tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.dtype.is_complex:
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")


def cross_entropy(logits: Float[Tensor, " ... vocab_size"], targets: Int[Tensor, " ..."]) -> Float[Tensor, ""]:
    """Mean negative log-likelihood of `targets` under the unnormalised `logits`.

    `ℓ = mean over positions of  logsumexp(o) - o[target]`, averaged over every leading position.
    Half-precision logits are upcast: the loss is computed and returned in float32.

    >>> cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))  # uniform over 2 classes: ln 2
    tensor(0.6931)
    """
    _check_shapes(logits, targets)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # NOTE: a half-precision log-sum-exp loses most of the loss's digits
    logits = logits.reshape(-1, logits.shape[-1])  # (N, vocab): every position is one example
    targets = targets.reshape(-1).long()  # (N,)
    # NOTE: subtract the row max first: exp(1e4) overflows float32, exp(o - max) never exceeds 1. The shift is
    # a constant (the loss does not depend on it), so it needs no gradient.
    shifted = logits - logits.detach().amax(dim=-1, keepdim=True)  # (N, vocab)
    log_normaliser = shifted.exp().sum(dim=-1).log()  # logsumexp(o) - max, (N,)
    target_logit = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # o[target] - max, (N,)
    return (log_normaliser - target_logit).mean()


def cross_entropy_with_z_loss(
    logits: Float[Tensor, " ... vocab_size"], targets: Int[Tensor, " ..."], z_loss: float
) -> Float[Tensor, ""]:
    """`cross_entropy` plus PaLM's z-loss (Chowdhery et al. 2022): `ℓ + z_loss · mean(logsumexp(o)²)`.

    The extra term pulls the log-normaliser `log Z = logsumexp(o)` of every position towards 0, so the logits
    cannot drift to large values (which bf16 rounds badly and which make the softmax saturate); PaLM uses
    `z_loss = 1e-4`. It is a training regulariser: report the plain `cross_entropy` as the validation loss.

    >>> cross_entropy_with_z_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]), z_loss=1.0)  # ln 2 + (ln 2)²
    tensor(1.1736)
    """
    if not (math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    _check_shapes(logits, targets)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logits = logits.reshape(-1, logits.shape[-1])  # (N, vocab)
    targets = targets.reshape(-1).long()  # (N,)
    row_max = logits.detach().amax(dim=-1, keepdim=True)  # (N, 1), see cross_entropy
    shifted = logits - row_max
    log_z = shifted.exp().sum(dim=-1).log() + row_max.squeeze(-1)  # logsumexp(o), (N,)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    return (log_z - target_logit).mean() + z_loss * log_z.square().mean()


def perplexity(logits: Float[Tensor, " ... vocab_size"], targets: Int[Tensor, " ..."]) -> float:
    """Perplexity `exp(mean cross-entropy)` of `targets` under `logits`.

    >>> round(perplexity(torch.zeros(3, 4), torch.tensor([0, 1, 2])), 6)  # uniform over 4 classes
    4.0
    """
    with torch.no_grad():
        loss = cross_entropy(logits.float(), targets).item()
    return math.exp(loss)
