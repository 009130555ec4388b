"""The public API of the assignment that the tools use: the one door from `cs336_lab` into `cs336_basics`.

`cs336 train`, `cs336 generate`, `cs336 train-bpe` and `cs336 tokenize` run on whatever package is importable
as `cs336_basics`: ours, or a student's own. This module is the only place in `cs336_lab` that imports it,
and it asks only for the names of the handout. Each name is looked up on the package itself first, then in
each of its modules in alphabetical order (a student need not re-export anything from `__init__.py`); the
first match wins.

Required (the handout's names and signatures):

    TransformerLM(vocab_size=, context_length=, d_model=, num_layers=, num_heads=, d_ff=, rope_theta=,
                  device=)                      # keyword arguments; `device` optional; forward(ids) -> logits
    cross_entropy(logits, targets) -> scalar tensor
    AdamW(params, lr=, betas=, eps=, weight_decay=)
    get_lr_cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters)
    gradient_clipping(parameters, max_l2_norm)  # also found as clip_gradients; in place, return value unused
    get_batch(dataset, batch_size, context_length, device) -> (x, y)
    Tokenizer(vocab, merges, special_tokens)    # .encode(text), .decode(ids), .encode_iterable(lines)
    train_bpe(input_path, vocab_size, special_tokens) -> (vocab, merges)

Optional extras of our reference, used when present:

    ModelConfig       a dataclass of the model's fields with the ablation switches (use_rmsnorm, norm_position,
                      position_embedding, ffn_type, ...); then `TransformerLM(ModelConfig(...), device=)`.
                      Without it a non-default ablation flag is an error naming the missing extra.
    complete          batched sampling with a KV cache (`complete(model, tokenizer, prompts, ...)`); without it
                      the tools sample with their own plain loop (`cs336_lab/sampling.py`, no KV cache).
    get_batch(..., generator=)   a numpy Generator for reproducible batches; without it each batch is drawn
                      under a seed derived from (seed, rank, step), so a resumed run still draws the same ones.
    train_bpe(..., num_workers=, show_progress=)   used when the signature accepts them.
    find_chunk_boundaries, read_chunk_text, worker_context   (the reference's `cs336_basics/chunking.py`):
                      file encoding in parallel processes; without them `encode_file` streams the file through
                      `Tokenizer.encode_iterable` in one process.

The tools keep their own file formats: a run's checkpoint (`cs336_lab/run_checkpoint.py`, built from
`model.state_dict()` and `optimizer.state_dict()`) and a tokenizer's directory (`cs336_lab/tokenizer_files.py`,
read into `Tokenizer(vocab, merges, special_tokens)`), so that nothing depends on how a package saves.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch
from torch import nn

PACKAGE = "cs336_basics"

#: The model's fields in the handout; every implementation takes them.
HANDOUT_MODEL_FIELDS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta")
#: Fields only our reference's `ModelConfig` knows, with the value that means "the handout's model".
EXTRA_MODEL_DEFAULTS: dict[str, Any] = {"use_rmsnorm": True, "norm_position": "pre", "position_embedding": "rope",
                                        "ffn_type": "swiglu", "init": "assignment"}

# Public name -> the names it may go by in a package (the first is the handout's).
_ALIASES: dict[str, tuple[str, ...]] = {
    "TransformerLM": ("TransformerLM",),
    "cross_entropy": ("cross_entropy",),
    "AdamW": ("AdamW",),
    "get_lr_cosine_schedule": ("get_lr_cosine_schedule", "lr_cosine_schedule", "cosine_schedule"),
    "gradient_clipping": ("gradient_clipping", "clip_gradients", "clip_grad_norm"),
    "get_batch": ("get_batch",),
    "Tokenizer": ("Tokenizer",),
    "train_bpe": ("train_bpe",),
    "ModelConfig": ("ModelConfig",),
    "complete": ("complete",),
    "find_chunk_boundaries": ("find_chunk_boundaries",),
    "read_chunk_text": ("read_chunk_text",),
    "worker_context": ("worker_context",),
}
REQUIRED = ("TransformerLM", "cross_entropy", "AdamW", "get_lr_cosine_schedule", "gradient_clipping", "get_batch",
            "Tokenizer", "train_bpe")


class MissingAPIError(ValueError):
    """The package lacks a name that the tools need (a required one, or the extra that a flag asks for)."""


def _modules(package: ModuleType) -> list[ModuleType]:
    """The package, then its modules in alphabetical order (imported on demand)."""
    found = [package]
    for info in sorted(pkgutil.iter_modules(getattr(package, "__path__", [])), key=lambda m: m.name):
        try:
            found.append(importlib.import_module(f"{package.__name__}.{info.name}"))
        except Exception:  # a broken module of a student's package must not hide the names of the others
            continue
    return found


@lru_cache(maxsize=None)
def _lookup(name: str, package_name: str = PACKAGE) -> Any:
    package = importlib.import_module(package_name)
    for spelling in _ALIASES[name]:
        if hasattr(package, spelling):  # the package itself (lazy exports included)
            return getattr(package, spelling)
    for module in _modules(package)[1:]:
        for spelling in _ALIASES[name]:
            if spelling in vars(module):
                return vars(module)[spelling]
    return None


def get(name: str, *, needed_for: str | None = None) -> Any:
    """The package's object for the public `name`; `MissingAPIError` when it has none.

    `needed_for` names the flag or feature that asked for an optional extra, for the message.
    """
    value = _lookup(name)
    if value is None:
        spellings = " or ".join(_ALIASES[name])
        why = f" (needed for {needed_for})" if needed_for else ""
        raise MissingAPIError(f"{PACKAGE} provides no {spellings}{why}: expected it in {PACKAGE} or one of its "
                              f"modules, see cs336_lab/api.py for the expected signature")
    return value


def has(name: str) -> bool:
    """Whether the package provides the public `name` (for optional extras)."""
    return _lookup(name) is not None


@lru_cache(maxsize=None)
def accepts(fn: Callable[..., Any], keyword: str) -> bool:
    """Whether `fn` takes the keyword argument `keyword` (or any keyword, through `**kwargs`)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


