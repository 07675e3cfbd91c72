"""The layer rules of docs/architecture.md, checked on the source tree.

Every import statement counts, including those inside functions (a lazy
import is still a dependency). Nothing here runs the modules: the rules are
read from the syntax trees, so a rule broken on a path the tests never take
still fails.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("device", "moteseal", "gateway", "micropython_port", "broker_config")

# What MicroPython has (its built-in and port modules, with their u-names).
MICROPYTHON_MODULES = frozenset("""
array asyncio binascii bluetooth collections cryptolib deflate dht errno esp esp32 framebuf gc
hashlib io json machine math micropython neopixel network onewire os platform random re rp2
select socket ssl struct sys termios time tls uctypes vfs
uarray ubinascii ucollections uerrno uhashlib uio ujson uos urandom ure uselect usocket ussl
ustruct usys utime
""".split())
# The device core is sans-I/O (STYLE.md): of MicroPython's modules it may use only these.
DEVICE_MODULES = frozenset({"micropython", "binascii", "hashlib", "os", "uos", "struct", "gc"})
CRYPTO_MODULES = frozenset({"nacl", "cryptography", "hashlib", "hmac", "_hashlib"})
SESSION_CODE = ("device.noise", "device.transport", "device.session", "device.peer",
                "device.backend", "device.counter", "device.replay", "moteseal.crypto",
                "moteseal.keys", "moteseal.peer")
# gateway.shard hashes public device ids to pick a shard (no key): hashlib only.
HASH_ONLY = {"gateway.shard": {"hashlib", "_hashlib"}}
MAX_LINES = 600
GENERATED = {"micropython_port/_fe25519_viper.py", "micropython_port/_chachapoly_viper.py",
             "micropython_port/_fe25519_thumb.py", "micropython_port/_chachapoly_thumb.py",
             "micropython_port/_fe25519_thumb1.py", "micropython_port/_chachapoly_thumb1.py"}


def _modules(pkg: str) -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / pkg).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        if "tools" in rel.parts:  # micropython_port/tools: host-side generators, never imported
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


ALL = {name: path for pkg in PACKAGES for name, path in _modules(pkg).items()}


def _imports(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (absolute)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            for a in node.names:  # ``from device import envelope`` imports device.envelope
                if f"{node.module}.{a.name}" in ALL:
                    names.add(f"{node.module}.{a.name}")
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("mod", sorted(m for m in ALL if _top(m) == "device"))
def test_device_core_imports_only_itself_and_micropython_modules(mod: str) -> None:
    bad = {n for n in _imports(ALL[mod]) if _top(n) != "device" and _top(n) not in DEVICE_MODULES}
    assert not bad, f"{mod} imports {sorted(bad)}: device/ runs on boards (docs/architecture.md)"


@pytest.mark.parametrize("mod", sorted(m for m in ALL if _top(m) == "micropython_port"))
def test_micropython_port_imports_only_device_and_micropython_modules(mod: str) -> None:
    bad = {n for n in _imports(ALL[mod])
           if _top(n) not in ("device", "micropython_port") and _top(n) not in MICROPYTHON_MODULES}
    assert not bad, f"{mod} imports {sorted(bad)}"


@pytest.mark.parametrize("mod", sorted(m for m in ALL if _top(m) == "gateway"))
def test_gateway_imports_no_crypto_and_no_session_code(mod: str) -> None:
    bad = {n for n in _imports(ALL[mod])
           if _top(n) in CRYPTO_MODULES or any(n == s or n.startswith(s + ".") for s in SESSION_CODE)}
    bad -= HASH_ONLY.get(mod, set())
    assert not bad, f"{mod} imports {sorted(bad)}: the gateway holds no keys and never decrypts"


def test_host_links_sit_below_the_gateway() -> None:
    """The gateway may use moteseal.links (CPython links over device.framing)
    and nothing else of the host package; the links use only the framing."""
    for mod in (m for m in ALL if _top(m) == "gateway"):
        host = {n for n in _imports(ALL[mod]) if _top(n) == "moteseal"}
        assert all(n.startswith("moteseal.links") for n in host), (mod, host)
    for mod in (m for m in ALL if m.startswith("moteseal.links")):
        ours = {n for n in _imports(ALL[mod]) if _top(n) in PACKAGES}
        assert ours <= {"device", "device.framing", "device.errors", "moteseal.links"} | {
            m for m in ALL if m.startswith("moteseal.links")}, (mod, ours)


def test_no_import_cycles_between_modules() -> None:
    graph = {m: {n for n in _imports(p) if n in ALL and n != m} for m, p in ALL.items()}
    # A package's __init__ is imported with each of its modules; an edge to
    # it is not a dependency on its siblings, so drop edges into __init__s
    # that hold only lazy re-exports.
    inits = {m for m, p in ALL.items() if p.name == "__init__.py"}
    graph = {m: {n for n in e if n not in inits} for m, e in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_file_longer_than_600_lines() -> None:
    files = subprocess.run(["git", "ls-files", "*.py", "*.sh", "*.js", "*.html", "*.css"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    long = {f: n for f in files if f not in GENERATED and (REPO / f).exists()
            and (n := len((REPO / f).read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_rules_see_what_they_check() -> None:
    """The checks above read real imports: a sample of known edges is found."""
    assert "device.framing" in _imports(ALL["moteseal.links.serial_link"])
    assert "device.transport" in _imports(ALL["device.noise"])
    assert "device.envelope" in _imports(ALL["device.session"])
    assert len([m for m in ALL if _top(m) == "device"]) >= 12
