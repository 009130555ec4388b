"""Disguised copies of a submission, as a student who copies would make them, for the similarity tests.

`disguise(source, seed)` renames every identifier the file defines (functions, classes, arguments,
variables, `self.` attributes), reorders the top-level functions and classes and the methods of each
class, drops every comment and docstring and writes new ones, and reformats the code (`ast.unparse`).
Imports and library names (`torch.einsum`) stay, since renaming them would break the program.
"""

from __future__ import annotations

import ast
import builtins
import random
from pathlib import Path

_WORDS = ("value", "tmp", "thing", "acc", "buf", "res", "item", "part", "data", "node", "arr", "obj")


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.mapping.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        node.attr = self.mapping.get(node.attr, node.attr)
        self.generic_visit(node)
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        node.arg = self.mapping.get(node.arg, node.arg) if node.arg else node.arg
        self.generic_visit(node)
        return node

    def _rename_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.AST:
        if not (node.name.startswith("__") and node.name.endswith("__")):
            node.name = self.mapping.get(node.name, node.name)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _rename_def


def _defined_names(tree: ast.Module) -> set[str]:
    """The names this file binds itself (not its imports, not builtins, not dunders)."""
    imported = {
        (a.asname or a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names - imported if not hasattr(builtins, n) and not n.startswith("__") and n != "self"}


def _strip_docstrings(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]


def disguise(source: str, seed: int = 0) -> str:
    """The same program, identifiers renamed, definitions reordered, comments and layout rewritten."""
    rng = random.Random(seed)
    tree = ast.parse(source)
    names = sorted(_defined_names(tree))
    mapping = {n: f"{rng.choice(_WORDS)}_{i}_{rng.randrange(1000)}" for i, n in enumerate(names)}
    tree = _Renamer(mapping).visit(tree)
    _strip_docstrings(tree)
    for node in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
        defs = [i for i, s in enumerate(node.body) if isinstance(s, ast.FunctionDef | ast.ClassDef)]
        shuffled = [node.body[i] for i in defs]
        rng.shuffle(shuffled)
        for i, stmt in zip(defs, shuffled):
            node.body[i] = stmt
    lines = ast.unparse(tree).splitlines()
    out = []
    for line in lines:
        if line.lstrip().startswith(("def ", "class ")) and rng.random() < 0.5:
            out.append(line[: len(line) - len(line.lstrip())] + f"# helper number {rng.randrange(99)}")
        out.append(line)
    return "\n".join(out) + "\n"


def disguise_submission(src: Path, dest: Path, seed: int = 0) -> Path:
    """A disguised copy of the submission folder `src` (its `cs336_basics/` and `tests/adapters.py`)."""
    for path in sorted(src.rglob("*.py")):
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(disguise(path.read_text(encoding="utf-8"), seed))
    return dest