# --------------------------------------------------------------------------------------------- the model


def handout_d_ff(d_model: int) -> int:
    """The handout's feed-forward width for `d_ff=None`: about 8/3 d_model, a multiple of 64.

    >>> handout_d_ff(512)
    1344
    """
    return max(64, 64 * round(8 * d_model / 3 / 64))


def build_model(settings: dict[str, Any], device: torch.device | str, *, fused_kernels: bool = False) -> nn.Module:
    """A `TransformerLM` for the model fields in `settings` (other keys are ignored), on `device`.

    With the package's `ModelConfig` every field it knows is passed; without one, only the handout's fields,
    and a non-default extra (an ablation) is a `MissingAPIError`. `fused_kernels` switches on our reference's
    hand-written kernels (`cs336_basics/fast.py`: the same model, a faster eager step) where the model has them.
    """
    model_cls = get("TransformerLM")
    if has("ModelConfig") and is_dataclass(get("ModelConfig")):
        config_cls = get("ModelConfig")
        names = {f.name for f in fields(config_cls)}
        model = model_cls(config_cls(**{k: v for k, v in settings.items() if k in names}), device=device)
        if fused_kernels and hasattr(model, "use_fused_kernels"):
            model.use_fused_kernels()
        return model
    extras = {k: settings[k] for k, default in EXTRA_MODEL_DEFAULTS.items() if k in settings and settings[k] != default}
    if extras:
        flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in extras.items())
        raise MissingAPIError(f"{flags} needs {PACKAGE}.ModelConfig with the ablation switches; expected a package "
                              f"with ModelConfig, got one without (train with the handout's model instead)")
    kwargs = {k: settings[k] for k in HANDOUT_MODEL_FIELDS}
    if kwargs["d_ff"] is None:
        kwargs["d_ff"] = handout_d_ff(kwargs["d_model"])
    if accepts(model_cls, "device"):
        return model_cls(**kwargs, device=device)
    return model_cls(**kwargs).to(device)


