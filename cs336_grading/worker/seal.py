"""The from-scratch audit's dynamic look, in the worker (student side): the forbidden kernels are sealed, and a
`TorchFunctionMode` names the forbidden torch functions the submission calls.

- `seal()` (after the fork, before the submission is imported) replaces the ATen kernels behind the forbidden
  built-ins (`rules.SEALED_KERNELS`, `rules.SEALED_COMPOSITES`) with kernels that end the call with evidence:
  in every thread, whatever Python-level hook is switched off or file name forged, the built-in is not there.
  The harness's own models (`tests/scenarios.py`) run in plain maths, so nothing needs them either.
- `Watch` (around every call) records forbidden torch functions whose innermost non-torch caller is the
  submission, and checks that the AdamW class descends from no torch optimizer but `Optimizer`.

Nothing here decides a grade: evidence goes back to the grader with the call's reply, and a sealed kernel
fails closed (the call raises), so removing the evidence gains nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

from cs336_grading.rules import (
    ALLOWED_FILES,
    FORBIDDEN_FILES,
    SEALED_COMPOSITES,
    SEALED_KERNELS,
    SEALED_MARK,
    SEALED_SPARSE,
)


# ------------------------------------------------------------------------------------ dynamic (worker)
def _forbidden_functions() -> dict[Any, str]:
    import torch
    import torch.nn.functional as F

    table: dict[Any, str] = {}
    for name, value in vars(F).items():
        if (
            callable(value)
            and not name.startswith("_")
            and getattr(value, "__module__", "") in ("torch.nn.functional", "torch._C._nn", None)
        ):
            table[value] = f"torch.nn.functional.{name}"
    for name, value in vars(torch._C._nn).items():
        if callable(value) and not name.startswith("_"):
            table.setdefault(value, f"torch.nn.functional.{name}")
    for owner, prefix in ((torch, "torch"), (torch.Tensor, "torch.Tensor")):
        for name in ("softmax", "log_softmax", "embedding", "rms_norm", "layer_norm", "_fused_adamw_", "_fused_adam_"):
            if hasattr(owner, name):
                table[getattr(owner, name)] = f"{prefix}.{name}"
    return table


class Watch:
    """Around one call in the worker: records forbidden torch use by the submission (see the module doc)."""

    _table: dict[Any, str] | None = None
    current = "the worker"  # the call that is running (what the sealed kernels blame)
    root: str | None = None  # the worker's workspace, set before the submission runs (never its later cwd)

    def __init__(self, call: str) -> None:
        self.call = call
        self.findings: list[str] = []
        self._mode: Any = None

    def __enter__(self) -> Watch:
        Watch.current = self.call
        del EVIDENCE[:]
        if "torch" not in sys.modules:
            return self  # code that never imported torch uses none of its built-ins
        import torch
        from torch.overrides import TorchFunctionMode

        if Watch._table is None:
            Watch._table = _forbidden_functions()
        torch_dir = os.path.dirname(torch.__file__) + os.sep
        # NOTE: not os.getcwd(): a submission that chdirs at import would make itself "harness code".
        root = Watch.root or os.getcwd()
        submission = (os.path.join(root, "cs336_basics") + os.sep, os.path.join(root, "tests", "adapters.py"))
        watch = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
                watch._inspect(func, torch_dir, submission)
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
        self.findings.extend(f for f in EVIDENCE[:20] if f not in self.findings)
        del EVIDENCE[:]
        Watch.current = "the worker (between calls)"

    def _inspect(self, func: Any, torch_dir: str, submission: tuple[str, str]) -> None:
        frame = sys._getframe(2)
        via = None
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith(submission[0]) or filename == submission[1]:
                name = (Watch._table or {}).get(func) or via
                if name is not None and len(self.findings) < 20:
                    where = os.path.relpath(filename)
                    self.findings.append(f"{self.call} called {name}, {where}:{frame.f_lineno}")
                return
            if filename.startswith(torch_dir):
                rel = filename[len(torch_dir) :].replace(os.sep, "/")
                if rel.startswith(FORBIDDEN_FILES) and not rel.startswith(ALLOWED_FILES):
                    via = f"torch/{rel} ({frame.f_code.co_name})"
            elif not filename.startswith("<") and "site-packages" not in filename and "/lib/python" not in filename:
                return  # harness code (the scenarios): never evidence
            frame = frame.f_back

    def check_optimizer(self, cls: type | None) -> None:
        """The AdamW class may descend from no torch optimizer but `torch.optim.Optimizer`."""
        import torch

        for base in getattr(cls, "__mro__", ())[1:]:
            module = getattr(base, "__module__", "")
            if module.startswith("torch.optim") and base is not torch.optim.Optimizer:
                self.findings.append(f"{self.call}: the optimizer class derives from {module}.{base.__qualname__}")


# ------------------------------------------------------------------------------ kernels (worker, sealed)
# The ATen kernels behind the forbidden built-ins -> the problem they solve. `seal` replaces them in the
# worker (after the fork, before the submission is imported) with kernels that end the call with evidence:
# in every thread, whatever Python-level hook is switched off or file name forged, the built-in is simply
# not there. Those with their own CPU kernel are replaced at "CPU" (autograd passes through it); composite
# ones (decomposed into plain maths otherwise) at "AutogradCPU" and "CPU" (inference mode skips autograd).
_SEALED: list[Any] = []  # the libraries holding the replacements (alive as long as the worker)
EVIDENCE: list[str] = []  # what the sealed kernels saw, drained into each reply's audit


def seal() -> list[str]:
    """Replace the forbidden kernels in this process (see above); returns the operators replaced."""
    import torch

    library = torch.library.Library("aten", "IMPL")
    # NOTE: never freed, even when `_SEALED` is emptied (a submission that reaches this module): the
    # library's finaliser would restore torch's kernels. One extra reference that nothing ever drops.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(library))
    _SEALED.append(library)
    done = []
    tables = ((SEALED_KERNELS, ("CPU",)), (SEALED_SPARSE, ("SparseCPU",)), (SEALED_COMPOSITES, ("AutogradCPU", "CPU")))
    for table, keys in tables:
        for name, problem in table.items():
            packet = getattr(torch.ops.aten, name, None)
            if packet is None:
                continue
            for overload in packet.overloads():
                qualified = name if overload == "default" else f"{name}.{overload}"
                for key in keys:
                    try:
                        library.impl(qualified, _sealed_kernel(qualified, problem), key)
                    except RuntimeError:
                        continue  # this build has no such overload at that key
                done.append(qualified)
    return done


def _sealed_kernel(name: str, problem: str) -> Any:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        EVIDENCE.append(f"{Watch.current} reached the kernel aten::{name} (the {problem} built-in)")
        raise RuntimeError(f"aten::{name} {SEALED_MARK} (write {problem} yourself)")

    return kernel
