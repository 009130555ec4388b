"""The from-scratch audit: did a submission use the torch built-ins that the assignment asks students to write?

Two looks, both naming their evidence ("run_linear called torch.nn.functional.linear, cs336_basics/layers.py:12"):
- static (`scan`, in the grader): imports and attribute uses of forbidden names in the submitted files,
  resolved through the file's own import aliases (`import torch.nn.functional as F` ... `F.softmax(x)`);
- dynamic (`Watch`, in the worker around every call): a `TorchFunctionMode` sees each torch function that
  runs; when the innermost Python frame outside torch belongs to the submission and the function is
  forbidden (or torch code of a forbidden module, e.g. `torch/optim/adamw.py`, ran it for the submission),
  the call is evidence; and the AdamW class's ancestry may hold no torch optimizer but `Optimizer`.

Allowed, and never evidence: `nn.Parameter`, the containers (`Module`, `ModuleList`, ...), `Optimizer`,
`torch.nn.init.trunc_normal_`, plain tensor maths (`torch.exp`, `torch.sigmoid`, `einsum`, ...). Harness
code (`tests/scenarios.py` builds models from `torch.nn`) is never evidence either.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Any

# The built-in each forbidden name stands for -> the problem whose solution it replaces.
REPLACES = {
    "linear": "linear", "Linear": "linear", "Bilinear": "linear",
    "embedding": "embedding", "Embedding": "embedding",
    "rms_norm": "rmsnorm", "RMSNorm": "rmsnorm", "layer_norm": "rmsnorm", "LayerNorm": "rmsnorm",
    "silu": "positionwise_feedforward", "SiLU": "positionwise_feedforward", "glu": "positionwise_feedforward",
    "softmax": "softmax", "Softmax": "softmax", "softmin": "softmax",
    "scaled_dot_product_attention": "scaled_dot_product_attention",
    "multi_head_attention_forward": "multihead_self_attention", "MultiheadAttention": "multihead_self_attention",
    "TransformerEncoderLayer": "transformer_block", "TransformerDecoderLayer": "transformer_block",
    "Transformer": "transformer_lm", "TransformerEncoder": "transformer_lm",
    "cross_entropy": "cross_entropy", "CrossEntropyLoss": "cross_entropy", "log_softmax": "cross_entropy",
    "nll_loss": "cross_entropy", "NLLLoss": "cross_entropy",
    "AdamW": "adamw", "Adam": "adamw", "adamw": "adamw", "adam": "adamw", "_fused_adamw_": "adamw",
    "lr_scheduler": "learning_rate_schedule", "CosineAnnealingLR": "learning_rate_schedule",
    "clip_grad_norm_": "gradient_clipping", "clip_grad_norm": "gradient_clipping",
}  # fmt: skip
_ALLOWED_NN = {"Module", "ModuleList", "ModuleDict", "Sequential", "ParameterList", "ParameterDict",
               "Parameter", "Buffer", "init", "parameter", "modules", "utils"}  # fmt: skip
# torch source files whose code does a forbidden job (relative to torch's package directory).
_FORBIDDEN_FILES = ("nn/functional.py", "nn/modules/", "optim/", "nn/utils/clip_grad.py")
_ALLOWED_FILES = ("nn/modules/module.py", "nn/modules/container.py", "optim/optimizer.py", "nn/modules/__init__.py")


# The ATen kernels (and private aliases) behind the forbidden built-ins -> the name in REPLACES.
KERNELS = {
    "_softmax": "softmax", "softmax": "softmax", "special_softmax": "softmax", "_log_softmax": "log_softmax",
    "log_softmax": "log_softmax", "silu": "silu", "silu_": "silu", "nll_loss": "nll_loss", "nll_loss_nd": "nll_loss",
    "nll_loss2d": "nll_loss", "nll_loss_forward": "nll_loss", "cross_entropy_loss": "cross_entropy",
    "linear": "linear", "embedding": "embedding", "embedding_bag": "embedding", "rms_norm": "rms_norm",
    "_fused_rms_norm": "rms_norm", "layer_norm": "layer_norm", "native_layer_norm": "layer_norm",
    "scaled_dot_product_attention": "scaled_dot_product_attention", "_fused_adam_": "adam", "_fused_adamw_": "adamw",
    "_scaled_dot_product_attention_math": "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu": "scaled_dot_product_attention",
    "_scaled_dot_product_efficient_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention": "scaled_dot_product_attention",
}  # fmt: skip


def _is_forbidden_path(dotted: str) -> str | None:
    """The forbidden built-in a dotted torch name uses, if any: "torch.nn.functional.softmax" -> "softmax"."""
    parts = dotted.split(".")
    if parts[0] != "torch" or len(parts) < 2:
        return None
    last = parts[-1]
    if parts[1] == "ops" and len(parts) > 3 and parts[3] in KERNELS:  # torch.ops.aten._softmax(.default)
        return KERNELS[parts[3]]
    if parts[1] in ("special", "_C", "_VF") and last in KERNELS:  # torch.special.softmax, torch._C._nn.linear
        return KERNELS[last]
    if len(parts) == 2 and last.startswith("_") and last in KERNELS:  # torch._softmax, torch._log_softmax
        return KERNELS[last]
    if parts[1:3] == ["nn", "functional"] and len(parts) > 3:
        return last
    if parts[1] == "optim" and len(parts) > 2 and last not in ("Optimizer", "optimizer"):
        return last
    if parts[1] == "nn" and len(parts) > 2 and parts[2] not in _ALLOWED_NN and parts[2] != "functional":
        return last
    if parts[1:3] == ["nn", "utils"] and last.startswith("clip_grad"):
        return last
    if len(parts) == 2 and last in ("softmax", "log_softmax", "embedding", "rms_norm", "layer_norm",
                                    "_fused_adamw_", "_fused_adam_", "scaled_dot_product_attention"):  # fmt: skip
        return last
    return None


def _problem_of(dotted: str) -> str | None:
    """The problem whose solution a forbidden dotted torch name replaces (None: not forbidden)."""
    name = _is_forbidden_path(dotted)
    if name is None:
        return None
    if dotted.startswith("torch.optim."):
        return "learning_rate_schedule" if "lr_scheduler" in dotted else "adamw"
    return REPLACES.get(name)


def scan(package: Path, adapters: Path) -> list[tuple[str, str]]:
    """Static evidence in the submitted files: (problem, "uses torch.nn.functional.softmax, FILE:LINE")."""
    findings = []
    root = package.parent
    for path in sorted([*package.rglob("*.py"), adapters]):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue  # an unparsable file fails its tests by itself
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else "tests/adapters.py"
        for dotted, line in _uses(tree):
            problem = _problem_of(dotted)
            if problem is not None:
                findings.append((problem, f"uses {dotted}, {rel}:{line}"))
    return findings


# Escape hatches that no from-scratch solution needs: each use is evidence for a person to review (the
# grade stands; the report and summary.csv show the lines). Dotted prefixes, resolved through import aliases.
REVIEW_PREFIXES = {
    "torch.ops": "calls torch's operators directly", "torch._C": "reaches into torch's C bindings",
    "torch.special": "uses torch.special", "torch.library": "registers torch kernels",
    "torch.overrides": "touches torch's function hooks", "importlib": "imports by name",
    "ctypes": "loads native code", "types.CodeType": "builds code objects", "types.FunctionType": "builds functions",
    "sys.modules": "edits the module table", "sys._getframe": "inspects frames", "threading": "runs threads",
    "_thread": "runs threads", "multiprocessing": "starts processes", "concurrent.futures": "runs threads or processes",
    "os.fork": "forks", "subprocess": "starts processes", "gc": "walks the heap",
}  # fmt: skip
REVIEW_NAMES = {"__import__": "imports by name", "exec": "runs generated code", "eval": "runs generated code",
                "compile": "compiles code", "__code__": "swaps code objects", "co_filename": "forges a file name",
                "__builtins__": "edits the built-ins", "__globals__": "reaches another module's globals"}  # fmt: skip


_NEAR_TORCH = ("importlib", "threading", "_thread", "multiprocessing", "concurrent.futures", "os.fork", "subprocess")
_GENERATED = ("exec", "eval", "compile", "__import__")


def _aliases_of(uses: list[tuple[str, int]]) -> set[str]:
    return {d.split(".")[-1] for d, _ in uses if d.split(".")[0] == "torch"}


def _private(part: str) -> bool:
    """A private torch name (`_C`, `_softmax`); torch's multi-tensor arithmetic (`_foreach_mul_`) is fine."""
    return part.startswith("_") and not part.startswith("__") and not (part.startswith("_foreach_") and "adam" not in part)