def model_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The model fields of a stored run config (a training config or a model config)."""
    if has("ModelConfig") and is_dataclass(get("ModelConfig")):
        names = {f.name for f in fields(get("ModelConfig"))}
    else:
        names = set(HANDOUT_MODEL_FIELDS) | set(EXTRA_MODEL_DEFAULTS)
    return {k: v for k, v in config.items() if k in names}


# --------------------------------------------------------------------------------- training primitives


def make_optimizer(params: list[nn.Parameter], *, lr: float, betas: tuple[float, float], eps: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """The package's `AdamW`."""
    return get("AdamW")(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The package's `cross_entropy`: the mean loss over every position. Our reference's hand-written kernel
    (`cs336_basics.fast.cross_entropy`: the same loss, a faster backward) when the package has one."""
    return (_fast_kernel("cross_entropy") or get("cross_entropy"))(logits, targets)


@lru_cache(maxsize=None)
def _fast_kernel(name: str) -> Any:
    """`name` from the package's optional module `fast` of hand-written kernels (our reference's), or None."""
    if importlib.util.find_spec(f"{PACKAGE}.fast") is None:
        return None
    return getattr(importlib.import_module(f"{PACKAGE}.fast"), name, None)


def cosine_lr(it: float, lr_max: float, lr_min: float, warmup_iters: int, cosine_cycle_iters: int) -> float:
    """The package's `get_lr_cosine_schedule` at iteration `it`."""
    return float(get("get_lr_cosine_schedule")(it, lr_max, lr_min, warmup_iters, cosine_cycle_iters))


def clip_gradients(params: list[nn.Parameter], max_l2_norm: float) -> float:
    """Clip with the package's `gradient_clipping` (when `max_l2_norm > 0`); return the global norm before it.

    NOTE: the handout's function returns nothing, so the norm is measured here, before the call.
    """
    norm = grad_norm(params)
    if max_l2_norm > 0:
        get("gradient_clipping")(params, max_l2_norm)
    return norm


@torch.no_grad()
def grad_norm(params: list[nn.Parameter]) -> float:
    """The global L2 norm of the gradients of `params` (0 when none has one)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()


def get_batch(tokens: Any, batch_size: int, context_length: int, device: torch.device | str,
              generator: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's `get_batch`, reproducible: with its `generator=` keyword, or under a seed from `generator`.

    `generator` is a numpy `Generator`; without the keyword one integer is drawn from it and seeds torch's and
    numpy's global RNGs (restored afterwards) for the call, so the batches still follow the generator's state.
    """
    fn = get("get_batch")
    if accepts(fn, "generator"):
        return fn(tokens, batch_size, context_length, str(device), generator=generator)
    import numpy as np

    seed = int(generator.integers(0, 2**31 - 1))
    saved_numpy = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            return fn(tokens, batch_size, context_length, str(device))
        finally:
            np.random.set_state(saved_numpy)


# ---------------------------------------------------------------------------------------------- tokenizer


def make_tokenizer(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str]) -> Any:
    """The package's `Tokenizer(vocab, merges, special_tokens)`."""
    return get("Tokenizer")(vocab, merges, special_tokens)


def train_bpe(input_path: str, vocab_size: int, special_tokens: list[str], *, num_workers: int | None = None,
              show_progress: bool = False) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """The package's `train_bpe`, given the reference's extra keywords only when it accepts them."""
    fn = get("train_bpe")
    extra = {k: v for k, v in (("num_workers", num_workers), ("show_progress", show_progress)) if accepts(fn, k)}
    return fn(input_path, vocab_size, special_tokens, **extra)


__all__ = ["PACKAGE", "HANDOUT_MODEL_FIELDS", "EXTRA_MODEL_DEFAULTS", "REQUIRED", "MissingAPIError", "get", "has",
           "accepts", "build_model", "model_settings", "handout_d_ff", "make_optimizer", "cross_entropy", "cosine_lr",
           "clip_gradients", "grad_norm", "get_batch", "make_tokenizer", "train_bpe"]
