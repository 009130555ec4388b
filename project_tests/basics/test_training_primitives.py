"""The reference's training primitives beyond the graded contract: the AdamW tolerance proof (mutants),
error messages, the validation iterator, token files, checkpoint format, atomic writes and RNG state."""

from __future__ import annotations

import io
import math
import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_basics.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from cs336_basics.data import get_batch, iterate_batches, load_tokens, resolve_device
from cs336_basics.loss import cross_entropy, perplexity
from cs336_basics.optimizer import AdamW, get_lr_cosine_schedule, gradient_clipping
from oracle import training as oracle

# ============================================================================ AdamW: the tolerance proof


class _HandoutAdam(torch.optim.Optimizer):
    """Per-parameter state as the handout writes it; subclasses override `update` to be right or wrong."""

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.global_step = 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.global_step += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                self.update(p, p.grad, state, group)

    @staticmethod
    def moments(grad: torch.Tensor, state: dict, beta1: float, beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
        state["m"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return state["m"], state["v"]

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


def _corrected(lr: float, beta1: float, beta2: float, t: int) -> float:
    return lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)


class DecayAfterStep(_HandoutAdam):
    """Correct: the handout's order (Adam step, then θ -= αλθ)."""

    def update(self, p, grad, state, group):  # noqa: ANN001, ANN201
        (beta1, beta2), lr = group["betas"], group["lr"]
        m, v = self.moments(grad, state, beta1, beta2)
        p.addcdiv_(m, v.sqrt() + group["eps"], value=-_corrected(lr, beta1, beta2, state["t"]))
        p.mul_(1 - lr * group["weight_decay"])


class DecayBeforeStep(_HandoutAdam):
    """Correct: torch's order (θ -= αλθ, then the Adam step)."""

    def update(self, p, grad, state, group):  # noqa: ANN001, ANN201
        (beta1, beta2), lr = group["betas"], group["lr"]
        p.mul_(1 - lr * group["weight_decay"])
        m, v = self.moments(grad, state, beta1, beta2)
        p.addcdiv_(m, v.sqrt() + group["eps"], value=-_corrected(lr, beta1, beta2, state["t"]))


class BiasCorrectedMoments(_HandoutAdam):
    """Correct: m̂ = m/(1-β1^t), v̂ = v/(1-β2^t), θ -= α m̂/(sqrt(v̂)+ε) (ε on v̂, as torch)."""

    def update(self, p, grad, state, group):  # noqa: ANN001, ANN201
        (beta1, beta2), lr, t = group["betas"], group["lr"], state["t"]
        m, v = self.moments(grad, state, beta1, beta2)
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        p.addcdiv_(m_hat, v_hat.sqrt() + group["eps"], value=-lr)
        p.mul_(1 - lr * group["weight_decay"])


class CoupledL2(_HandoutAdam):
    """Wrong: Adam with L2 regularisation (λθ added to the gradient) instead of decoupled decay."""

    def update(self, p, grad, state, group):  # noqa: ANN001, ANN201
        (beta1, beta2), lr = group["betas"], group["lr"]
        m, v = self.moments(grad + group["weight_decay"] * p, state, beta1, beta2)
        p.addcdiv_(m, v.sqrt() + group["eps"], value=-_corrected(lr, beta1, beta2, state["t"]))


class NoBiasCorrection(_HandoutAdam):
    """Wrong: θ -= α m/(sqrt(v)+ε) without the bias correction."""

    def update(self, p, grad, state, group):  # noqa: ANN001, ANN201
        (beta1, beta2), lr = group["betas"], group["lr"]
        m, v = self.moments(grad, state, beta1, beta2)
        p.addcdiv_(m, v.sqrt() + group["eps"], value=-lr)
        p.mul_(1 - lr * group["weight_decay"])


class SharedStepCount(_HandoutAdam):
    """Wrong: one step counter for the whole optimizer instead of one per parameter."""

    def update(self, p, grad, state, group):  # noqa: ANN001, ANN201
        (beta1, beta2), lr = group["betas"], group["lr"]
        m, v = self.moments(grad, state, beta1, beta2)
        p.addcdiv_(m, v.sqrt() + group["eps"], value=-_corrected(lr, beta1, beta2, self.global_step))
        p.mul_(1 - lr * group["weight_decay"])


class DecayByCorrectedStep(_HandoutAdam):
    """Wrong: decay θ by α_t·λ·θ (the bias-corrected step size) instead of α·λ·θ."""

    def update(self, p, grad, state, group):  # noqa: ANN001, ANN201
        (beta1, beta2), lr = group["betas"], group["lr"]
        step_size = _corrected(lr, beta1, beta2, state["t"])
        m, v = self.moments(grad, state, beta1, beta2)
        p.addcdiv_(m, v.sqrt() + group["eps"], value=-step_size)
        p.mul_(1 - step_size * group["weight_decay"])


class LearningRateCachedAtInit(DecayAfterStep):
    """Wrong: reads lr once in __init__, so a schedule writing group["lr"] has no effect."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.initial_lrs = [group["lr"] for group in self.param_groups]

    def update(self, p, grad, state, group):  # noqa: ANN001, ANN201
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        super().update(p, grad, state, {**group, "lr": self.initial_lrs[index]})


@pytest.mark.parametrize(
    "optimizer_cls", [AdamW, DecayAfterStep, DecayBeforeStep, BiasCorrectedMoments], ids=lambda c: c.__name__
)
def test_adamw_comparison_accepts_every_correct_variant(optimizer_cls: type) -> None:
    oracle.assert_adamw_matches_torch(optimizer_cls)


@pytest.mark.parametrize(
    "optimizer_cls",
    [CoupledL2, NoBiasCorrection, SharedStepCount, DecayByCorrectedStep, LearningRateCachedAtInit],
    ids=lambda c: c.__name__,
)
def test_adamw_comparison_rejects_mistakes(optimizer_cls: type) -> None:
    with pytest.raises(AssertionError):
        oracle.assert_adamw_matches_torch(optimizer_cls)


def test_adamw_margins_are_wide() -> None:
    """The correct variants sit >= 10x inside the tolerance and every mistake >= 10x outside it."""

    def max_deviation(optimizer_cls: type) -> float:
        expected = oracle.adamw_scenario(torch.optim.AdamW)
        actual = oracle.adamw_scenario(optimizer_cls)
        pairs = [(a, e) for sa, se in zip(actual, expected, strict=True) for a, e in zip(sa, se, strict=True)]
        return max((a - e).abs().max().item() for a, e in pairs)

    for correct in (AdamW, DecayAfterStep, DecayBeforeStep):
        assert max_deviation(correct) * 10 <= oracle.ADAMW_ATOL, correct.__name__
    for wrong in (CoupledL2, NoBiasCorrection, SharedStepCount, DecayByCorrectedStep):
        assert max_deviation(wrong) >= 10 * oracle.ADAMW_ATOL, wrong.__name__


def test_adamw_never_touches_parameters_without_gradients() -> None:
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = AdamW([used, unused], lr=0.1, weight_decay=0.5)
    used.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(unused.detach(), torch.ones(3)), "no gradient: no decay either"
    assert unused not in optimizer.state and optimizer.state[used]["step"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
    ids=["lr", "betas", "eps", "weight_decay"],
)
def test_adamw_rejects_bad_hyperparameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdamW([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_adamw_rejects_sparse_gradients() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        AdamW([p]).step()


# ============================================================================ schedule, clipping, loss


def test_cosine_schedule_rejects_inconsistent_lengths() -> None:
    with pytest.raises(ValueError, match="warmup_iters=10, cosine_cycle_iters=5"):
        get_lr_cosine_schedule(0, 1.0, 0.1, warmup_iters=10, cosine_cycle_iters=5)
    with pytest.raises(ValueError, match="warmup_iters=-1"):
        get_lr_cosine_schedule(0, 1.0, 0.1, warmup_iters=-1, cosine_cycle_iters=5)


def test_cosine_schedule_with_an_empty_cosine_phase() -> None:
    lrs = [get_lr_cosine_schedule(it, 1.0, 0.1, 4, 4) for it in range(6)]
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 0.1])


def test_gradient_clipping_returns_the_pre_clip_norm() -> None:
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    assert gradient_clipping([a, b, c], 1.0) == pytest.approx(5.0)
    assert torch.linalg.vector_norm(torch.cat([a.grad, b.grad])).item() == pytest.approx(1.0, rel=1e-6)
    assert gradient_clipping([c], 1.0) == 0.0, "no gradients at all: norm 0, nothing to do"
    with pytest.raises(ValueError, match="max_l2_norm"):
        gradient_clipping([a], -1.0)


def test_gradient_clipping_mixed_precision_gradients() -> None:
    a = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((4,), 2.0, dtype=torch.bfloat16), torch.full((4,), 2.0)
    assert gradient_clipping([a, b], 1.0) == pytest.approx(math.sqrt(32), rel=1e-6)
    assert a.grad.dtype == torch.bfloat16


def test_cross_entropy_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(4,\).*\(4, 2\)"):
        cross_entropy(torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="float32"):
        cross_entropy(torch.zeros(4, 3), torch.zeros(4))


def test_cross_entropy_upcasts_half_precision() -> None:
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0)) * 4
    targets = torch.arange(8)
    loss = cross_entropy(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32
    # bf16 rounding of the logits themselves (8 bits of mantissa) is the only error left.
    torch.testing.assert_close(loss, F.cross_entropy(logits.bfloat16().float(), targets), rtol=1e-6, atol=1e-6)


def test_perplexity() -> None:
    assert perplexity(torch.zeros(2, 3, 10), torch.zeros(2, 3, dtype=torch.long)) == pytest.approx(10.0)
    confident = torch.tensor([[30.0, 0.0]])
    assert perplexity(confident, torch.tensor([0])) == pytest.approx(1.0)


# ============================================================================ batches and token files


def test_get_batch_generators_make_it_reproducible() -> None:
    dataset = np.arange(1000)
    for make in (lambda: torch.Generator().manual_seed(5), lambda: np.random.default_rng(5)):
        first, second = (get_batch(dataset, 8, 16, "cpu", generator=make()) for _ in range(2))
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    torch.manual_seed(3)
    x1, _ = get_batch(dataset, 8, 16, "cpu")
    torch.manual_seed(3)
    x2, _ = get_batch(dataset, 8, 16, "cpu")
    assert torch.equal(x1, x2), "without a generator, torch.manual_seed controls the draw"


@pytest.mark.parametrize(
    ("dataset", "context_length", "error", "message"),
    [
        (np.arange(8), 8, ValueError, "8 tokens, fewer than context_length \\+ 1 = 9"),
        (np.arange(8).reshape(2, 4), 2, ValueError, "1-d"),
        (np.linspace(0, 1, 10), 2, TypeError, "float64"),
        ([1, 2, 3, 4], 2, TypeError, "list"),
        (np.arange(8), 0, ValueError, "context_length must be at least 1"),
    ],
    ids=["too-short", "2d", "float", "list", "zero-context"],
)
def test_get_batch_errors_name_expected_and_actual(
    dataset: Any, context_length: int, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        get_batch(dataset, 2, context_length, "cpu")


@pytest.mark.parametrize("device", ["cuda:99", "gpu", "mps:7"], ids=str)
def test_resolve_device_errors(device: str) -> None:
    with pytest.raises(ValueError, match=repr(device)):
        resolve_device(device)


def test_get_batch_allocates_only_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "tokens.bin"
    with open(path, "wb") as handle:
        handle.truncate(2 * 50_000_000)  # 100 MB sparse file of uint16 tokens
    dataset = np.memmap(path, dtype=np.uint16, mode="r")
    tracemalloc.start()
    try:
        get_batch(dataset, 64, 128, "cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"numpy allocated {peak / 2**20:.1f} MB for a 64 x 129 batch"


@pytest.mark.parametrize(
    ("n", "batch_size", "context_length"),
    [(101, 3, 10), (100, 4, 10), (12, 5, 11), (7, 1, 2)],
    ids=["exact-windows", "tail", "single-window", "batch-of-one"],
)
def test_iterate_batches_covers_every_target_once(n: int, batch_size: int, context_length: int) -> None:
    dataset = np.arange(n, dtype=np.uint16)
    batches = list(iterate_batches(dataset, batch_size, context_length, "cpu"))
    inputs = torch.cat([x.flatten() for x, _ in batches])
    targets = torch.cat([y.flatten() for _, y in batches])
    assert targets.tolist() == list(range(1, n)), "every position after the first is a target exactly once"
    assert torch.equal(targets, inputs + 1)
    assert all(x.dtype == torch.int64 and x.shape[0] <= batch_size for x, _ in batches)
    assert all(x.shape[1] == context_length for x, _ in batches[:-1])
    again = list(iterate_batches(dataset, batch_size, context_length, "cpu"))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True)), "deterministic"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), batch_size=st.integers(1, 9), context_length=st.integers(1, 40))
def test_iterate_batches_property(n: int, batch_size: int, context_length: int) -> None:
    if n < context_length + 1:
        with pytest.raises(ValueError, match="fewer than context_length"):
            next(iterate_batches(np.arange(n), batch_size, context_length, "cpu"))
        return
    batches = list(iterate_batches(np.arange(n), batch_size, context_length, "cpu"))
    assert torch.cat([y.flatten() for _, y in batches]).tolist() == list(range(1, n))
    assert sum(x.shape[0] for x, _ in batches) == math.ceil((n - 1) / context_length)


def test_iterate_batches_weighted_mean_is_the_exact_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    vocab, dataset = 13, np.random.default_rng(0).integers(0, 13, size=58)
    table = torch.randn(vocab, vocab, generator=generator)  # a bigram "model": logits = table[token]
    total, count = 0.0, 0
    for x, y in iterate_batches(dataset, 2, 8, "cpu"):
        total += cross_entropy(table[x], y).item() * y.numel()
        count += y.numel()
    tokens = torch.from_numpy(dataset)
    exact = cross_entropy(table[tokens[:-1]], tokens[1:]).item()
    assert count == len(dataset) - 1 and total / count == pytest.approx(exact, rel=1e-6)


def test_load_tokens_formats_and_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "tokens.npy", np.arange(10, dtype=np.uint16))
    tokens = load_tokens(tmp_path / "tokens.npy")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and tokens[-1] == 9
    np.arange(6, dtype=np.int32).tofile(tmp_path / "tokens.bin")
    assert load_tokens(tmp_path / "tokens.bin", dtype=np.int32).tolist() == list(range(6))

    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_tokens(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="pass dtype="):
        load_tokens(tmp_path / "tokens.bin")
    with pytest.raises(ValueError, match="24 bytes, not a positive multiple of the 16-byte"):
        load_tokens(tmp_path / "tokens.bin", dtype=np.complex128)
    with pytest.raises(ValueError, match="holds uint16 tokens, but dtype=int32"):
        load_tokens(tmp_path / "tokens.npy", dtype=np.int32)
    np.save(tmp_path / "floats.npy", np.zeros(4))
    with pytest.raises(ValueError, match="float64"):
        load_tokens(tmp_path / "floats.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_tokens(tmp_path / "junk.npy")


# ============================================================================ checkpoints


def _model_and_optimizer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer = _model_and_optimizer()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 1, path)
    good = path.read_bytes()

    def crash_half_way(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, optimizer, 2, path)
    assert path.read_bytes() == good, "a failed save must leave the previous checkpoint intact"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"], "no temporary file may be left behind"


def test_checkpoint_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    save_checkpoint(model, optimizer, 1, tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"weights": torch.ones(3)}, tmp_path / "foreign.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    for name, message in [
        ("truncated", "not a readable checkpoint"),
        ("random", "not a readable checkpoint"),
        ("foreign", "keys 'model' and 'iteration', got keys \\['weights'\\]"),
        ("tensor", "expected a dict payload, got Tensor"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_checkpoint(tmp_path / f"{name}.pt", model, optimizer)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt", model, optimizer)
    other = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="do not fit this model"):
        load_checkpoint(tmp_path / "good.pt", other)


def test_checkpoint_without_optimizer(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    save_checkpoint(model, None, 3, tmp_path / "weights.pt")
    assert load_checkpoint(tmp_path / "weights.pt", model) == 3
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "weights.pt", model, optimizer)


class _Compiled(torch.nn.Module):
    """Stands in for torch.compile's wrapper: it holds the model as `_orig_mod` (keys get that prefix)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


def test_checkpoint_compiled_prefixes(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer(seed=0)
    wrapped = _Compiled(model)
    assert all(key.startswith("_orig_mod.") for key in wrapped.state_dict())
    save_checkpoint(wrapped, optimizer, 5, tmp_path / "a.pt")
    assert list(read_checkpoint(tmp_path / "a.pt")["model"]) == list(model.state_dict()), "saved unprefixed"

    # A plain course-style checkpoint written from a compiled model, loaded into an uncompiled one.
    torch.save({"model": wrapped.state_dict(), "optimizer": optimizer.state_dict(), "iteration": 9}, tmp_path / "b.pt")
    fresh, fresh_optimizer = _model_and_optimizer(seed=1)
    assert load_checkpoint(tmp_path / "b.pt", fresh, fresh_optimizer) == 9
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert load_checkpoint(tmp_path / "a.pt", _Compiled(fresh)) == 5, "also into a compiled model"


def test_checkpoint_file_object_and_map_location() -> None:
    model, optimizer = _model_and_optimizer()
    buffer = io.BytesIO()
    save_checkpoint(model, optimizer, 4, buffer)
    buffer.seek(0)
    payload = read_checkpoint(buffer, map_location="meta")
    assert all(t.device.type == "meta" for t in payload["model"].values())
    buffer.seek(0)
    assert load_checkpoint(buffer, model, optimizer) == 4
    assert all(s["exp_avg"].device.type == "cpu" for s in optimizer.state.values()), "the model's device"
