"""What the modules of a flash build name, bind and define as constants:
the analysis ``moteseal/flash/shrink.py`` plans its renaming and inlining
from (CPython only, ``ast``).

Invariants:
- Rule 1: every function here only reads the trees it is given.
- Rule 2: a constant is an int known when the module is compiled: a
  top-level ``NAME = const(int expression)``, or a name bound once, at top
  level, to an int expression below 2**30 (a small int on every port); a
  module that imports one at top level re-exports it.
"""

from __future__ import annotations

import ast
from typing import Iterator

__all__ = ["add_reexports", "attr_reads", "const_assign", "defined", "identifiers", "local_bindings",
           "module_aliases", "module_consts", "reached", "strings"]


def identifiers(tree: ast.AST) -> Iterator[str]:
    """Every identifier the tree mentions, and every string constant."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.keyword) and node.arg:
            yield node.arg
        elif isinstance(node, ast.alias):
            yield from node.name.split(".")
            if node.asname:
                yield node.asname
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            yield from node.names
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield from node.module.split(".")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def reached(tree: ast.AST) -> set[str]:
    """The names the tree reaches in other modules or objects: every
    attribute it reads or sets and every name it imports."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            out |= {a.name for a in node.names}
    return out


def defined(tree: ast.AST) -> Iterator[str]:
    """Names the tree binds (Rule 1)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.split(".")[0]


def strings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def const_value(node: ast.expr, known: dict[str, int]) -> int | None:
    """The int a ``const(...)`` argument folds to, or None."""
    if isinstance(node, ast.Constant):
        return node.value if type(node.value) is int else None
    if isinstance(node, ast.Name):
        return known.get(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert)):
        v = const_value(node.operand, known)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else ~v)
    if isinstance(node, ast.BinOp):
        a, b = const_value(node.left, known), const_value(node.right, known)
        if a is None or b is None:
            return None
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.FloorDiv: lambda: a // b if b else None, ast.Mod: lambda: a % b if b else None,
               ast.LShift: lambda: a << b if 0 <= b < 64 else None,
               ast.RShift: lambda: a >> b if b >= 0 else None,
               ast.BitOr: lambda: a | b, ast.BitAnd: lambda: a & b, ast.BitXor: lambda: a ^ b}
        fn = ops.get(type(node.op))
        return None if fn is None else fn()
    return None


def const_assign(stmt: ast.stmt) -> ast.expr | None:
    """The value expression of ``NAME = const(x)`` or of a plain
    ``NAME = <int expression>`` (the backend contract's sizes), else None."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)):
        return None
    v = stmt.value
    if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "const" \
            and len(v.args) == 1 and not v.keywords:
        return v.args[0]
    return v if isinstance(v, (ast.Constant, ast.BinOp, ast.UnaryOp)) else None


def module_consts(tree: ast.Module) -> dict[str, int]:
    """The module's top-level ``NAME = const(int)`` values and those of
    names bound once, at top level, to a small int (below 2**30: a small
    int on every port) (public names)."""
    stores: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            stores[node.id] = stores.get(node.id, 0) + 1
    known: dict[str, int] = {}
    out: dict[str, int] = {}
    for stmt in tree.body:
        expr = const_assign(stmt)
        if expr is None:
            continue
        name = stmt.targets[0].id  # type: ignore[attr-defined]
        v = const_value(expr, known)
        if v is None or stores.get(name) != 1:
            continue
        is_const = isinstance(stmt.value, ast.Call)  # type: ignore[attr-defined]
        if is_const or -(1 << 30) <= v < (1 << 30):
            known[name] = v
            if not name.startswith("_"):
                out[name] = v
    return out


def add_reexports(trees: dict[str, ast.Module], consts: dict[str, dict[str, int]]) -> None:
    """A constant a module imports at top level is one of its own as well:
    another module may import it from there."""
    changed = True
    while changed:
        changed = False
        for m, tree in trees.items():
            for stmt in tree.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                    src = consts.get(stmt.module.replace(".", "/"), {})
                    for a in stmt.names:
                        name = a.asname or a.name
                        if a.name in src and name not in consts[m]:
                            consts[m][name] = src[a.name]
                            changed = True


def local_bindings(tree: ast.Module, consts: dict[str, dict[str, int]]) -> set[str]:
    """Names bound anywhere but at module level (arguments, locals,
    attributes stored; not a function's ``from m import NAME`` of a
    constant): a constant named like one of them stays (Rule 3)."""
    out: set[str] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            imported = set()
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    src = consts.get(node.module.replace(".", "/"), {})
                    imported |= {a.name for a in node.names if a.name in src and a.asname is None}
            out |= set(defined(fn)) - imported
            if not isinstance(fn, ast.Lambda) and not isinstance(fn, ast.ClassDef):
                out.discard(fn.name)
    return out


def module_aliases(tree: ast.Module, consts: dict[str, dict[str, int]]) -> dict[str, str]:
    """Names bound to a module of the build by an import anywhere in the
    tree (``from device import envelope``, ``import device.envelope as
    env``): name -> "device/envelope". A name an import binds to anything
    else as well is left out."""
    bound: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                bound.setdefault(alias.asname or alias.name, set()).add(
                    f"{node.module.replace('.', '/')}/{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name.replace(".", "/") if alias.asname else "?"
                bound.setdefault(alias.asname or alias.name.split(".")[0], set()).add(target)
    return {n: next(iter(m)) for n, m in bound.items() if len(m) == 1 and next(iter(m)) in consts}


def attr_reads(tree: ast.Module, aliases: dict[str, str], consts: dict[str, dict[str, int]]) -> set[str]:
    """Constant names read as an attribute of something other than a known
    alias of the module defining them: these stay globals (Rule 3)."""
    names = set().union(*consts.values()) if consts else set()
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            if not (isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr in consts[aliases[node.value.id]]
                    and isinstance(node.ctx, ast.Load)):
                out.add(node.attr)
    return out
