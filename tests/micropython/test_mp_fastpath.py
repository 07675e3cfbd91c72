"""Which code runs the primitives, under the real MicroPython unix port: the
fast path when the port can load it, the pure-Python fallback only when the
port cannot ("no emitter": ImportError, SyntaxError, ValueError), never on a
MemoryError; ``PATH`` and ``micropython_port.backend.paths()`` say which.

The fault cases run the real wrappers (``x25519``, ``chacha20poly1305``,
``blake2s``) over a copy of ``micropython_port/`` whose fast-path modules are
replaced by one line that raises the exception a port would raise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.mp_helpers import ROOT, MicroPythonFailed, run_mp, run_mp_json

pytestmark = pytest.mark.micropython

FAST = ("_fe25519_thumb", "_fe25519_viper", "_chachapoly_viper", "_blake2s_viper")


def test_the_unix_port_runs_viper_and_says_so() -> None:
    # x86-64 has the native emitter but not the inline Thumb assembler: the
    # asm_thumb module raises SyntaxError and X25519 falls to viper.
    got = run_mp_json("""
import json
from micropython_port import backend, blake2s, chacha20poly1305, x25519
print(json.dumps([x25519.PATH, chacha20poly1305.PATH, blake2s.PATH, backend.paths()]))
""")
    assert got == ["viper", "viper", "viper", "x25519=viper aead=viper blake2s=viper"]


def test_paths_does_not_import_blake2s() -> None:
    got = run_mp_json("""
import json, sys
from micropython_port import backend
print(json.dumps([backend.paths(), "micropython_port.blake2s" in sys.modules]))
""")
    assert got == ["x25519=viper aead=viper", False]


def _tree(tmp_path: Path, raise_stmt: str, modules: tuple[str, ...] = FAST) -> Path:
    for pkg in ("device", "micropython_port"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("tools", "__pycache__"))
    for name in modules:
        (tmp_path / "micropython_port" / f"{name}.py").write_text(raise_stmt + "\n")
    return tmp_path


_IMPORT_ALL = """
import json
from micropython_port import backend, blake2s, chacha20poly1305, x25519
print(json.dumps([x25519.PATH, chacha20poly1305.PATH, blake2s.PATH,
                  x25519.x25519(bytes(31) + b"\\x01", b"\\x09" + bytes(31)).hex()]))
"""


@pytest.mark.parametrize("exc", [
    "ImportError('no such module')",
    "SyntaxError('invalid micropython decorator')",
    "ValueError('incompatible .mpy arch')",
])
def test_a_port_without_the_emitter_falls_back_to_python(tmp_path: Path, exc: str) -> None:
    import nacl.bindings

    root = _tree(tmp_path, f"raise {exc}")
    got = run_mp_json(_IMPORT_ALL, extra_path=[root], cwd=root)
    want = nacl.bindings.crypto_scalarmult(bytes(31) + b"\x01", b"\x09" + bytes(31)).hex()
    assert got == ["python", "python", "python", want]


def test_the_unix_port_does_not_even_parse_the_thumb_module(tmp_path: Path) -> None:
    # x64 (sys.implementation._mpy arch 2) cannot run it: a stand-in that
    # would fail loudly is never imported.
    root = _tree(tmp_path, "raise MemoryError", ("_fe25519_thumb",))
    got = run_mp_json(_IMPORT_ALL, extra_path=[root], cwd=root)
    assert got[:3] == ["viper", "viper", "viper"]


def test_without_asm_thumb_x25519_takes_viper_not_python(tmp_path: Path) -> None:
    root = _tree(tmp_path, "raise SyntaxError('unsupported Thumb instruction')", ("_fe25519_thumb",))
    got = run_mp_json(_IMPORT_ALL, extra_path=[root], cwd=root)
    assert got[:3] == ["viper", "viper", "viper"]


@pytest.mark.parametrize("module", FAST[1:])
def test_a_memory_error_while_loading_a_fast_path_is_raised(tmp_path: Path, module: str) -> None:
    # A tight heap must fail loudly, not quietly run the slow fallback. (The
    # unix port's arch, x64, never tries _fe25519_thumb; the qemu lane
    # checks it: tests/qemu/test_qemu_x25519_asm.py.)
    root = _tree(tmp_path, "raise MemoryError", (module,))
    with pytest.raises(MicroPythonFailed, match="MemoryError"):
        run_mp(_IMPORT_ALL, extra_path=[root], cwd=root)

