"""Build-time name shrinking for the lean device build (CPython only): the
same modules with shorter names, for flash (docs/micropython.md, "Flash
size").

Every ``.mpy`` carries its own table of the names it uses (qstrs), so each
long internal name costs its length once per module that uses it. ``Shrinker``
rewrites the sources of a build together (``ast``, then ``ast.unparse``);
the ``.py`` files are unchanged and a debug build does not shrink.

Invariants:
- Rule 1: only names private to the build change: identifiers with one
  leading underscore that the build itself defines (a ``def``, a class, an
  argument, an assigned variable or ``self._x`` attribute, an import alias).
  A name that also appears as a string anywhere in the build (``getattr``,
  ``hasattr``, ``delattr``) or in a module left as it is (native code), or
  that is a module's file name, keeps its name. Public names (the API of
  docs/micropython.md, everything the host or a user's program reaches)
  have no leading underscore and never change.
- Rule 2: a renamed identifier gets the same short name in every module of
  the build, and no short name is an identifier the build already uses, so
  an attribute set in one module and read in another still meets.
- Rule 3: a module-level ``NAME = const(int)`` (or ``NAME = int`` bound
  once, a small int) whose name ``keep`` does not list is replaced by its
  value wherever the build reads it (``NAME`` in its module, ``from m
  import NAME`` and ``m.NAME`` in others) and is no longer a module global. A name some function also binds locally, or that a
  module left as it is mentions, stays a global.
- Rule 4: the CPython fallback for ``const`` (``try: from micropython import
  const`` / ``except ImportError: def const(x)``) goes: mpy-cross folds
  ``const()`` without the import.
"""

from __future__ import annotations

import ast
import re
import string
from typing import Iterable, Iterator

from moteseal.flash.errors import FlashError

__all__ = ["INTERNAL", "KEEP_CONSTANTS", "KEEP_PRIVATE", "PUBLIC", "Shrinker"]

_PRIVATE = re.compile(r"_[A-Za-z0-9]\w*\Z")
# Module-level constants a user's program may read on the board (none is
# documented as device API today; the list is where one would go).
KEEP_CONSTANTS: frozenset[str] = frozenset()


# Private names a test calls on a lean build (tests/host/test_flash_features.py
# runs main's update boot step on its own), which keep their names.
KEEP_PRIVATE: frozenset[str] = frozenset({"_update_boot"})
# Names without a leading underscore that only the build's own modules use
# on a board (no document, example or user program names them; the host
# runs the .py sources): renamed like private ones (Rule 1).
INTERNAL: frozenset[str] = frozenset({
    # micropython_port/mqtt_codec.py, for mqtt.py
    "encode_connect_into", "encode_publish_into", "encode_subscribe_into", "payload_len",
    # device/envelope.py, for the session, reading and app
    "encode_header_into", "envelope_limit", "put_head",
    # device/noise.py's spec steps (Noise section 5), called inside noise.py
    "initialize_key", "encrypt_with_ad", "decrypt_with_ad", "mix_key_and_hash",
    "encrypt_and_hash", "decrypt_and_hash", "parse_suite",
    # device/backend.py helpers, device/counter.py and device/session.py for the app
    "is_all_zero", "ct_equal", "put_counter", "skip_past", "send_nonce", "padded_size", "last_len",
    # device/delivery.py's Outbox, for the app
    "resend_due", "mark_sent", "next_seq",
})
# Rule 5: functions (or classes: all their methods) whose parameters keep
# their names, as docs/micropython.md and examples/ call them.
PUBLIC: dict[str, frozenset[str]] = {
    "micropython_port/main": frozenset({"main", "load_bundle", "network_up"}),
    "micropython_port/app": frozenset({"Device", "MqttDeviceLink"}),
    "micropython_port/mqtt": frozenset({"MQTTClient"}),
    "micropython_port/mqtt_codec": frozenset({"PacketParser"}),
    "micropython_port/backend": frozenset({"paths"}),
    "device/reading": frozenset({"ReadingWriter"}),
}


def _is_private(name: str) -> bool:
    return bool(_PRIVATE.match(name)) and not name.endswith("__")


def _identifiers(tree: ast.AST) -> Iterator[str]:
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


def _defined(tree: ast.AST) -> Iterator[str]:
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


def _strings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def _short_names(taken: set[str], prefix: str) -> Iterator[str]:
    """``prefix`` + ``a``, ... ``Z``, then two characters (a letter, then a
    letter or digit), ...: identifiers, never a keyword, a builtin or a
    method of a builtin type, skipping ``taken``."""
    import builtins
    import keyword
    reserved = set(dir(builtins))
    for t in (object, Exception, bytes, bytearray, memoryview, list, dict, str, int, tuple):
        reserved |= set(dir(t))
    first = string.ascii_letters
    rest = string.ascii_letters + string.digits
    tails: list[str] = list(first)
    while True:
        for tail in tails:
            name = prefix + tail
            if name not in taken and name not in reserved and not keyword.iskeyword(name):
                yield name
        tails = [t + c for t in tails for c in rest]


