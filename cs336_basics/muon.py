"""Muon: momentum whose update for a weight matrix is orthogonalised, and `MuonAdamW`, Muon beside AdamW.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks") keeps one momentum
buffer per weight matrix, like SGD, but steps along the nearest semi-orthogonal matrix to it: every singular
value of the step is (roughly) one, so rare directions of the gradient move as far as the dominant ones.

    B ← μ B + (1 - μ) g                       momentum (an average of the gradients)
    M ← (1 - μ) g + μ B    (Nesterov)  or  M ← B
    O ← NewtonSchulz5(M)                      ≈ U Vᵀ, where U S Vᵀ is the SVD of M
    θ ← θ - lr · λ · θ                        decoupled weight decay (the un-adjusted lr)
    θ ← θ - adjusted_lr · O                   see `adjusted_lr`

Muon is for the hidden matrices only; the token embedding (a lookup table, not a linear map on a dense input),
the output layer and the 1-d gains keep AdamW (as in modded-nanogpt and the CS336 leaderboard entries).
`muon_param_groups(model)` makes that split; `MuonAdamW` steps both kinds of group, so a trainer holds one
optimizer and one `state_dict`. The numbers equal `torch.optim.Muon` (the tests' oracle) with
`ns_dtype=torch.bfloat16`.

NOTE: the step size defaults to `adjust_lr_fn="match_rms_adamw"` (torch's default is "original"): Muon's step
then has the RMS of AdamW's, so Muon and AdamW share one learning rate and one weight decay (see `Muon`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from cs336_basics.layers import Embedding
from cs336_basics.optimizer import AdamW, ParamsT, _check_hyperparameters

# The quintic's coefficients (a, b, c) of Keller Jordan's Muon: chosen for the largest slope at zero, so that
# 5 steps pull even tiny singular values up to about 0.7-1.2 (not exactly 1, which does not hurt training).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
AdjustLR = Literal["original", "match_rms_adamw"]


def newton_schulz(
    G: Float[Tensor, "rows cols"],
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    steps: int = NS_STEPS,
    eps: float = NS_EPS,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "rows cols"]:
    """An approximately orthogonal matrix with the singular vectors of `G`: `steps` quintic iterations

        X ← a X + (b A + c A²) X,   A = X Xᵀ

    from `X = G / max(‖G‖_F, eps)` (the Frobenius norm bounds the spectral norm, so every singular value
    starts in [0, 1], where the polynomial pushes it towards 1). Computed in `dtype` and returned in it.

    NOTE: a tall matrix is transposed first, so that `A = X Xᵀ` is the small (min × min) Gram matrix; the
    result is the same polynomial, at a fraction of the cost.

    >>> Q = newton_schulz(torch.diag(torch.tensor([1.0, 0.1])))  # singular values 1 and 0.1 both become ~0.7
    >>> [round(v, 2) for v in torch.diagonal(Q).tolist()]
    [0.7, 0.71]
    """
    if G.ndim != 2:
        raise ValueError(f"newton_schulz expects a 2-d matrix, got shape {tuple(G.shape)}")
    a, b, c = coefficients
    X = G.to(dtype)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T  # (cols, rows): wide
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T  # (min, min)
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A²
        X = torch.addmm(X, B, X, beta=a)  # a X + B X
    return X.T if tall else X


def adjusted_lr(lr: float, shape: torch.Size, adjust_lr_fn: AdjustLR) -> float:
    """The step size of an orthogonalised update of a `shape = (A, B)` matrix.

    An orthogonal A×B update has RMS entry `1/sqrt(max(A, B))`, so the raw step would shrink with the width.
    - "original" (Keller Jordan): `lr · sqrt(max(1, A/B))`; the lr is Muon's own (about 0.02).
    - "match_rms_adamw" (Moonshot, "Muon is scalable for LLM training", 2025): `lr · 0.2 · sqrt(max(A, B))`,
      an update of RMS `0.2 · lr`, as AdamW's typically is: Muon takes AdamW's learning rate and weight decay.

    >>> adjusted_lr(0.02, torch.Size([512, 128]), "original")
    0.04
    >>> adjusted_lr(1e-3, torch.Size([128, 400]), "match_rms_adamw")
    0.004
    """
    A, B = shape[:2]
    if adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, A / B))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(A, B))
    raise ValueError(f"adjust_lr_fn must be 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")


def _default_ns_dtype(device: torch.device) -> torch.dtype:
    # NOTE: bf16 on a GPU (tensor cores; the iteration tolerates its rounding, torch.optim.Muon and Keller's
    # code use it), float32 elsewhere: a bf16 matmul on a CPU without bf16 units is ~20x slower (3.0 ms vs
    # 60 ms for one 128×384 iteration on one thread).
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@torch.no_grad()
def muon_step(group: dict[str, Any], state: Any) -> None:
    """One Muon step for every parameter of `group` that has a gradient; `state[p]` keeps its momentum."""
    lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise TypeError("Muon does not support sparse gradients")
        g = p.grad
        buf = state[p].setdefault("momentum_buffer", torch.zeros_like(g, memory_format=torch.preserve_format))
        buf.lerp_(g, 1 - momentum)  # B ← μ B + (1 - μ) g
        update = g.lerp(buf, momentum) if group["nesterov"] else buf  # (1 - μ) g + μ B: look one step ahead
        ns_dtype = group["ns_dtype"] or _default_ns_dtype(p.device)
        ortho = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["ns_eps"], ns_dtype)
        p.mul_(1 - lr * weight_decay)
        p.add_(ortho, alpha=-adjusted_lr(lr, p.shape, group["adjust_lr_fn"]))


def _muon_defaults(
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    ns_eps: float,
    adjust_lr_fn: AdjustLR,
    ns_dtype: torch.dtype | None,
) -> dict[str, Any]:
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if len(ns_coefficients) != 3:
        raise ValueError(f"ns_coefficients must be three numbers (a, b, c), got {ns_coefficients!r}")
    if not 1 <= ns_steps < 100:
        raise ValueError(f"ns_steps must be in [1, 100), got {ns_steps!r}")
    if not ns_eps > 0:
        raise ValueError(f"ns_eps must be positive, got {ns_eps!r}")
    adjusted_lr(1.0, torch.Size([1, 1]), adjust_lr_fn)  # refuses an unknown name
    return {
        "momentum": momentum,
        "nesterov": nesterov,
        "ns_coefficients": tuple(ns_coefficients),
        "ns_steps": ns_steps,
        "ns_eps": ns_eps,
        "adjust_lr_fn": adjust_lr_fn,
        "ns_dtype": ns_dtype,
    }


def _check_matrices(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        if group.get("use_muon", True):
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon steps 2-d matrices only, got a parameter of shape {tuple(p.shape)}")


class Muon(torch.optim.Optimizer):
    """Muon for 2-d matrices (see the module docstring); the arguments of `torch.optim.Muon`, plus `ns_dtype`.

    Args:
        lr: learning rate, before `adjusted_lr`.
        weight_decay: λ; each step shrinks θ by lr·λ·θ.
        momentum: μ of the momentum buffer.
        nesterov: step along `(1 - μ) g + μ B` instead of `B`.
        ns_coefficients, ns_steps, eps: the Newton–Schulz iteration of `newton_schulz`.
        adjust_lr_fn: "match_rms_adamw" (default here; `torch.optim.Muon` defaults to "original"): with it
            Muon's update has AdamW's RMS, so one learning rate and one weight decay serve both optimizers of
            `MuonAdamW` (with "original", lr ≈ 0.02 would decay the weights 20x faster than AdamW's 1e-3).
        ns_dtype: the iteration's dtype; None = bf16 on CUDA (as torch's), float32 elsewhere.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = NS_EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: AdjustLR = "match_rms_adamw",
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        _check_hyperparameters(lr=lr, betas=(0.0, 0.0), eps=0.0, weight_decay=weight_decay)
        defaults = {"lr": lr, "weight_decay": weight_decay}
        defaults |= _muon_defaults(momentum, nesterov, ns_coefficients, ns_steps, eps, adjust_lr_fn, ns_dtype)
        super().__init__(params, defaults)
        _check_matrices(self)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            muon_step(group, self.state)
        return loss


