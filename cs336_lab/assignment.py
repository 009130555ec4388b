"""The tools' one door into an assignment package: `Assignment.load()`, resolved once, when a command needs it.

`cs336 train`, `generate`, `evaluate`, `train-bpe`, `tokenize` and `demo` run on whatever package is importable as
`cs336_basics`: ours, or a student's own. This module is the only place in `cs336_lab` that imports it; nothing
is looked up when a module is imported, only when `Assignment.load()` is first called (then cached per package).

Required, with the handout's names and signatures:

    TransformerLM(vocab_size=, context_length=, d_model=, num_layers=, num_heads=, d_ff=, rope_theta=)
                                                # keyword arguments; forward(ids) -> logits; moved with .to(device)
    cross_entropy(logits, targets) -> scalar tensor
    AdamW(params, lr=, betas=, eps=, weight_decay=)
    get_lr_cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters)
    gradient_clipping(parameters, max_l2_norm)  # in place, return value unused
    get_batch(dataset, batch_size, context_length, device) -> (x, y)
    Tokenizer(vocab, merges, special_tokens)    # .encode(text), .decode(ids), .encode_iterable(lines)
    train_bpe(input_path, vocab_size, special_tokens) -> (vocab, merges)

Optional extras (None when absent; each says what the tools do without it):

    ModelConfig       a dataclass taking the fields of `cs336_common.model_spec.ModelSpec` it knows; then the
                      model is `TransformerLM(ModelConfig(...), device=)`. Without it a spec with a non-default
                      extra (an ablation switch, another eps) is an `AssignmentError` naming the flags.
    complete          batched sampling with a KV cache (`complete(model, tokenizer, prompts, ...)`); without it
                      the tools sample with their own plain loop (`cs336_lab/sampling.py`).
    find_chunk_boundaries, read_chunk_text, worker_context   (all three): file encoding in parallel processes;
                      without them `encode_file` streams the file through `Tokenizer.encode_iterable`.
    MuonAdamW, muon_param_groups   (both): `--optimizer muon`, Muon for the hidden matrices beside AdamW;
                      `muon_param_groups(model)` -> groups with `use_muon`, `MuonAdamW(groups, lr=, betas=, eps=,
                      weight_decay=, momentum=)` one optimizer. Without them `--optimizer muon` is refused.
    cross_entropy_with_z_loss(logits, targets, z_loss)   `--z-loss` (the training loss); refused without it.
    wsd_lr_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, total_iters, decay_fraction)
                      `--lr-schedule wsd`; refused without it.
    fast.cross_entropy   from the module `<package>.fast` when the package has one: a hand-written kernel used
                      in place of `cross_entropy` for training (our reference's `cs336_basics/fast.py`).

Keyword extras are DECLARED by the package, never guessed from signatures: a top-level tuple
`CS336_EXTRAS` of strings from `KEYWORD_EXTRAS` (an unknown string is an error):

    "get_batch.generator"       get_batch(..., generator=numpy Generator); without it each batch is drawn under
                                a seed taken from the sampler's generator, so a resumed run draws the same ones.
    "train_bpe.num_workers", "train_bpe.show_progress"   passed to train_bpe only when declared.

Where a name is looked for: the package's top level (`cs336_basics/__init__.py`, exports included) first; for
the names not found there, every module of the package in alphabetical order, the first that defines or
imports the name wins. The handout fixes the names but not the file layout (students spread them over modules
of their own naming and need not re-export), so a fixed list of module names would miss real packages; a
package that exports everything from its top level never has its other modules scanned. A module that fails
to import is an `AssignmentError` naming the module and the exception: a broken file is shown, never skipped.
A missing required name is an `AssignmentError` naming where it was looked for.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

PACKAGE = "cs336_basics"
REQUIRED = (
    "TransformerLM",
    "cross_entropy",
    "AdamW",
    "get_lr_cosine_schedule",
    "gradient_clipping",
    "get_batch",
    "Tokenizer",
    "train_bpe",
)
OPTIONAL = (
    "ModelConfig",
    "complete",
    "find_chunk_boundaries",
    "read_chunk_text",
    "worker_context",
    "MuonAdamW",
    "muon_param_groups",
    "cross_entropy_with_z_loss",
    "wsd_lr_schedule",
)
CHUNKING = ("find_chunk_boundaries", "read_chunk_text", "worker_context")
MUON = ("MuonAdamW", "muon_param_groups")
EXTRAS_ATTRIBUTE = "CS336_EXTRAS"
KEYWORD_EXTRAS = ("get_batch.generator", "train_bpe.num_workers", "train_bpe.show_progress")


class AssignmentError(ValueError):
    """The package cannot serve the tools: a module fails to import, or a needed name is missing."""


@dataclass(frozen=True)
class Assignment:
    """What an assignment package provides (see the module docstring); build it with `Assignment.load()`."""

    package: str
    TransformerLM: Any
    cross_entropy: Callable[..., Any]
    AdamW: Any
    get_lr_cosine_schedule: Callable[..., Any]
    gradient_clipping: Callable[..., Any]
    get_batch: Callable[..., Any]
    Tokenizer: Any
    train_bpe: Callable[..., Any]
    ModelConfig: Any = None
    complete: Callable[..., Any] | None = None
    find_chunk_boundaries: Callable[..., Any] | None = None
    read_chunk_text: Callable[..., Any] | None = None
    worker_context: Callable[..., Any] | None = None
    MuonAdamW: Any = None
    muon_param_groups: Callable[..., Any] | None = None
    cross_entropy_with_z_loss: Callable[..., Any] | None = None
    wsd_lr_schedule: Callable[..., Any] | None = None
    fast_cross_entropy: Callable[..., Any] | None = None
    keyword_extras: frozenset[str] = frozenset()
    found_in: tuple[tuple[str, str], ...] = ()  # (name, module it came from)

    @classmethod
    def load(cls, package: str = PACKAGE) -> Assignment:
        """The package's `Assignment`, resolved on the first call for that package name, then cached."""
        if package not in _LOADED:
            _LOADED[package] = _resolve(package)
        return _LOADED[package]

    @property
    def has_chunking(self) -> bool:
        return all(getattr(self, name) is not None for name in CHUNKING)

    def describe(self) -> str:
        """One line per name: where it was found, or that it is absent and what the tools do instead."""
        where = dict(self.found_in)
        lines = [f"{self.package}:"]
        for name in (*REQUIRED, *OPTIONAL):
            lines.append(f"  {name:<24}{where[name] if name in where else 'absent (optional)'}")
        lines.append(f"  {'fast.cross_entropy':<24}{'present' if self.fast_cross_entropy else 'absent (optional)'}")
        lines.append(f"  {EXTRAS_ATTRIBUTE:<24}{', '.join(sorted(self.keyword_extras)) or 'none declared'}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------ the model

    def build_model(self, spec: Any, device: Any, *, fused_kernels: bool = False) -> Any:
        """A `TransformerLM` for the `ModelSpec` `spec`, on `device`.

        With the package's `ModelConfig`, every spec field it declares is passed (a non-default one it lacks is
        an error); without one, the handout's keyword arguments, and any non-default extra is an error naming
        its flag. `fused_kernels` switches on our reference's kernels where the model has `use_fused_kernels`.
        """
        extras = spec.non_default_extras()
        if self.ModelConfig is not None and dataclasses.is_dataclass(self.ModelConfig):
            known = {f.name for f in dataclasses.fields(self.ModelConfig)}
            _refuse_extras(
                {k: v for k, v in extras.items() if k not in known},
                f"{self.package}.ModelConfig with these fields",
                "a ModelConfig without them",
            )
            config = self.ModelConfig(**{k: v for k, v in spec.to_dict().items() if k in known})
            model = self.TransformerLM(config, device=device)
            if fused_kernels and hasattr(model, "use_fused_kernels"):
                model.use_fused_kernels()
            return model
        _refuse_extras(
            extras, f"{self.package}.ModelConfig with the ablation switches", "a package without ModelConfig"
        )
        return self.TransformerLM(**spec.handout_fields()).to(device)

    # --------------------------------------------------------------------------------- training primitives

    def make_optimizer(
        self, params: list[Any], *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float
    ) -> Any:
        """The package's `AdamW`."""
        return self.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def make_muon_optimizer(
        self,
        model: Any,
        *,
        lr: float,
        muon_lr: float,
        momentum: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        regroup: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    ) -> Any:
        """The package's `MuonAdamW` over `muon_param_groups(model)` (`regroup`ed when given), its Muon groups at
        `muon_lr`."""
        self.require(MUON, "--optimizer muon")
        groups = [dict(g, lr=muon_lr) if g.get("use_muon") else dict(g) for g in self.muon_param_groups(model)]
        groups = groups if regroup is None else regroup(groups)
        return self.MuonAdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, momentum=momentum)

    def training_loss(self, logits: Any, targets: Any) -> Any:
        """The mean cross-entropy: the package's `fast.cross_entropy` kernel when it has one, else `cross_entropy`."""
        return (self.fast_cross_entropy or self.cross_entropy)(logits, targets)

    def training_loss_with_z_loss(self, logits: Any, targets: Any, z_loss: float) -> Any:
        """The package's `cross_entropy_with_z_loss`: the mean cross-entropy plus `z_loss · mean(logsumexp²)`."""
        self.require(("cross_entropy_with_z_loss",), f"--z-loss {z_loss}")
        return self.cross_entropy_with_z_loss(logits, targets, z_loss)

    def lr_at(
        self,
        it: float,
        lr_max: float,
        lr_min: float,
        warmup_iters: int,
        cosine_cycle_iters: int,
        *,
        schedule: str = "cosine",
        decay_fraction: float = 0.2,
    ) -> float:
        """The package's `get_lr_cosine_schedule` at iteration `it`, or with `schedule="wsd"` its
        `wsd_lr_schedule` (decaying over the last `decay_fraction` of the `cosine_cycle_iters`)."""
        if schedule == "wsd":
            self.require(("wsd_lr_schedule",), "--lr-schedule wsd")
            return float(self.wsd_lr_schedule(it, lr_max, lr_min, warmup_iters, cosine_cycle_iters, decay_fraction))
        return float(self.get_lr_cosine_schedule(it, lr_max, lr_min, warmup_iters, cosine_cycle_iters))

    def require(self, names: tuple[str, ...], flag: str) -> None:
        """Refuse `flag` (an AssignmentError naming it) when the package lacks one of the optional `names`."""
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise AssignmentError(
                f"{flag} needs {', '.join(f'{self.package}.{n}' for n in missing)}; expected a package with "
                f"{'them' if len(missing) > 1 else 'it'}, got one without (see cs336_lab/assignment.py)"
            )

    def clip_and_measure(self, params: list[Any], max_l2_norm: float) -> float:
        """Clip with the package's `gradient_clipping` (when `max_l2_norm > 0`); return the norm before it.

        NOTE: the handout's function returns nothing, so the norm is measured here, before the call.
        """
        norm = grad_norm(params)
        if max_l2_norm > 0:
            self.gradient_clipping(params, max_l2_norm)
        return norm

    def sample_batch(self, tokens: Any, batch_size: int, context_length: int, device: Any, generator: Any) -> Any:
        """The package's `get_batch`, reproducible: with `generator=` when declared, else under a seed drawn
        from `generator` (torch's and numpy's global RNGs are restored afterwards)."""
        if "get_batch.generator" in self.keyword_extras:
            return self.get_batch(tokens, batch_size, context_length, str(device), generator=generator)
        import numpy as np
        import torch

        seed = int(generator.integers(0, 2**31 - 1))
        saved_numpy = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            try:
                return self.get_batch(tokens, batch_size, context_length, str(device))
            finally:
                np.random.set_state(saved_numpy)

    # ----------------------------------------------------------------------------------------- tokenizer

    def make_tokenizer(
        self, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str]
    ) -> Any:
        """The package's `Tokenizer(vocab, merges, special_tokens)`."""
        return self.Tokenizer(vocab, merges, special_tokens)

    def run_train_bpe(
        self,
        input_path: str,
        vocab_size: int,
        special_tokens: list[str],
        *,
        num_workers: int | None = None,
        show_progress: bool = False,
    ) -> Any:
        """The package's `train_bpe`, given the declared keyword extras only."""
        options = {"num_workers": num_workers, "show_progress": show_progress}
        extra = {k: v for k, v in options.items() if f"train_bpe.{k}" in self.keyword_extras}
        return self.train_bpe(input_path, vocab_size, special_tokens, **extra)