def _drop_const_fallback(tree: ast.Module) -> None:
    """Rule 4, at module level."""
    def is_const_import(stmt: ast.stmt) -> bool:
        return isinstance(stmt, ast.ImportFrom) and stmt.module == "micropython" \
            and [a.name for a in stmt.names] == ["const"] and stmt.names[0].asname is None

    body = []
    for stmt in tree.body:
        if is_const_import(stmt):
            continue
        if isinstance(stmt, ast.Try) and len(stmt.body) == 1 and is_const_import(stmt.body[0]) \
                and not stmt.orelse and not stmt.finalbody and len(stmt.handlers) == 1:
            continue
        body.append(stmt)
    tree.body = body


def _const_value(node: ast.expr, known: dict[str, int]) -> int | None:
    """The int a ``const(...)`` argument folds to, or None."""
    if isinstance(node, ast.Constant):
        return node.value if type(node.value) is int else None
    if isinstance(node, ast.Name):
        return known.get(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert)):
        v = _const_value(node.operand, known)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else ~v)
    if isinstance(node, ast.BinOp):
        a, b = _const_value(node.left, known), _const_value(node.right, known)
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


def _const_assign(stmt: ast.stmt) -> ast.expr | None:
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


def _module_consts(tree: ast.Module) -> dict[str, int]:
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
        expr = _const_assign(stmt)
        if expr is None:
            continue
        name = stmt.targets[0].id  # type: ignore[attr-defined]
        v = _const_value(expr, known)
        if v is None or stores.get(name) != 1:
            continue
        is_const = isinstance(stmt.value, ast.Call)  # type: ignore[attr-defined]
        if is_const or -(1 << 30) <= v < (1 << 30):
            known[name] = v
            if not name.startswith("_"):
                out[name] = v
    return out


def _add_reexports(trees: dict[str, ast.Module], consts: dict[str, dict[str, int]]) -> None:
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


def _local_bindings(tree: ast.Module, consts: dict[str, dict[str, int]]) -> set[str]:
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
            out |= set(_defined(fn)) - imported
            if not isinstance(fn, ast.Lambda) and not isinstance(fn, ast.ClassDef):
                out.discard(fn.name)
    return out


def _module_aliases(tree: ast.Module, consts: dict[str, dict[str, int]]) -> dict[str, str]:
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


def _attr_reads(tree: ast.Module, aliases: dict[str, str], consts: dict[str, dict[str, int]]) -> set[str]:
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


