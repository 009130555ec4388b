"""Hints: when a graded comparison fails, name the known mistake that the output matches.

    actual = run_rope(d_k, theta, max_seq_len, x, positions)
    with hinted("rope", actual, x=x, positions=positions, theta=theta):
        assert_close(actual, expected, ...)

If the comparison raises, every catalogued mistake of the problem (a small, deliberately wrong function in
`tests/mistakes_*.py`) is evaluated on the same inputs, in the test's own process; when the student's output
agrees with one, the failure message gains "Hint: your output matches <what the mistake does>". A hint names
the mistake only: it never shows an expected value beyond what the failure message already shows. The
catalogue holds wrong implementations, not answers, and never imports `cs336_basics`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

_CATALOGUE_MODULES = ("tests.mistakes_model", "tests.mistakes_training", "tests.mistakes_bpe")


@dataclass(frozen=True)
class Mistake:
    """A named wrong implementation: `fn(**inputs)` returns what that mistake outputs on the inputs."""

    problem: str
    name: str
    says: str
    fn: Callable[..., Any]


_REGISTRY: dict[str, list[Mistake]] = {}


def mistake(problem: str, says: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as a mistake of `problem`, described by `says`."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY.setdefault(problem, []).append(Mistake(problem, fn.__name__, says, fn))
        return fn

    return register


def catalogue() -> dict[str, list[Mistake]]:
    """Every catalogued mistake, by problem."""
    for module in _CATALOGUE_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def same_output(actual: Any, candidate: Any) -> bool:
    """Whether `actual` agrees with a mistake's output: tensors within a few roundings, other values equal."""
    if isinstance(candidate, torch.Tensor) or isinstance(actual, torch.Tensor):
        if not (isinstance(candidate, torch.Tensor) and isinstance(actual, torch.Tensor)):
            return False
        if tuple(actual.shape) != tuple(candidate.shape):
            return False
        got, want = actual.detach().cpu().double(), candidate.detach().cpu().double()
        if not torch.equal(got.isnan(), want.isnan()):
            return False
        got, want = got.nan_to_num(0.0, 0.0, 0.0), want.nan_to_num(0.0, 0.0, 0.0)
        if not torch.equal(actual.detach().cpu().isinf(), candidate.detach().cpu().isinf()):
            return False
        low = actual.dtype in (torch.bfloat16, torch.float16) or candidate.dtype in (torch.bfloat16, torch.float16)
        scale = want.abs().max().item() if want.numel() else 0.0
        return bool(((got - want).abs() <= (3e-2 if low else 1e-4) * (want.abs() + scale) + 1e-7).all())
    if isinstance(candidate, float) or isinstance(actual, float):
        try:
            return math.isclose(float(actual), float(candidate), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    if isinstance(candidate, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(actual) == len(candidate) and all(same_output(a, c) for a, c in zip(actual, candidate))
    return actual == candidate


def _much_closer(actual: Any, candidate: Any, expected: Any, ratio: float) -> bool:
    """Whether tensor `actual` lies `1/ratio` times closer to `candidate` than to `expected` (largest errors)."""
    if not all(isinstance(t, torch.Tensor) for t in (actual, candidate, expected)):
        return False
    if not (actual.shape == candidate.shape == expected.shape) or actual.numel() == 0:
        return False
    got = actual.detach().cpu().double()
    to_candidate = (got - candidate.detach().cpu().double()).abs().max().item()
    to_expected = (got - expected.detach().cpu().double()).abs().max().item()
    return math.isfinite(to_expected) and to_expected > 0 and to_candidate <= ratio * to_expected


def _as_comparable(value: Any, like: Any) -> Any:
    """`value` (e.g. a numpy expectation) in the form of `like`, so that `same_output` can compare them."""
    if isinstance(like, torch.Tensor) and not isinstance(value, torch.Tensor):
        return torch.as_tensor(value)
    return value


def matching(problem: str, actual: Any, expected: Any = None, **inputs: Any) -> list[Mistake]:
    """The catalogued mistakes of `problem` whose output on `inputs` agrees with `actual`.

    A mistake whose output also agrees with `expected` (when given) explains nothing on these inputs, unless
    the output is ten times closer to the mistake than to the expectation (eps outside the root with the
    default eps is off by only ~1e-5, yet that is exactly what the output shows). An output a hundred times
    closer to a mistake than to the expectation matches it even beyond `same_output`'s few roundings.
    """
    found = []
    for entry in catalogue().get(problem, []):
        try:
            candidate = entry.fn(**inputs)
        except Exception:  # noqa: BLE001 - a mistake that cannot run on these inputs matches nothing
            continue
        want = None if expected is None else _as_comparable(expected, candidate)
        if want is not None and same_output(want, candidate) and not _much_closer(actual, candidate, want, 0.1):
            continue
        # A result that carries its own rounding (a float32 loss of logits near 1e4 is off by ~1e-3) still
        # matches a mistake it lies a hundred times closer to than to the expectation.
        if same_output(actual, candidate) or (want is not None and _much_closer(actual, candidate, want, 0.01)):
            found.append(entry)
    return found


def hint_text(problem: str, actual: Any, expected: Any = None, **inputs: Any) -> str:
    """'Hint: your output matches ...' for the first matching mistake, or '' when none matches."""
    try:
        value = actual() if callable(actual) else actual
        found = matching(problem, value, expected, **inputs)
    except Exception:  # noqa: BLE001 - a hint must never turn a failure into an error
        return ""
    return f"Hint: your output matches {found[0].says}." if found else ""


# Messages of torch's shape errors (matmul, broadcasting, view, load_state_dict), also as the grader relays
# them ("run_linear raised RuntimeError: mat1 and mat2 shapes cannot be multiplied ...").
_SHAPE_ERRORS = (
    "shapes cannot be multiplied",
    "size of tensor a",
    "must match the size",
    "size mismatch",
    "Expected size",
    "expanded size",
    "not broadcastable",
    "invalid for input of size",
    "cannot be broadcast",
    "dimension specified as",
)
LIKELY_SHAPE_CAUSE = (
    "Likely cause: a weight used without its transpose (y = x Wᵀ: with W stored (d_out, d_in), x @ W.T) or a "
    "weight stored transposed ((d_in, d_out) instead of the (d_out, d_in) the state dict holds)"
)


@contextmanager
def shape_hint(what: str) -> Iterator[None]:
    """Turn torch's raw shape error inside the block into a failure that names its likely cause.

    with shape_hint("linear"):
        actual = run_linear(d_in, d_out, weights, x)
    """
    try:
        yield
    except AssertionError:
        raise
    except Exception as error:  # noqa: BLE001 - only shape errors are rewritten; anything else propagates
        if not any(marker in str(error) for marker in _SHAPE_ERRORS):
            raise
        said = " ".join(line.strip() for line in str(error).strip().splitlines()[:3])[:400]
        message = f"{what} raised a shape error: {type(error).__name__}: {said}"
        raise AssertionError(f"{message}\n{LIKELY_SHAPE_CAUSE}.") from None


@contextmanager
def hinted(problem: str, actual: Any, expected: Any = None, **inputs: Any) -> Iterator[None]:
    """Re-raise a failing comparison's AssertionError with the hint of the mistake the output matches.

    `actual` may be a zero-argument callable (e.g. a whole optimizer trajectory), evaluated only on failure.
    `expected`, when given, rules out mistakes that agree with the right answer on these inputs.
    """
    try:
        yield
    except AssertionError as error:
        hint = hint_text(problem, actual, expected, **inputs)
        if not hint:
            raise
        raise AssertionError(f"{error}\n{hint}") from None
