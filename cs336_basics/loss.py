"""The language-modelling loss: cross-entropy over the vocabulary, and perplexity.

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
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, vocab)
    return _CrossEntropy.apply(flat_logits, targets.reshape(-1).long())


def cross_entropy_by_composition(logits: Float[Tensor, " n vocab_size"], targets: Int[Tensor, " n"]) -> Tensor:
    """The textbook form of `cross_entropy` on 2-d logits, differentiated by autograd (used to check the fast one)."""
    # NOTE: subtract the max first: exp(1e4) overflows float32, exp(o - max) never exceeds 1. The shift is a
    # constant (the loss does not depend on it), so it needs no gradient.
    shifted = logits - logits.detach().amax(dim=-1, keepdim=True)  # (N, vocab)
    log_normaliser = shifted.exp().sum(dim=-1).log()  # (N,)
    target_logit = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    return (log_normaliser - target_logit).mean()


class _CrossEntropy(torch.autograd.Function):
    """`cross_entropy_by_composition` with a hand-written backward: d loss / d logits = (softmax − onehot) / N.

    Autograd would keep the shifted logits and their exponentials and run a chain of elementwise backward
    kernels. Here the forward's exponentials exp(o − max) are kept (one N × vocab tensor, the LM head's
    logits being the largest activation of a small model) with their row sums, and the backward turns them
    into the gradient in place with one scaling pass plus a scatter, instead of recomputing the softmax.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # noqa: ANN001
        # NOTE: everything is taken relative to the row max: logsumexp itself (≈ max) minus the target logit
        # would cancel catastrophically for logits around 1e4 that differ by 1e-2.
        row_max = logits.amax(dim=-1, keepdim=True)  # (N, 1)
        exp = (logits - row_max).exp_()  # (N, vocab)
        row_sum = exp.sum(dim=-1, keepdim=True)  # (N, 1)
        log_normaliser = row_sum.log().squeeze(-1)  # logsumexp - max, (N,)
        target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - row_max.squeeze(-1)  # (N,)
        ctx.save_for_backward(logits, targets, row_max, row_sum)
        # NOTE: kept outside save_for_backward: the first backward turns it into the gradient in place (a fresh
        # N × vocab tensor costs a pass of page faults); a second backward through a retained graph recomputes.
        ctx.exp = exp
        return (log_normaliser - target_logit).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        logits, targets, row_max, row_sum = ctx.saved_tensors
        exp, ctx.exp = ctx.exp, None
        if exp is None:
            exp = (logits - row_max).exp_()
        scale = grad_loss / logits.shape[0]
        grad = exp.mul_(scale / row_sum)  # softmax · grad / N, (N, vocab)
        grad.scatter_add_(-1, targets.unsqueeze(-1), (-scale).expand(targets.shape[0], 1).to(grad.dtype))
        return grad, None


def perplexity(logits: Float[Tensor, " ... vocab_size"], targets: Int[Tensor, " ..."]) -> float:
    """Perplexity `exp(mean cross-entropy)` of `targets` under `logits`.

    >>> round(perplexity(torch.zeros(3, 4), torch.tensor([0, 1, 2])), 6)  # uniform over 4 classes
    4.0
    """
    with torch.no_grad():
        loss = cross_entropy(logits.float(), targets).item()
    return math.exp(loss)
