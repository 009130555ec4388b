"""The from-scratch audit's static look, in the grader: did the submitted files use the torch built-ins that the
assignment asks students to write (`rules.py`), and which escape hatches should a person review?

- `scan`: imports and attribute uses of forbidden names in the submitted files, resolved through the file's own
  import aliases (`import torch.nn.functional as F` ... `F.softmax(x)`), the ATen kernels and private aliases
  included (`torch.ops.aten._softmax`, `torch.special.softmax`, `torch._C._nn.linear`): evidence that zeroes
  the problem, named "run_linear called torch.nn.functional.linear, cs336_basics/layers.py:12";
- `review`: the escape hatches no honest solution needs (`torch.ops`, `torch._C`, `importlib`, `exec`, code-object
  surgery, `sys.modules` writes, `ctypes`, `gc`, threads or processes near torch): "needs review", no points lost.

The dynamic look runs in the worker (`worker/seal.py`): the forbidden kernels are not there at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cs336_grading.rules import ALLOWED_NN, KERNELS, REPLACES


def _is_forbidden_path(dotted: str) -> str | None:
    """The forbidden built-in a dotted torch name uses, if any: "torch.nn.functional.softmax" -> "softmax"."""
    parts = dotted.split(".")
    if parts[0] != "torch" or len(parts) < 2:
        return None
    last = parts[-1]
    if parts[1] == "ops" and len(parts) > 3 and parts[3] in KERNELS:  # torch.ops.aten._softmax(.default)
        return KERNELS[parts[3]]
    if parts[1] in ("special", "_C", "_VF", "sparse") and last in KERNELS:  # torch.special.softmax, torch._C._nn.linear
        return KERNELS[last]
    if len(parts) == 2 and last.startswith("_") and last in KERNELS:  # torch._softmax, torch._log_softmax
        return KERNELS[last]
    if parts[1:3] == ["nn", "functional"] and len(parts) > 3:
        return last
    if parts[1] == "optim" and len(parts) > 2 and last not in ("Optimizer", "optimizer"):
        return last
    if parts[1] == "nn" and len(parts) > 2 and parts[2] not in ALLOWED_NN and parts[2] != "functional":
        return last
    if parts[1:3] == ["nn", "utils"] and last.startswith("clip_grad"):
        return last
    if len(parts) == 2 and last in (
        "softmax",
        "log_softmax",
        "embedding",
        "embedding_bag",
        "rms_norm",
        "layer_norm",
        "_fused_adamw_",
        "_fused_adam_",
        "scaled_dot_product_attention",
    ):
        return KERNELS.get(last, last)
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
    "torch.ops": "calls torch's operators directly",
    "torch._C": "reaches into torch's C bindings",
    "torch.special": "uses torch.special",
    "torch.library": "registers torch kernels",
    "torch.overrides": "touches torch's function hooks",
    "importlib": "imports by name",
    "ctypes": "loads native code",
    "types.CodeType": "builds code objects",
    "types.FunctionType": "builds functions",
    "sys.modules": "edits the module table",
    "sys._getframe": "inspects frames",
    "threading": "runs threads",
    "_thread": "runs threads",
    "multiprocessing": "starts processes",
    "concurrent.futures": "runs threads or processes",
    "os.fork": "forks",
    "subprocess": "starts processes",
    "gc": "walks the heap",
}
REVIEW_NAMES = {
    "__import__": "imports by name",
    "exec": "runs generated code",
    "eval": "runs generated code",
    "compile": "compiles code",
    "__code__": "swaps code objects",
    "co_filename": "forges a file name",
    "__builtins__": "edits the built-ins",
    "__globals__": "reaches another module's globals",
}


_NEAR_TORCH = ("importlib", "threading", "_thread", "multiprocessing", "concurrent.futures", "os.fork", "subprocess")
_GENERATED = ("exec", "eval", "compile", "__import__")


def _aliases_of(uses: list[tuple[str, int]]) -> set[str]:
    return {d.split(".")[-1] for d, _ in uses if d.split(".")[0] == "torch"}


def _private(part: str) -> bool:
    """A private torch name (`_C`, `_softmax`); torch's multi-tensor arithmetic (`_foreach_mul_`) is fine."""
    return (
        part.startswith("_") and not part.startswith("__") and not (part.startswith("_foreach_") and "adam" not in part)
    )


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
    named = [
        c
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        for a in n.args
        for c in ast.walk(a)
        if isinstance(c, ast.Constant)
    ]
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
        elif near_torch and (lookup := _dynamic_lookup(node)) is not None:
            hits.append((lookup, "looks names up at run time, where the audit cannot follow", node.lineno))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr"):
            first = node.args[0] if node.args else None
            chain = (
                _chain(first)
                if isinstance(first, ast.Attribute)
                else [first.id]
                if isinstance(first, ast.Name)
                else None
            )
            if chain and near_torch and (chain[0] in ("torch", "F", "nn") or chain[0] in _aliases_of(uses)):
                hits.append((f"{node.func.id}({'.'.join(chain)}, ...)", "looks torch names up by string", node.lineno))
    return hits


def _dynamic_lookup(node: ast.AST) -> str | None:
    """`vars(x)`, `x.__dict__`, `globals()`, `getattr(x, <computed>)` on anything but `self`/`cls`: the ways
    to reach a name (`torch._decomp`, `sys.modules`) that no import or attribute in the source spells out."""

    def named(value: ast.AST | None) -> str:
        return ".".join(_chain(value) or ["?"]) if isinstance(value, ast.Attribute) else getattr(value, "id", "?")

    if isinstance(node, ast.Attribute) and node.attr == "__dict__" and named(node.value) not in ("self", "cls"):
        return f"{named(node.value)}.__dict__"
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return None
    first = node.args[0] if node.args else None
    if node.func.id in ("vars", "globals", "locals") and named(first) not in ("self", "cls"):
        return f"{node.func.id}({named(first) if first is not None else ''})"
    computed = len(node.args) > 1 and not isinstance(node.args[1], ast.Constant)
    if node.func.id in ("getattr", "setattr", "delattr") and computed and named(first) not in ("self", "cls"):
        return f"{node.func.id}({named(first)}, <computed name>)"
    return None


def _assigned_aliases(tree: ast.AST, aliases: dict[str, str]) -> None:
    """`F = torch.nn.functional` makes `F` an alias like an import does (two passes: chains of them)."""
    for _ in range(2):
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = node.value
                chain = (
                    _chain(value)
                    if isinstance(value, ast.Attribute)
                    else [value.id]
                    if isinstance(value, ast.Name)
                    else None
                )
                if chain and chain[0] in aliases and node.targets[0].id not in aliases:
                    aliases[node.targets[0].id] = ".".join([aliases[chain[0]], *chain[1:]])


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
    _assigned_aliases(tree, aliases)
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