class MuonAdamW(AdamW):
    """One optimizer, two update rules: Muon for the groups with `use_muon=True`, AdamW for the others.

    Build it from `muon_param_groups(model)`. Every group carries every hyper-parameter (a group dict may
    override any of them, e.g. its own `lr`); `betas`/`eps` concern the AdamW groups, `momentum`/`nesterov`/
    `ns_*`/`adjust_lr_fn` the Muon ones, `lr`/`weight_decay` both (see `Muon` for the choice of
    `adjust_lr_fn`). Its `state_dict` holds both kinds of state, so a checkpoint resumes both exactly.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_steps: int = NS_STEPS,
        ns_eps: float = NS_EPS,
        adjust_lr_fn: AdjustLR = "match_rms_adamw",
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        _check_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "use_muon": False}
        defaults |= _muon_defaults(momentum, nesterov, ns_coefficients, ns_steps, ns_eps, adjust_lr_fn, ns_dtype)
        super(AdamW, self).__init__(
            params, defaults
        )  # the Optimizer's own: AdamW.__init__ knows its four settings only
        _check_matrices(self)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                muon_step(group, self.state)
            else:
                self._step_group(group)
        return loss


def muon_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The parameters of `model` split by role: `[{"params": hidden matrices, "use_muon": True},
    {"params": the rest, "use_muon": False}]`, for `MuonAdamW`.

    Muon gets every 2-d weight except the token embedding and the output layer (`lm_head`): attention's
    q/k/v/output projections and the feed-forward weights. AdamW gets the embedding, the `lm_head`, and every
    1-d gain. Frozen parameters (`requires_grad=False`) are left out.

    NOTE: a tied output layer (`lm_head.weight is token_embeddings.weight`) is one parameter with two names;
    it is recognised under either name and put in one group only (an optimizer refuses a parameter in two
    groups, and two update rules would step it twice).
    """
    kept_on_adamw: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, Embedding) or name.rpartition(".")[2] in ("token_embeddings", "lm_head"):
            kept_on_adamw.update(id(p) for p in module.parameters(recurse=False))
    muon: list[Tensor] = []
    adamw: list[Tensor] = []
    seen: set[int] = set()
    for p in model.parameters():  # each parameter once, however many names it has
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (muon if p.ndim == 2 and id(p) not in kept_on_adamw else adamw).append(p)
    return [{"params": muon, "use_muon": True}, {"params": adamw, "use_muon": False}]


__all__ = ["Muon", "MuonAdamW", "muon_param_groups", "newton_schulz", "adjusted_lr", "NS_COEFFICIENTS", "NS_STEPS"]