_LOADED: dict[str, Assignment] = {}


def grad_norm(params: list[Any]) -> float:
    """The global L2 norm of the gradients of `params` (0 when none has one)."""
    import torch

    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return 0.0
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()


def _refuse_extras(extras: dict[str, Any], needs: str, got: str) -> None:
    if extras:
        flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in extras.items())
        raise AssignmentError(
            f"{flags} needs {needs}; expected a package with it, got {got} (train the handout's model instead)"
        )


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as err:  # shown, never swallowed: a broken module must not silently lose its names
        raise AssignmentError(f"the assignment module {name} failed to import: {type(err).__name__}: {err}") from err


def _resolve(package_name: str) -> Assignment:
    """Look every name up (see the module docstring) and build the `Assignment`."""
    package = _import(package_name)
    wanted = (*REQUIRED, *OPTIONAL)
    found = {name: (getattr(package, name), package_name) for name in wanted if hasattr(package, name)}
    if len(found) < len(wanted):
        for info in sorted(pkgutil.iter_modules(getattr(package, "__path__", [])), key=lambda m: m.name):
            module = _import(f"{package_name}.{info.name}")
            for name in wanted:
                if name not in found and name in vars(module):
                    found[name] = (vars(module)[name], module.__name__)
    missing = [name for name in REQUIRED if name not in found]
    if missing:
        raise AssignmentError(
            f"{package_name} provides no {', '.join(missing)}: expected each at the top level of "
            f"{package_name} or in one of its modules ({_where(package)}); see "
            "cs336_lab/assignment.py for the expected signatures"
        )
    fast = None
    if hasattr(package, "__path__") and importlib.util.find_spec(f"{package_name}.fast") is not None:
        fast = getattr(_import(f"{package_name}.fast"), "cross_entropy", None)
    return Assignment(
        package=package_name,
        **{name: value for name, (value, _) in found.items()},
        fast_cross_entropy=fast,
        keyword_extras=_declared_extras(package),
        found_in=tuple((name, where) for name, (_, where) in found.items()),
    )


def _where(package: ModuleType) -> str:
    names = sorted(m.name for m in pkgutil.iter_modules(getattr(package, "__path__", [])))
    return f"searched {', '.join(names)}" if names else "it has no modules"


def _declared_extras(package: ModuleType) -> frozenset[str]:
    declared = getattr(package, EXTRAS_ATTRIBUTE, ())
    if isinstance(declared, str) or not all(isinstance(d, str) for d in declared):
        raise AssignmentError(f"{package.__name__}.{EXTRAS_ATTRIBUTE} must be a tuple of strings, got {declared!r}")
    unknown = sorted(set(declared) - set(KEYWORD_EXTRAS))
    if unknown:
        raise AssignmentError(
            f"{package.__name__}.{EXTRAS_ATTRIBUTE}: unknown extras {unknown}; expected some of {list(KEYWORD_EXTRAS)}"
        )
    return frozenset(declared)


__all__ = ["Assignment", "AssignmentError", "PACKAGE", "REQUIRED", "OPTIONAL", "MUON", "KEYWORD_EXTRAS", "grad_norm"]