class _Rewriter(ast.NodeTransformer):
    """Applies one build's renames and constant values to one module."""

    def __init__(self, module: str, renames: dict[str, str], consts: dict[str, dict[str, int]],
                 inline: dict[str, set[str]], mod_alias: dict[str, str],
                 takes_args: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.renames = renames
        self.module = module
        self.own = {n: v for n, v in consts.get(module, {}).items() if n in inline.get(module, ())}
        self.consts = consts
        self.inline = inline
        self.imported: dict[str, int] = {}   # local name -> value (from m import NAME)
        self.mod_alias = mod_alias  # local name -> module ("device/envelope")
        self.takes_args = takes_args  # classes with an __init__ of their own

    def _value(self, name: str) -> int | None:
        if name in self.own:
            return self.own[name]
        return self.imported.get(name)

    def visit_Module(self, node: ast.Module) -> ast.AST:
        # Every import of an inlined constant, wherever it is, goes first.
        for stmt in ast.walk(node):
            if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                src = stmt.module.replace(".", "/")
                for alias in stmt.names:
                    if alias.name in self.inline.get(src, ()):
                        self.imported[alias.asname or alias.name] = self.consts[src][alias.name]
        node.body = [stmt for stmt in node.body if not (
            _const_assign(stmt) is not None
            and stmt.targets[0].id in self.own)]  # type: ignore[attr-defined]  # Rule 3: inlined
        self.generic_visit(node)
        node.body = [s for s in node.body if not isinstance(s, ast.Pass)] or [ast.Pass()]
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        if node.module and node.level == 0:
            src = node.module.replace(".", "/")
            node.names = [a for a in node.names if a.name not in self.inline.get(src, ())]
            if not node.names:
                return ast.Pass()
        self.generic_visit(node)
        return node

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        # Rule 6: ``raise E("")`` (a message the lean build emptied) is
        # ``raise E``: the same class and an empty message, 4 bytes less.
        exc = node.exc
        if isinstance(exc, ast.Call) and len(exc.args) == 1 and not exc.keywords \
                and isinstance(exc.args[0], ast.Constant) and exc.args[0].value == "" \
                and isinstance(exc.func, ast.Name) and exc.func.id not in self.takes_args:
            node.exc = exc.func
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load):
            v = self._value(node.id)
            if v is not None:
                return ast.copy_location(ast.Constant(v), node)
        node.id = self.renames.get(node.id, node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) \
                and node.value.id in self.mod_alias:
            mod = self.mod_alias[node.value.id]
            if node.attr in self.inline.get(mod, ()):
                return ast.copy_location(ast.Constant(self.consts[mod][node.attr]), node)
        self.generic_visit(node)
        node.attr = self.renames.get(node.attr, node.attr)
        return node

    def _def(self, node: ast.AST) -> ast.AST:
        node.name = self.renames.get(node.name, node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _def

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.renames.get(node.arg, node.arg)
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        if node.arg:
            node.arg = self.renames.get(node.arg, node.arg)
        self.generic_visit(node)
        return node

    def visit_alias(self, node: ast.alias) -> ast.AST:
        if "." not in node.name:
            node.name = self.renames.get(node.name, node.name)
        if node.asname:
            node.asname = self.renames.get(node.asname, node.asname)
        return node

    def visit_Global(self, node: ast.Global) -> ast.AST:
        node.names = [self.renames.get(n, n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global


class Shrinker:
    """One renaming and one set of inlined constants (Rules 1-3), planned
    from the pristine sources of every module a build may ship, so that
    every build (any arch, link or feature set) names things alike; then
    ``apply`` rewrites each module of a build. Not shared between threads
    (build one directory at a time)."""

    def __init__(self, sources: dict[str, str], frozen_sources: Iterable[str] = (),
                 module_names: Iterable[str] = (), keep: Iterable[str] = KEEP_CONSTANTS) -> None:
        """``sources``: {"device/envelope": text, ...}; ``frozen_sources``:
        modules left as they are (native code), whose every name is kept;
        ``module_names``: every module's file name (never renamed). Raises
        ``FlashError`` for a source that does not parse."""
        trees = {name: _parse(name, text) for name, text in sources.items()}
        frozen: set[str] = set(module_names) | KEEP_PRIVATE
        for text in frozen_sources:
            frozen |= set(_identifiers(_parse("native module", text)))
        taken = set(frozen)
        strings: set[str] = set()
        for tree in trees.values():
            taken |= set(_identifiers(tree))
            strings |= set(_strings(tree))
        # Rule 3: constants, unless some code binds or reaches the same name otherwise.
        keep = set(keep) | frozen | strings
        self.consts = {m: _module_consts(t) for m, t in trees.items()}
        _add_reexports(trees, self.consts)
        local: set[str] = set()
        for m, t in trees.items():
            local |= _local_bindings(t, self.consts) | _attr_reads(t, _module_aliases(t, self.consts), self.consts)
        self.inline = {m: {n for n in c if n not in keep and n not in local}
                       for m, c in self.consts.items()}
        # Rule 6: classes whose own __init__ may need an argument.
        self.takes_args = {node.name for tree in trees.values() for node in ast.walk(tree)
                           if isinstance(node, ast.ClassDef)
                           and any(isinstance(f, ast.FunctionDef) and f.name == "__init__"
                                   for f in node.body)}
        # Rule 5: a parameter passed by name anywhere, or named in a string,
        # keeps its name; so do those of anything called with ``**``.
        self.keywords = set(strings) | frozen
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.keyword) and node.arg:
                    self.keywords.add(node.arg)
                if isinstance(node, ast.Call) and any(k.arg is None for k in node.keywords):
                    self.keywords |= set(_called_params(trees, node.func))
        # Rule 1: what may be renamed, the most costly first (each module pays once).
        cost: dict[str, int] = {}
        defined: set[str] = set()
        for tree in trees.values():
            defined |= set(_defined(tree))
            for ident in set(_identifiers(tree)):
                cost[ident] = cost.get(ident, 0) + len(ident) + 2
        candidates = sorted((n for n in defined if (_is_private(n) or n in INTERNAL)
                             and n not in frozen and n not in strings),
                            key=lambda n: (-cost.get(n, 0), n))
        # A module-level ``_X = const(...)`` must keep its underscore (mpy-cross
        # then folds it and stores no global); any other name needs none.
        folded = {stmt.targets[0].id for tree in trees.values() for stmt in tree.body  # type: ignore[attr-defined]
                  if _const_assign(stmt) is not None and isinstance(stmt.value, ast.Call)}  # type: ignore[attr-defined]
        pools = {True: _short_names(taken, "_"), False: _short_names(taken, "")}
        self.renames: dict[str, str] = {}
        for name in candidates:
            new = next(pools[name in folded])
            if len(new) < len(name):
                self.renames[name] = new

    def apply(self, module: str, text: str) -> str:
        """``text`` (the build's source of ``module``, one of the planned
        ones) rewritten. Raises ``FlashError`` for a source that does not
        parse."""
        tree = _parse(module, text)
        _drop_const_fallback(tree)
        tree = _Rewriter(module, self.renames, self.consts, self.inline,
                         _module_aliases(tree, self.consts), self.takes_args).visit(tree)
        _rename_params(tree, self.keywords, PUBLIC.get(module, ()))
        ast.fix_missing_locations(tree)
        return _Unparser().visit(tree) + "\n"


def _called_params(trees: dict[str, ast.Module], func: ast.expr) -> Iterator[str]:
    """The parameter names of every function (or class's ``__init__``) in
    the build named like the callee ``func``."""
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    for tree in trees.values():
        for node in ast.walk(tree):
            fns = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                fns = [node]
            elif isinstance(node, ast.ClassDef) and node.name == name:
                fns = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
            for fn in fns:
                a = fn.args
                yield from (x.arg for x in a.posonlyargs + a.args + a.kwonlyargs)


def _rename_params(tree: ast.Module, keep: set[str], public: Iterable[str]) -> None:
    """Rule 5: required parameters (no default) of every function but those
    of ``public`` (names of functions or classes, all of whose methods are
    public) and those in ``keep`` get short names, wherever the module then
    no longer needs the old name at all."""
    public = set(public)
    funcs: list[ast.AST] = []

    def collect(body: list[ast.stmt], exposed: bool) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                collect(node.body, exposed or node.name in public)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not ((exposed and not _is_private(node.name)) or node.name in public):
                    funcs.append(node)  # a public class's private methods are not its API
    collect(tree.body, False)
    for node in ast.walk(tree):
        if isinstance(node, ast.Lambda):
            funcs.append(node)

    def required(fn: ast.AST) -> list[ast.arg]:
        a = fn.args  # type: ignore[attr-defined]
        pos = a.posonlyargs + a.args
        n = len(pos) - len(a.defaults)
        first = 1 if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and pos \
            and pos[0].arg in ("self", "cls") else 0
        return pos[first:n]

    def scopes(fn: ast.AST) -> Iterator[ast.AST]:
        # The function's parameters and body, nested scopes included; not
        # its defaults or decorators (evaluated outside it).
        a = fn.args  # type: ignore[attr-defined]
        yield from a.posonlyargs + a.args + a.kwonlyargs
        yield from (x for x in (a.vararg, a.kwarg) if x is not None)
        body = fn.body if isinstance(fn.body, list) else [fn.body]  # type: ignore[attr-defined]
        for stmt in body:
            yield from ast.walk(stmt)

    # What each candidate name would need: every function it is a required
    # parameter of must be renamable, and nothing else may mention it.
    plans: dict[str, list[ast.AST]] = {}
    for fn in funcs:
        for a in required(fn):
            plans.setdefault(a.arg, []).append(fn)
    mentioned: dict[str, int] = {}
    for ident in _identifiers(tree):
        mentioned[ident] = mentioned.get(ident, 0) + 1
    covered: dict[str, int] = {}
    blocked: set[str] = set(keep)
    for name, fns in plans.items():
        count = 0
        for fn in fns:
            for n in scopes(fn):
                if isinstance(n, ast.Name) and n.id == name:
                    count += 1
                elif isinstance(n, ast.arg) and n.arg == name:
                    count += 1
                    if not any(n is a for a in required(fn)):
                        blocked.add(name)  # rebound by a nested scope or a default
                elif isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names:
                    blocked.add(name)
        covered[name] = count
    taken = set(mentioned) | set(dir(__builtins__)) | {"self", "cls"}
    letters = [c for c in string.ascii_lowercase]
    pool = [c for c in letters if c not in taken] + \
        [a + b for a in letters for b in letters if a + b not in taken]
    for fn in funcs:
        fresh = iter(pool)
        for a in required(fn):
            name = a.arg
            if name in blocked or covered.get(name) != mentioned.get(name) or len(name) <= 2:
                continue
            new = next(fresh)
            a.arg = new
            for n in scopes(fn):
                if isinstance(n, ast.Name) and n.id == name:
                    n.id = new


class _Unparser(ast._Unparser):  # type: ignore[name-defined,misc]
    """``ast.unparse`` writing ``a, b = b, a`` as it was: MicroPython
    compiles an unparenthesised two- or three-element swap to stack moves,
    but ``a, b = (b, a)`` builds a tuple (a heap allocation in the
    transport's path)."""

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Tuple) and node.value.elts:
            self.set_precedence(ast._Precedence.TUPLE, node.value)  # type: ignore[attr-defined]
        super().visit_Assign(node)


def _parse(name: str, text: str) -> ast.Module:
    try:
        return ast.parse(text)
    except SyntaxError as exc:
        raise FlashError(f"shrink: {name}: {exc}") from None
