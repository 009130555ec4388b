"""Scenarios: harness code that drives the student's adapters through several calls (a training loop, a
checkpoint round trip, clipping given gradients...) and returns plain data for the tests to judge.

    trajectory = scenarios.run("adamw_trajectory")                      # the student's AdamW
    expected = scenarios.adamw_trajectory(torch.optim.AdamW)            # the same loop, torch's AdamW

`run(name, ...)` calls the scenario where student code runs: in this process under `make test`, in the
sandboxed worker under `cs336 grade` (the grader's plugin sets `REMOTE`). Calling a scenario function
directly always runs it here, which is how a test computes its expectation with a torch built-in.

Everything here holds inputs and procedures only, never an expected value: this file is shipped to the
worker beside the submission. Arguments and results are what the worker's wire format carries (tensors,
arrays, numbers, strings, bytes, lists, tuples, dicts, paths) or handles of worker-side objects.
"""

from __future__ import annotations

import ctypes
import gc
import io
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tests import adapters

REMOTE: Any = None  # the grader's worker client, under `cs336 grade` (never set inside the worker)


def run(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run the scenario `name` where student code runs (see the module docstring)."""
    if REMOTE is not None:
        return REMOTE.call("scenarios", name, args, kwargs)
    function = globals().get(name)
    if name.startswith("_") or name == "run" or not callable(function):
        raise ValueError(f"expected the name of a scenario of {__name__}, got {name!r}")
    return function(*args, **kwargs)


def _adamw(optimizer_cls: Callable[..., torch.optim.Optimizer] | None) -> Callable[..., torch.optim.Optimizer]:
    return adapters.get_adamw_cls() if optimizer_cls is None else optimizer_cls


# ----------------------------------------------------------------------------------------------- AdamW
ADAMW_STEPS = 60
_LATE_START = 10  # a parameter that first receives a gradient at this step (exposes a shared step count)
_LR_CHANGE = 30  # every group's lr is halved here, as a schedule would (exposes an lr cached in __init__)


def optimizer_ancestry() -> list[str]:
    """`module.qualname` of every class in the MRO of the student's AdamW class."""
    return [f"{c.__module__}.{c.__qualname__}" for c in _adamw(None).__mro__]


def adamw_trajectory(optimizer_cls: Callable[..., torch.optim.Optimizer] | None = None) -> list[list[Tensor]]:
    """Train a tiny network with AdamW and return every parameter after every step.

    Two parameter groups with different lr, betas, eps and weight decay; a frozen parameter (never has a
    gradient, so it must never move, not even by weight decay); a parameter that starts receiving gradients
    only at step `_LATE_START`; the learning rates halved at step `_LR_CHANGE`.
    """
    generator = torch.Generator().manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(8, 6, generator=generator) * 0.4)
    b1 = torch.nn.Parameter(torch.randn(8, generator=generator) * 0.1)
    w2 = torch.nn.Parameter(torch.randn(4, 8, generator=generator) * 0.35)
    b2 = torch.nn.Parameter(torch.randn(4, generator=generator) * 0.1)
    late = torch.nn.Parameter(torch.randn(4, generator=generator))
    frozen = torch.nn.Parameter(torch.randn(3, generator=generator), requires_grad=False)
    inputs = torch.randn(ADAMW_STEPS, 16, 6, generator=generator)
    targets = torch.randn(ADAMW_STEPS, 16, 4, generator=generator)
    params = [w1, w2, frozen, b1, b2, late]
    optimizer = _adamw(optimizer_cls)(
        [
            {"params": [w1, w2, frozen]},
            {"params": [b1, b2, late], "lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-10, "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.1,
    )
    trajectory = []
    for step in range(ADAMW_STEPS):
        if step == _LR_CHANGE:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
        optimizer.zero_grad(set_to_none=True)
        out = torch.tanh(inputs[step] @ w1.T + b1) @ w2.T + b2
        if step >= _LATE_START:
            out = out + late
        F.mse_loss(out, targets[step]).backward()
        optimizer.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def adamw_steps(
    initial: list[Tensor], grads: list[list[Tensor]], hyperparameters: dict[str, Any], optimizer_cls: Any = None
) -> list[Tensor]:
    """Parameters `initial` after one optimizer step per entry of `grads` (the gradients of that step)."""
    params = [torch.nn.Parameter(t.clone()) for t in initial]
    optimizer = _adamw(optimizer_cls)(params, **hyperparameters)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach().clone() for p in params]


def adamw_linear_regression(
    weight0: Tensor, bias0: Tensor, inputs: Tensor, targets: Tensor, hyperparameters: dict[str, Any]
) -> tuple[list[Tensor], list[Tensor]]:
    """Fit `x @ W.T + b` to `targets` by MSE, one step per row of `inputs`; (weights, biases) after each."""
    weight, bias = torch.nn.Parameter(weight0.clone()), torch.nn.Parameter(bias0.clone())
    optimizer = _adamw(None)([weight, bias], **hyperparameters)
    weights, biases = [], []
    for step in range(inputs.shape[0]):
        optimizer.zero_grad()
        F.mse_loss(inputs[step] @ weight.T + bias, targets[step]).backward()
        optimizer.step()
        weights.append(weight.detach().clone())
        biases.append(bias.detach().clone())
    return weights, biases


def _quadratic_setup(optimizer_cls: Any) -> tuple[torch.nn.Parameter, torch.optim.Optimizer, Tensor]:
    theta = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5, 2.0]))
    optimizer = _adamw(optimizer_cls)([theta], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    return theta, optimizer, torch.tensor([0.3, 0.2, -0.4, 1.0])


def adamw_with_closure(steps: int = 5, optimizer_cls: Any = None) -> tuple[Tensor, list[float | None]]:
    """`step(closure)` on a quadratic: (final parameters, what each `step` returned)."""
    theta, optimizer, target = _quadratic_setup(optimizer_cls)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = ((theta - target) ** 2).sum()
        loss.backward()
        return loss

    returned = []
    for _ in range(steps):
        loss = optimizer.step(closure)
        returned.append(None if loss is None else float(torch.as_tensor(loss).detach()))
    return theta.detach().clone(), returned


def adamw_state_dict_resume(optimizer_cls: Any = None) -> tuple[Tensor, Tensor]:
    """(20 uninterrupted steps, 10 steps + state_dict into a fresh optimizer + 10 steps) on a quartic."""

    def loss_of(theta: torch.nn.Parameter, target: Tensor) -> Tensor:
        return ((theta - target) ** 2).sum() + theta.pow(4).sum()

    def train(theta: torch.nn.Parameter, optimizer: torch.optim.Optimizer, target: Tensor, steps: int) -> None:
        for _ in range(steps):
            optimizer.zero_grad()
            loss_of(theta, target).backward()
            optimizer.step()

    theta, optimizer, target = _quadratic_setup(optimizer_cls)
    train(theta, optimizer, target, 20)
    resumed, first_optimizer, _ = _quadratic_setup(optimizer_cls)
    train(resumed, first_optimizer, target, 10)
    state = first_optimizer.state_dict()
    fresh = _adamw(optimizer_cls)([resumed], lr=123.0, betas=(0.5, 0.5), eps=1.0, weight_decay=9.0)  # overwritten
    fresh.load_state_dict(state)
    train(resumed, fresh, target, 10)
    return theta.detach().clone(), resumed.detach().clone()


# ------------------------------------------------------------------------------- cross-entropy, clipping
def cross_entropy_with_grad(logits: Tensor, targets: Tensor, loss_fn: Any = None) -> tuple[Tensor, Tensor]:
    """(loss, d loss / d logits) of the student's cross-entropy (or `loss_fn`)."""
    leaf = logits.detach().clone().requires_grad_(True)
    loss = (adapters.run_cross_entropy if loss_fn is None else loss_fn)(leaf, targets)
    loss.backward()
    return loss.detach(), leaf.grad


def clipped_gradients(
    values: list[Tensor], grads: list[Tensor | None], max_l2_norm: float, one_shot: bool = False, clip: Any = None
) -> list[Tensor | None]:
    """The gradients after clipping parameters `values` holding `grads` (None: no gradient)."""
    params = [torch.nn.Parameter(v.clone()) for v in values]
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.clone()
    (adapters.run_gradient_clipping if clip is None else clip)(iter(params) if one_shot else params, max_l2_norm)
    return [None if p.grad is None else p.grad.clone() for p in params]


def clip_on_a_model(max_l2_norm: float, clip: Any = None) -> list[tuple[str, Tensor | None]]:
    """Clip a small MLP's gradients (its last bias frozen) through `model.parameters()`: (name, grad)s."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    model[2].bias.requires_grad_(False)  # a frozen parameter: no gradient, must be skipped
    _affine(model[2], torch.relu(_affine(model[0], torch.randn(10, 6) * 10))).pow(2).sum().backward()
    (adapters.run_gradient_clipping if clip is None else clip)(model.parameters(), max_l2_norm)
    return [(name, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()]


# NOTE: the harness's own models run beside student code in the grader's worker, where the kernels behind
# the forbidden built-ins (linear, embedding, cross-entropy, ...) do not exist (`cs336_grading/grader/audit.py`):
# their forward passes are plain maths. torch.nn modules still hold (and initialise) the parameters.
def _affine(layer: torch.nn.Linear, x: Tensor) -> Tensor:
    return x @ layer.weight.T + layer.bias


def _mean_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return (torch.logsumexp(logits, -1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)).mean()


# --------------------------------------------------------------------------------------- checkpointing
class _TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.hidden = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, 11)

    def forward(self, tokens: Tensor) -> Tensor:
        return _affine(self.out, torch.relu(_affine(self.hidden, self.embed.weight[tokens])))


def _fresh(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = _TinyNet()
    # torch's AdamW, not the student's: checkpointing is graded on its own (issue 13).
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    return model, optimizer


def _batches(count: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(99)
    return [
        (torch.randint(0, 11, (4, 6), generator=generator), torch.randint(0, 11, (4, 6), generator=generator))
        for _ in range(count)
    ]


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> list[float]:
    losses = []
    for tokens, targets in batches:
        optimizer.zero_grad()
        loss = _mean_cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def checkpoint_resume(kind: str) -> dict[str, Any]:
    """14 steps straight vs 8 steps, save/load into fresh objects (other seed) and 6 more steps.

    `kind` is the save target: "path" (a `Path`), "str-path" (a `str`) or "file-object" (a `BytesIO`).
    """
    batches = _batches(14)
    model, optimizer = _fresh(seed=0)
    uninterrupted = _train(model, optimizer, batches)
    first_model, first_optimizer = _fresh(seed=0)
    _train(first_model, first_optimizer, batches[:8])
    path = Path(tempfile.mkdtemp(prefix="ckpt-")) / "checkpoint.pt"
    target: Any = {"path": path, "str-path": str(path), "file-object": io.BytesIO()}[kind]
    adapters.run_save_checkpoint(first_model, first_optimizer, 8, target)
    if kind == "file-object":
        target.seek(0)
    resumed_model, resumed_optimizer = _fresh(seed=123)  # different weights: all must come from the file
    iteration = adapters.run_load_checkpoint(target, resumed_model, resumed_optimizer)
    loaded = _state(resumed_model)
    resumed = _train(resumed_model, resumed_optimizer, batches[8:])
    return {
        "iteration": iteration,
        "saved": _state(first_model),
        "loaded": loaded,
        "uninterrupted": uninterrupted,
        "resumed": resumed,
        "final_uninterrupted": _state(model),
        "final_resumed": _state(resumed_model),
    }


def checkpoint_optimizer_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(state_dict of a trained optimizer, state_dict of a fresh one after loading its checkpoint)."""
    model, optimizer = _fresh(seed=1)
    _train(model, optimizer, _batches(3))
    path = Path(tempfile.mkdtemp(prefix="ckpt-")) / "ckpt.pt"
    adapters.run_save_checkpoint(model, optimizer, 3, path)
    other_model, other_optimizer = _fresh(seed=2)
    adapters.run_load_checkpoint(path, other_model, other_optimizer)
    return optimizer.state_dict(), other_optimizer.state_dict()


def checkpoint_iterations(iterations: list[int]) -> list[int]:
    """Save one checkpoint per iteration number, then load them back in reverse order."""
    model, optimizer = _fresh(seed=3)
    directory = Path(tempfile.mkdtemp(prefix="ckpt-"))
    for iteration in iterations:
        adapters.run_save_checkpoint(model, optimizer, iteration, directory / f"ckpt-{iteration}.pt")
    return [adapters.run_load_checkpoint(directory / f"ckpt-{i}.pt", model, optimizer) for i in reversed(iterations)]


# ------------------------------------------------------------------------------------------- get_batch
class _DeviceRequests(torch.overrides.TorchFunctionMode):
    """Records every device that torch is asked to place a tensor on, and places it on the CPU instead.

    Covers every way of naming a device: `device=` of any torch function (`torch.tensor`, `as_tensor`,
    `randint`, `empty`...), `Tensor.to(device)`, `Tensor.cuda(index)`; `pin_memory()` becomes a no-op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def _device(self, value: Any) -> Any:
        if isinstance(value, (str, torch.device)) or (isinstance(value, int) and not isinstance(value, bool)):
            try:
                device = torch.device(value) if not isinstance(value, int) else torch.device("cuda", value)
            except (RuntimeError, TypeError, ValueError):
                return value  # not a device (e.g. a dtype name): left alone
            self.requests.append(str(device))
            return "cpu"
        return value

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is Tensor.pin_memory:
            return args[0]
        if func is Tensor.cuda:
            index = args[1] if len(args) > 1 else kwargs.get("device")
            device = torch.device("cuda", index) if isinstance(index, int) else torch.device(index or "cuda")
            self.requests.append(str(device))
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = self._device(kwargs["device"])
        if func is Tensor.to:
            args = (args[0], *(self._device(a) for a in args[1:]))
        return func(*args, **kwargs)


def get_batch_device_requests(dataset: Any, batch_size: int, context_length: int, device: str) -> tuple:
    """(x, y, the devices torch was asked for) of `get_batch(..., device)`, every tensor kept on the CPU.

    Tests where a batch goes without the device itself: "cuda:1" on a machine without a second GPU (while
    it runs, `torch.cuda.is_available()` is True and `torch.cuda.device_count()` is 2).
    """
    mode = _DeviceRequests()
    # A get_batch may check the device first (torch.cuda.device_count()): this machine claims two GPUs.
    saved = torch.cuda.is_available, torch.cuda.device_count
    torch.cuda.is_available, torch.cuda.device_count = (lambda: True), (lambda: 2)  # type: ignore[assignment]
    try:
        with mode:
            x, y = adapters.run_get_batch(dataset, batch_size, context_length, device)
    finally:
        torch.cuda.is_available, torch.cuda.device_count = saved  # type: ignore[assignment]
    return x, y, mode.requests


# ------------------------------------------------------------------------------------------- tokenizer
def encode_iterable_of_file(tokenizer: Any, path: Path) -> list[int]:
    """`list(tokenizer.encode_iterable(f))` over the text file `path` opened as a file object."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(tokenizer.encode_iterable(f))


def release_free_memory() -> None:
    """Hand back to the operating system the memory that earlier calls freed but the allocator kept.

    A memory test measures how far the peak resident memory grows during a call. Memory that earlier work
    freed (glibc keeps freed heap pages, up to tens of MB after a large tensor) can absorb a whole-file read
    without any growth, so a wrong implementation would pass by luck of the test order. `malloc_trim(0)`
    returns those pages; where the C library has no such call (not glibc) nothing more is done.
    """
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def count_encode_iterable(tokenizer: Any, path: Path) -> int:
    """How many ids `encode_iterable` yields over the file `path`, consumed lazily (nothing kept)."""
    with open(path, encoding="utf-8") as f:
        return _count(tokenizer.encode_iterable(f))


def _count(ids: Iterable[int] | Iterator[int]) -> int:
    return sum(1 for _ in ids)
