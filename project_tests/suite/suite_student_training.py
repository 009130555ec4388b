"""A second, independent implementation of the training adapters (loss, clipping, AdamW, schedule, batches,
checkpoints), written like a student would, with switches that each turn one realistic mistake on.

Defaults are correct; see `suite_student_model.py` for the idea and `suite_corpus.py` for its use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor


def cross_entropy(inputs: Tensor, targets: Tensor, *, mistake: str = "") -> Tensor:
    logits = inputs.reshape(-1, inputs.shape[-1])
    t = targets.reshape(-1)
    picked = logits[torch.arange(len(t)), t]
    if mistake == "log_of_softmax":
        p = logits.exp() / logits.exp().sum(-1, keepdim=True)
        return -p[torch.arange(len(t)), t].log().mean()
    if mistake == "unshifted":
        lse = logits.exp().sum(-1).log()
    else:
        m = logits.max(-1).values
        lse = m + (logits - m[:, None]).exp().sum(-1).log()
    losses = lse - picked
    if mistake == "summed":
        return losses.sum()
    if mistake == "mean_over_batch":
        return losses.sum() / inputs.shape[0]
    return losses.mean()


def gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float, *, mistake: str = "") -> None:
    grads = [p.grad for p in parameters if p.grad is not None]
    if mistake == "by_value":
        for g in grads:
            g.clamp_(-max_l2_norm, max_l2_norm)
        return
    if mistake == "per_parameter":
        for g in grads:
            g.mul_(min(1.0, max_l2_norm / (float(g.norm()) + 1e-6)))
        return
    if mistake == "sum_of_norms":
        total = sum(float(g.norm()) for g in grads)
    else:
        total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    if total > max_l2_norm or mistake == "always":
        for g in grads:
            g.mul_(max_l2_norm / total if mistake == "no_eps" else max_l2_norm / (total + 1e-6))


def adamw_class(*, decay: str = "after", mistake: str = "") -> type[torch.optim.Optimizer]:
    """AdamW with decoupled decay applied after (the 2025 handout) or before (torch, the paper) the update."""

    class StudentAdamW(torch.optim.Optimizer):
        def __init__(
            self,
            params: Any,
            lr: float = 1e-3,
            betas: tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-8,
            weight_decay: float = 0.01,
        ) -> None:
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
            self.initial_lrs = [group["lr"] for group in self.param_groups]
            self.global_t = 0

        def step(self, closure: Callable[[], Any] | None = None) -> Any:
            loss = None if closure is None else closure()
            self.global_t += 1
            with torch.no_grad():
                for group, initial_lr in zip(self.param_groups, self.initial_lrs):
                    self._update(group, initial_lr)
            return loss

        def _update(self, group: dict[str, Any], initial_lr: float) -> None:
            lr = initial_lr if mistake == "cached_lr" else group["lr"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + group["weight_decay"] * p if mistake == "coupled" else p.grad
                state = self.state[p]
                t = state["t"] = state.get("t", 0) + 1
                if mistake == "shared_step":
                    t = self.global_t
                m = state["m"] = beta1 * state.get("m", torch.zeros_like(p)) + (1 - beta1) * g
                v = state["v"] = beta2 * state.get("v", torch.zeros_like(p)) + (1 - beta2) * g * g
                if mistake == "no_bias_correction":
                    alpha = lr
                else:
                    alpha = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                shrink = 1 - (alpha if mistake == "decay_by_alpha_t" else lr) * group["weight_decay"]
                if mistake != "coupled" and decay == "before":
                    p.mul_(shrink)
                p.sub_(alpha * m / (v.sqrt() + group["eps"]))
                if mistake != "coupled" and decay == "after":
                    p.mul_(shrink)

    return StudentAdamW


def cosine(
    it: int,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    cosine_cycle_iters: int,
    *,
    mistake: str = "",
) -> float:
    hi, lo, tw, tc = max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters
    if it < tw:
        return (it + 1) * hi / tw if mistake == "warmup_off_by_one" else it * hi / tw
    if it > tc:
        return lo
    progress = {"over_tc": (it - tw) / tc, "from_zero": it / tc}.get(mistake, (it - tw) / max(tc - tw, 1))
    return lo + (hi - lo) * (1 + math.cos(math.pi * progress)) / 2


def get_batch(
    dataset: np.ndarray, batch_size: int, context_length: int, device: str, *, mistake: str = ""
) -> tuple[Tensor, Tensor]:
    if mistake == "always_raises":
        raise ValueError("not implemented")
    high = len(dataset) - context_length + (1 if mistake == "off_by_one" else 0)
    if mistake == "value_error_for_device" and device != "cpu":
        raise ValueError(f"bad device {device}")
    starts = torch.randint(0, high, (batch_size,))  # raises RuntimeError when high <= 0
    windows = np.stack([np.asarray(dataset[s : s + context_length + 1], dtype=np.int64) for s in starts.tolist()])
    tokens = torch.from_numpy(windows)
    if mistake == "device_type_only":  # "cuda:1" becomes "cuda", the current GPU
        tokens = tokens.to(torch.device(device).type)
    elif mistake != "device_ignored":
        tokens = tokens.to(device)
    return tokens[:, :-1], tokens[:, 1:]


def save_checkpoint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int, out: Any, *, mistake: str = ""
) -> None:
    state: dict[str, Any] = {"model": model.state_dict(), "iteration": iteration}
    if mistake != "no_optimizer":
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, out)


def load_checkpoint(src: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, mistake: str = "") -> int:
    state = torch.load(src, weights_only=False)
    model.load_state_dict(state["model"])
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return 0 if mistake == "iteration_lost" else state["iteration"]


def adapters(**switches: Any) -> dict[str, Any]:
    """The training adapters of this implementation, each with the given keyword switches."""

    def bind(fn: Any) -> Any:
        return lambda *args, **kwargs: fn(*args, **kwargs, **switches.get(fn.__name__, {}))

    adamw = adamw_class(**switches.get("adamw", {}))
    return {
        "run_cross_entropy": bind(cross_entropy),
        "run_gradient_clipping": bind(gradient_clipping),
        "get_adamw_cls": lambda: adamw,
        "run_get_lr_cosine_schedule": bind(cosine),
        "run_get_batch": bind(get_batch),
        "run_save_checkpoint": bind(save_checkpoint),
        "run_load_checkpoint": bind(load_checkpoint),
    }