def review(package: Path, adapters: Path) -> list[str]:
    """Escape hatches in the submitted files ("tests/adapters.py:3: torch.ops (calls torch's operators directly)"):
    the static half of the audit that the submission cannot switch off, since it runs in the grader."""
    found: list[str] = []
    root = package.parent
    for path in sorted([*package.rglob("*.py"), adapters]):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else "tests/adapters.py"
        for what, why, line in _hatches(tree):
            entry = f"{rel}:{line}: {what} ({why})"
            if entry not in found:
                found.append(entry)
    return found


def _hatches(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(what, why, line) of each escape hatch; imports by name, generated code, threads and processes count
    only in a file that mentions torch (a BPE trainer's process pool, a lazy `__init__` are honest)."""
    uses = _uses(tree, every_import=True)
    named = [c for n in ast.walk(tree) if isinstance(n, ast.Call) for a in n.args for c in ast.walk(a) if isinstance(c, ast.Constant)]
    near_torch = any(d.split(".")[0] == "torch" for d, _ in uses) or any("torch" in str(a.value) for a in named)
    hits = []
    for dotted, line in uses:
        parts = dotted.split(".")
        prefix = next((p for p in REVIEW_PREFIXES if dotted == p or dotted.startswith(p + ".")), None)
        if prefix is not None and (near_torch or prefix not in _NEAR_TORCH):
            hits.append((prefix, REVIEW_PREFIXES[prefix], line))
        elif parts[0] == "torch" and any(_private(part) for part in parts[1:]):
            hits.append((dotted, "uses a private torch name", line))
    for node in ast.walk(tree):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        name = node.arg if isinstance(node, ast.keyword) else name  # code.replace(co_filename=...)
        if name in _GENERATED and not (near_torch and isinstance(node, ast.Name)):
            continue  # `re.compile`, `model.eval()`: methods, not the built-ins
        if name in REVIEW_NAMES:
            hits.append((name, REVIEW_NAMES[name], getattr(node, "lineno", 0)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr"):
            first = node.args[0] if node.args else None
            chain = _chain(first) if isinstance(first, ast.Attribute) else [first.id] if isinstance(first, ast.Name) else None
            if chain and near_torch and (chain[0] in ("torch", "F", "nn") or chain[0] in _aliases_of(uses)):
                hits.append((f"{node.func.id}({'.'.join(chain)}, ...)", "looks torch names up by string", node.lineno))
    return hits


def _uses(tree: ast.AST, every_import: bool = False) -> list[tuple[str, int]]:
    """Dotted torch names a module imports or uses, resolved through its import aliases."""
    aliases: dict[str, str] = {}
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if every_import:
                    found.append((a.name, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                found.append((f"{node.module}.{a.name}", node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "parent", None), ast.Attribute):
            chain = _chain(node)
            if chain and chain[0] in aliases:
                found.append((".".join([aliases[chain[0]], *chain[1:]]), node.lineno))
        elif isinstance(node, ast.Name) and node.id in aliases and isinstance(node.ctx, ast.Load):
            found.append((aliases[node.id], node.lineno))
    return found


def _chain(node: ast.Attribute) -> list[str] | None:
    parts: list[str] = []
    current: ast.AST = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    return [current.id, *reversed(parts)] if isinstance(current, ast.Name) else None


# ------------------------------------------------------------------------------------ dynamic (worker)
def _forbidden_functions() -> dict[Any, str]:
    import torch
    import torch.nn.functional as F

    table: dict[Any, str] = {}
    for name, value in vars(F).items():
        if callable(value) and not name.startswith("_") and getattr(value, "__module__", "") in (
            "torch.nn.functional", "torch._C._nn", None
        ):  # fmt: skip
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
        submission = (os.path.join(os.getcwd(), "cs336_basics") + os.sep, os.path.join(os.getcwd(), "tests", "adapters.py"))
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
                if rel.startswith(_FORBIDDEN_FILES) and not rel.startswith(_ALLOWED_FILES):
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
SEALED_KERNELS = {
    "_softmax": "softmax", "_log_softmax": "cross_entropy", "silu": "positionwise_feedforward",
    "silu_": "positionwise_feedforward", "glu": "positionwise_feedforward", "nll_loss_forward": "cross_entropy",
    "nll_loss2d_forward": "cross_entropy", "embedding": "embedding", "native_layer_norm": "rmsnorm",
    "_scaled_dot_product_flash_attention_for_cpu": "scaled_dot_product_attention", "_fused_adamw_": "adamw",
    "_fused_adam_": "adamw",
}  # fmt: skip
SEALED_COMPOSITES = {
    "linear": "linear", "rms_norm": "rmsnorm", "_fused_rms_norm": "rmsnorm", "layer_norm": "rmsnorm",
    "cross_entropy_loss": "cross_entropy", "nll_loss": "cross_entropy", "nll_loss_nd": "cross_entropy",
    "scaled_dot_product_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_attention_math": "scaled_dot_product_attention",
}  # fmt: skip
SEALED_MARK = "is a forbidden built-in: the grader's worker has no such kernel"
_SEALED: list[Any] = []  # the libraries holding the replacements (alive as long as the worker)
EVIDENCE: list[str] = []  # what the sealed kernels saw, drained into each reply's audit


def seal() -> list[str]:
    """Replace the forbidden kernels in this process (see above); returns the operators replaced."""
    import torch

    library = torch.library.Library("aten", "IMPL")
    _SEALED.append(library)
    done = []
    for table, keys in ((SEALED_KERNELS, ("CPU",)), (SEALED_COMPOSITES, ("AutogradCPU", "CPU"))):
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
