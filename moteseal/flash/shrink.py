"""Build-time shrinking of the lean device build (CPython only): the same
modules with shorter names and fewer globals, for flash (docs/micropython.md,
"Flash size").

Every ``.mpy`` carries its own table of the names it uses (qstrs), so each
long name costs its length once per module that uses it. ``Shrinker``
plans one renaming from the sources of every module a build may ship and
rewrites each module of a build (``ast``, then unparsed); the ``.py`` files
are unchanged and a ``--debug`` build is not shrunk.

Invariants:
- Rule 1: only names private to the build change: identifiers with one
  leading underscore that the build itself defines (a ``def``, a class, an
  argument, an assigned variable or ``self._x`` attribute, an import
  alias), and the board-internal names of ``INTERNAL``. A name that also
  appears as a string anywhere in the build (``getattr``, ``hasattr``,
  ``delattr``) or in a module left as it is (native code), a module's file
  name and ``KEEP_PRIVATE`` keep their names. The documented API
  (docs/micropython.md, examples/) and whatever the host reads (the wire,
  the event and summary lines) have no leading underscore and are not in
  ``INTERNAL``.
- Rule 2: a renamed identifier gets the same short name in every module of
  every build (planned from all the pristine sources, whatever a build
  ships), and no short name is an identifier, builtin or keyword the build
  uses; only a folded ``_X = const()`` keeps an underscore.
- Rule 3: a public int constant (``names`` Rule 2) that ``keep`` does not
  list is written where the build reads it (in its module, through ``from
  m import NAME`` and ``m.NAME``) and is no longer a module global. A name
  some function also binds, or that is reached any other way, stays.
- Rule 4: the CPython fallback for ``const`` (``try: from micropython import
  const`` / ``except ImportError: def const(x)``) goes: mpy-cross folds
  ``const()`` without the import.
- Rule 5: required parameters (no default) get one- or two-letter names,
  unless some call passes that name as a keyword (or a string names it),
  the function is called with ``**``, or it is ``PUBLIC``.
- Rule 6: ``raise E("")`` (a message ``build.strip_messages`` emptied)
  becomes ``raise E``, unless ``E`` defines its own ``__init__``.
- Rule 7: unparsing alone changes no bytecode (``_Unparser``; tested on
  every device module).
- Rule 8: the names ``STABLE`` modules reach in other modules (attributes,
  imported names) never change, so that main.py and the update step work
  with the modules an update brings, shrunk differently or not at all.
"""

from __future__ import annotations

import ast
import re
import string
from typing import Iterable, Iterator

from moteseal.flash.errors import FlashError
from moteseal.flash.names import (add_reexports, attr_reads, const_assign, defined, identifiers,
                                  local_bindings, module_aliases, module_consts, reached, strings)

__all__ = ["INTERNAL", "KEEP_CONSTANTS", "KEEP_PRIVATE", "PUBLIC", "STABLE", "Shrinker"]

_PRIVATE = re.compile(r"_[A-Za-z0-9]\w*\Z")
# Module-level constants a user's program may read on the board (none is
# documented as device API today; the list is where one would go).
KEEP_CONSTANTS: frozenset[str] = frozenset()
# Private names a test calls on a lean build (tests/host/test_flash_features.py
# runs main's update boot step on its own), which keep their names.
KEEP_PRIVATE: frozenset[str] = frozenset({"_update_boot"})
# Rule 8: modules that run across an application update
# (micropython_port/app_update.py swaps every other module's file while
# they run, and main.py then imports the new ones, which may come from a
# debug build or another version's sources): every name they reach in
# another module keeps its name.
STABLE = ("micropython_port/main", "micropython_port/app_update")
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
    "is_all_zero", "ct_equal", "put_counter", "skip_past", "padded_size", "last_len",
    # device/delivery.py's Outbox, for the app
    "resend_due", "mark_sent", "next_seq",
    # module tables and limits read only inside the build (device/bundle.py,
    # envelope.py, counter.py, noise.py) and the envelope's routing checks
    "FIELDS", "PAD_KINDS", "LINK_FIELDS", "SID_MAX", "NONCE_MAX", "COUNTER_MAX", "DEFAULT_SUITE",
    "header_size", "src_is", "dst_is",
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
            const_assign(stmt) is not None
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
        for module in STABLE:  # Rule 8
            if module in trees:
                frozen |= reached(trees[module])
        for text in frozen_sources:
            frozen |= set(identifiers(_parse("native module", text)))
        taken = set(frozen)
        quoted: set[str] = set()
        for tree in trees.values():
            taken |= set(identifiers(tree))
            quoted |= set(strings(tree))
        # Rule 3: constants, unless some code binds or reaches the same name otherwise.
        keep = set(keep) | frozen | quoted
        self.consts = {m: module_consts(t) for m, t in trees.items()}
        add_reexports(trees, self.consts)
        local: set[str] = set()
        for m, t in trees.items():
            local |= local_bindings(t, self.consts)
            local |= attr_reads(t, module_aliases(t, self.consts), self.consts)
        self.inline = {m: {n for n in c if n not in keep and n not in local}
                       for m, c in self.consts.items()}
        # Rule 6: classes whose own __init__ may need an argument.
        self.takes_args = {node.name for tree in trees.values() for node in ast.walk(tree)
                           if isinstance(node, ast.ClassDef)
                           and any(isinstance(f, ast.FunctionDef) and f.name == "__init__"
                                   for f in node.body)}
        # Rule 5: a parameter passed by name anywhere, or named in a string,
        # keeps its name; so do those of anything called with ``**``.
        self.keywords = quoted | frozen
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.keyword) and node.arg:
                    self.keywords.add(node.arg)
                if isinstance(node, ast.Call) and any(k.arg is None for k in node.keywords):
                    self.keywords |= set(_called_params(trees, node.func))
        # Rule 1: what may be renamed, the most costly first (each module pays once).
        cost: dict[str, int] = {}
        bound: set[str] = set()
        for tree in trees.values():
            bound |= set(defined(tree))
            for ident in set(identifiers(tree)):
                cost[ident] = cost.get(ident, 0) + len(ident) + 2
        candidates = sorted((n for n in bound if (_is_private(n) or n in INTERNAL)
                             and n not in frozen and n not in quoted),
                            key=lambda n: (-cost.get(n, 0), n))
        # A module-level ``_X = const(...)`` must keep its underscore (mpy-cross
        # then folds it and stores no global); any other name needs none.
        folded = {stmt.targets[0].id  # type: ignore[attr-defined]
                  for tree in trees.values() for stmt in tree.body
                  if const_assign(stmt) is not None
                  and isinstance(stmt.value, ast.Call)}  # type: ignore[attr-defined]
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
                         module_aliases(tree, self.consts), self.takes_args).visit(tree)
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
    for ident in identifiers(tree):
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
