"""Catalogued mistakes of the training primitives (cross-entropy, clipping, AdamW, cosine schedule).

Each function is deliberately wrong in one named way (see `tests/hints.py`). Inputs are keyword arguments
named as the tests pass them: `inputs`/`targets` (cross-entropy), `grads`/`max_l2_norm` (clipping, the
gradients before clipping; the output is the list of clipped gradients), `it`/`its` and the schedule's
parameters, and nothing for AdamW (its output is the trajectory of the graded scenario).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from tests.hints import mistake
from tests.scenarios import adamw_trajectory

# ------------------------------------------------------------------------------------------ cross-entropy


def _flat(inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    return inputs.reshape(-1, inputs.shape[-1]), targets.reshape(-1)


@mistake("cross_entropy", "the cross-entropy summed over positions instead of averaged")
def ce_summed(inputs: Tensor, targets: Tensor, **_: Any) -> Tensor:
    logits, t = _flat(inputs.double(), targets)
    return (logits.logsumexp(-1) - logits.gather(-1, t[:, None])[:, 0]).sum().to(inputs.dtype)


@mistake("cross_entropy", "the cross-entropy divided by the first dimension only (batch), not by every position")
def ce_mean_over_batch_only(inputs: Tensor, targets: Tensor, **_: Any) -> Tensor:
    logits, t = _flat(inputs.double(), targets)
    return ((logits.logsumexp(-1) - logits.gather(-1, t[:, None])[:, 0]).sum() / inputs.shape[0]).to(inputs.dtype)


@mistake("cross_entropy", "log(softmax(x)) computed as written (no log-sum-exp): it overflows or takes log(0)")
def ce_log_of_softmax(inputs: Tensor, targets: Tensor, **_: Any) -> Tensor:
    logits, t = _flat(inputs, targets)
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    return -p.gather(-1, t[:, None]).log().mean()


@mistake("cross_entropy", "log-sum-exp without subtracting the maximum first (exp overflows)")
def ce_unshifted_logsumexp(inputs: Tensor, targets: Tensor, **_: Any) -> Tensor:
    logits, t = _flat(inputs, targets)
    return (logits.exp().sum(-1).log() - logits.gather(-1, t[:, None])[:, 0]).mean()


# ------------------------------------------------------------------------------------------ clipping


def _norm(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([t.double().flatten() for t in tensors]).norm()


@mistake("clipping", "each parameter's gradient clipped by its own norm instead of the global norm")
def clip_per_parameter(grads: list[Tensor], max_l2_norm: float, **_: Any) -> list[Tensor]:
    return [g * min(1.0, max_l2_norm / (float(g.double().norm()) + 1e-6)) for g in grads]


@mistake("clipping", "gradients always rescaled to the limit, even when their norm is below it")
def clip_always(grads: list[Tensor], max_l2_norm: float, **_: Any) -> list[Tensor]:
    return [g * (max_l2_norm / (float(_norm(grads)) + 1e-6)) for g in grads]


@mistake("clipping", "the global norm taken as the sum of the per-parameter norms, not sqrt of all squares")
def clip_sum_of_norms(grads: list[Tensor], max_l2_norm: float, **_: Any) -> list[Tensor]:
    total = sum(float(g.double().norm()) for g in grads)
    return [g * min(1.0, max_l2_norm / (total + 1e-6)) for g in grads]


@mistake("clipping", "the scale max_l2_norm/norm without the stated eps (it is max_l2_norm/(norm + 1e-6))")
def clip_no_eps(grads: list[Tensor], max_l2_norm: float, **_: Any) -> list[Tensor]:
    total = float(_norm(grads))
    return [g * (max_l2_norm / total) if total > max_l2_norm else g for g in grads]


@mistake("clipping", "each gradient entry clamped to [-max_l2_norm, max_l2_norm] (clipping by value, not norm)")
def clip_by_value(grads: list[Tensor], max_l2_norm: float, **_: Any) -> list[Tensor]:
    return [g.clamp(-max_l2_norm, max_l2_norm) for g in grads]


# ------------------------------------------------------------------------------------------ AdamW


def _wrong_adamw(
    *,
    coupled: bool = False,
    bias_correction: bool = True,
    shared_step: bool = False,
    cached_lr: bool = False,
    decay_by_alpha_t: bool = False,
) -> type[torch.optim.Optimizer]:
    class WrongAdamW(torch.optim.Optimizer):
        def __init__(self, params: Any, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
            super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
            self.first_lrs = [g["lr"] for g in self.param_groups]
            self.t = 0

        @torch.no_grad()
        def step(self, closure: Callable[[], Any] | None = None) -> None:
            self.t += 1
            for group, first_lr in zip(self.param_groups, self.first_lrs):
                for p in (p for p in group["params"] if p.grad is not None):
                    self._move(p, group, first_lr if cached_lr else group["lr"])

        def _move(self, p: Tensor, group: dict[str, Any], lr: float) -> None:
            (b1, b2), eps, lam = group["betas"], group["eps"], group["weight_decay"]
            state = self.state[p]
            state["t"] = state.get("t", 0) + 1
            t = self.t if shared_step else state["t"]
            g = p.grad + lam * p if coupled else p.grad
            m = state.setdefault("m", torch.zeros_like(p)).mul_(b1).add_(g, alpha=1 - b1)
            v = state.setdefault("v", torch.zeros_like(p)).mul_(b2).addcmul_(g, g, value=1 - b2)
            alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t) if bias_correction else lr
            if not coupled:
                p.mul_(1 - (alpha if decay_by_alpha_t else lr) * lam)
            p.addcdiv_(m, v.sqrt().add_(eps), value=-alpha)

    return WrongAdamW


def _adamw_mistake(name: str, says: str, **options: bool) -> None:
    def fn(**_: Any) -> list[list[Tensor]]:
        return adamw_trajectory(_wrong_adamw(**options))

    fn.__name__ = name
    mistake("adamw", says)(fn)


_adamw_mistake(
    "adamw_coupled_l2",
    "Adam with L2 regularisation (λθ added to the gradient) instead of decoupled weight decay",
    coupled=True,
)
_adamw_mistake("adamw_no_bias_correction", "AdamW without bias correction", bias_correction=False)
_adamw_mistake(
    "adamw_shared_step",
    "AdamW with one step count shared by every parameter (a parameter whose gradients start late needs its own)",
    shared_step=True,
)
_adamw_mistake(
    "adamw_cached_lr", "AdamW reading lr once in __init__ (a changed param_groups lr is ignored)", cached_lr=True
)
_adamw_mistake(
    "adamw_decay_by_alpha_t",
    "AdamW decaying by the bias-corrected α_t instead of α (θ -= α λ θ)",
    decay_by_alpha_t=True,
)


# ------------------------------------------------------------------------------------------ cosine schedule


def _schedule_mistake(name: str, says: str, rule: Callable[[int, float, float, int, int], float]) -> None:
    def fn(
        its: list[int] | None = None,
        it: int | None = None,
        *,
        max_learning_rate: float,
        min_learning_rate: float,
        warmup_iters: int,
        cosine_cycle_iters: int,
        **_: Any,
    ) -> Any:
        args = (max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters)
        return [rule(t, *args) for t in its] if its is not None else rule(it, *args)  # type: ignore[arg-type]

    fn.__name__ = name
    mistake("cosine", says)(fn)


def _cosine(angle: float, hi: float, lo: float) -> float:
    return lo + 0.5 * (1 + math.cos(angle)) * (hi - lo)


def _off_by_one(t: int, hi: float, lo: float, tw: int, tc: int) -> float:
    if t < tw:
        return (t + 1) / tw * hi
    return _cosine(math.pi * (t - tw) / (tc - tw), hi, lo) if t <= tc else lo


def _over_tc(t: int, hi: float, lo: float, tw: int, tc: int) -> float:
    if t < tw:
        return t / tw * hi
    return _cosine(math.pi * (t - tw) / tc, hi, lo) if t <= tc else lo


def _from_zero(t: int, hi: float, lo: float, tw: int, tc: int) -> float:
    if t < tw:
        return t / tw * hi
    return _cosine(math.pi * t / tc, hi, lo) if t <= tc else lo


_schedule_mistake(
    "cosine_warmup_off_by_one", "a warm-up off by one ((t + 1)/T_w · α_max instead of t/T_w · α_max)", _off_by_one
)
_schedule_mistake("cosine_angle_over_tc", "a cosine angle π(t - T_w)/T_c instead of π(t - T_w)/(T_c - T_w)", _over_tc)
_schedule_mistake(
    "cosine_angle_from_zero", "a cosine angle π t/T_c that does not start at the end of the warm-up", _from_zero
)
