"""Optimisation: the AdamW optimizer, the cosine and the warm-up/stable/decay learning-rate schedules, and global
gradient clipping (Muon, for the hidden matrices, is in `muon.py`).

AdamW follows Loshchilov & Hutter (2019), Algorithm 2 as written in the CS336 handout:

    m ← β1 m + (1 - β1) g                     first moment
    v ← β2 v + (1 - β2) g²                    second moment
    α_t ← α · sqrt(1 - β2^t) / (1 - β1^t)     bias-corrected step size
    θ ← θ - α_t · m / (sqrt(v) + ε)           Adam step
    θ ← θ - α · λ · θ                         decoupled weight decay (not scaled by α_t, not in g)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay.

    Every parameter keeps its own step count `t` (parameters added later, or frozen for a while, get their
    own bias correction), and the hyper-parameters are read from `param_groups` at every step, so a
    schedule can assign `group["lr"]` between steps and groups may differ.

    Args:
        params: parameters, or dicts of parameters with per-group hyper-parameters.
        lr: learning rate α.
        betas: (β1, β2), decay rates of the first and second moment estimates.
        eps: ε, added to sqrt(v) for numerical stability.
        weight_decay: λ; each step shrinks θ by α·λ·θ.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        _check_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one optimisation step; `closure`, if given, re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        """One AdamW step for every parameter of `group` that has a gradient."""
        # Parameters that share a step count (all of them, unless some were frozen for a while) are updated
        # together by multi-tensor `torch._foreach_*` kernels: the same operations in the same order as
        # one tensor at a time, so the same numbers, without a Python loop of ~6 kernels per parameter.
        by_step: dict[int, list[Tensor]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue  # frozen or unused: no moments, no step count, no decay
            if p.grad.is_sparse:
                raise TypeError("AdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            by_step[state["step"]].append(p)
        for t, params in by_step.items():
            self._update(group, params, t)

    def _update(self, group: dict[str, Any], params: list[Tensor], t: int) -> None:
        """One AdamW step for `params`, all at step count `t`."""
        lr, (beta1, beta2) = group["lr"], group["betas"]
        eps, weight_decay = group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, value=-step_size)
        if weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * weight_decay)


def _check_hyperparameters(*, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if not lr >= 0:
        raise ValueError(f"lr must be a non-negative number, got {lr!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}")


def get_lr_cosine_schedule(
    it: int,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    cosine_cycle_iters: int,
) -> float:
    """Learning rate at iteration `it`: linear warm-up, cosine decay, then a constant floor.

    - `it < T_w`:           `it / T_w · α_max`
    - `T_w <= it <= T_c`:   `α_min + ½ (1 + cos(π (it - T_w) / (T_c - T_w))) (α_max - α_min)`
    - `it > T_c`:           `α_min`

    >>> get_lr_cosine_schedule(5, 1.0, 0.1, warmup_iters=10, cosine_cycle_iters=20)
    0.5
    >>> get_lr_cosine_schedule(15, 1.0, 0.1, warmup_iters=10, cosine_cycle_iters=20)
    0.55
    """
    if warmup_iters < 0 or cosine_cycle_iters < warmup_iters:
        raise ValueError(
            "expected 0 <= warmup_iters <= cosine_cycle_iters, "
            f"got warmup_iters={warmup_iters}, cosine_cycle_iters={cosine_cycle_iters}"
        )
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it > cosine_cycle_iters:
        return min_learning_rate
    if cosine_cycle_iters == warmup_iters:  # an empty cosine phase: the peak, then the floor
        return max_learning_rate
    progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
    return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)


def wsd_lr_schedule(
    it: float,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    total_iters: int,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate at iteration `it` of a warm-up/stable/decay ("trapezoidal") schedule.

    Linear warm-up to `α_max`, `α_max` held, then a linear decay to `α_min` over the last `decay_fraction`
    of the run: from `T_d = max(T_w, (1 - decay_fraction) · T)` to `T`, and `α_min` after. Unlike the cosine,
    the peak lasts most of the run, and the decay can start whenever the budget is known.

    - `it < T_w`:           `it / T_w · α_max`
    - `T_w <= it < T_d`:    `α_max`
    - `T_d <= it < T`:      `α_max - (it - T_d) / (T - T_d) · (α_max - α_min)`
    - `it >= T`:            `α_min`

    >>> wsd_lr_schedule(90, 1.0, 0.1, warmup_iters=10, total_iters=100, decay_fraction=0.2)  # half-way down
    0.55
    """
    if warmup_iters < 0 or total_iters < warmup_iters:
        raise ValueError(
            f"expected 0 <= warmup_iters <= total_iters, got warmup_iters={warmup_iters}, total_iters={total_iters}"
        )
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction!r}")
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it >= total_iters:
        return min_learning_rate
    decay_start = max(float(warmup_iters), (1.0 - decay_fraction) * total_iters)
    if it < decay_start:
        return max_learning_rate
    progress = (it - decay_start) / (total_iters - decay_start)
    return max_learning_rate - progress * (max_learning_rate - min_learning_rate)


@torch.no_grad()
def gradient_clipping(parameters: Iterable[Tensor], max_l2_norm: float, eps: float = 1e-6) -> float:
    """Scale all gradients in place so that their global L2 norm is at most `max_l2_norm`.

    The norm is taken over the gradients of all `parameters` together (parameters without a gradient are
    skipped). When it exceeds the limit every gradient is multiplied by `max_l2_norm / (norm + eps)`;
    otherwise nothing changes. Returns the global norm before clipping (inf or nan flags a bad step).
    """
    if not max_l2_norm >= 0:
        raise ValueError(f"max_l2_norm must be non-negative, got {max_l2_norm!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    # Per-tensor norms in float32, then the norm of those norms: the global norm without concatenating.
    norms = torch.stack([torch.linalg.vector_norm(g.float()).to(grads[0].device) for g in grads])
    total_norm = torch.linalg.vector_norm(norms).item()
    if total_norm > max_l2_norm:
        scale = max_l2_norm / (total_norm + eps)
        for g in grads:
            g.mul_(scale)
    return total_norm
