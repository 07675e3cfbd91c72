"""The same runner under the real MicroPython unix port:
``micropython -m moteseal.conformance.runner FILE`` prints the same lines as
``moteseal vectors run FILE`` and exits the same way (docs/conformance.md).

A BLAKE2s vector may differ in exactly one way: if this MicroPython's
backend lacks BLAKE2s, the line is a SKIP naming that reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from moteseal.conformance import runner as conformance
from moteseal.conformance import vectorgen
from tests.mp_helpers import ROOT, mp_binary, mp_env, run_mp
from tests.host.test_conformance import mixed_doc, shared_doc

pytestmark = pytest.mark.micropython

TIMEOUT = 300  # pure-Python fallbacks on a slow CI core


def _mp(*files: Path) -> tuple[int, list[str]]:
    p = subprocess.run([mp_binary(), "-m", "moteseal.conformance.runner", *map(str, files)],
                       capture_output=True, text=True, timeout=TIMEOUT, env=mp_env(), cwd=ROOT)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, p.stdout.splitlines()


def _cpython(*files: Path) -> tuple[int, list[str]]:
    lines: list[str] = []
    counts, unreadable = conformance.run_paths([str(f) for f in files],
                                               conformance.default_backend(), lines.append)
    lines.append(conformance.summary(counts))
    return (2 if unreadable else 1 if counts[1] else 0), lines


def _same(cp: list[str], mp: list[str]) -> None:
    """Equal line for line, except BLAKE2s vectors this MicroPython skips."""
    assert len(cp) == len(mp)
    skipped = 0
    for a, b in zip(cp[:-1], mp[:-1]):
        if a != b:
            assert "_BLAKE2s " in a and b.startswith("SKIP ") and \
                "hash BLAKE2s unavailable on this backend" in b, (a, b)
            skipped += 1
    if skipped == 0:
        assert cp[-1] == mp[-1]


def _write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_micropython_passes_the_shared_file_with_the_same_lines(shared_vectors: Path) -> None:
    path = shared_vectors / "vectors" / "noise_nk_cacophony.json"
    code, lines = _mp(path)
    assert code == 0, lines
    assert " 0 failed" in lines[-1]
    _same(_cpython(path)[1], lines)


def test_micropython_skips_unsupported_protocols_in_a_mixed_file(
        tmp_path: Path, shared_vectors: Path) -> None:
    path = _write(tmp_path, "mixed.json", mixed_doc(shared_vectors))
    code, lines = _mp(path)
    assert code == 0
    assert sum(ln.startswith("SKIP ") for ln in lines) >= 14
    assert any(ln.endswith("initiator: unsupported DH 448") for ln in lines)
    _same(_cpython(path)[1], lines)


def test_micropython_fails_a_changed_ciphertext_with_its_reason(
        tmp_path: Path, shared_vectors: Path) -> None:
    doc = shared_doc(shared_vectors)
    v = next(v for v in doc["vectors"] if v["protocol_name"] == "Noise_NKpsk0_25519_ChaChaPoly_SHA256")
    ct = bytearray.fromhex(v["messages"][0]["ciphertext"])
    ct[40] ^= 0x80
    v["messages"][0]["ciphertext"] = ct.hex()
    path = _write(tmp_path, "flipped.json", doc)
    code, lines = _mp(path)
    assert code == 1
    i = doc["vectors"].index(v) + 1
    assert f"FAIL #{i} {v['protocol_name']} initiator: message 1 ciphertext differs at byte 40" in lines
    assert f"FAIL #{i} {v['protocol_name']} responder: message 1 rejected: AuthError" in lines
    _same(_cpython(path)[1], lines)


def test_micropython_passes_the_generated_transport_vectors(tmp_path: Path) -> None:
    path = tmp_path / "moteseal.json"
    path.write_text(vectorgen.dumps(vectorgen.generate()))
    code, lines = _mp(path)
    assert code == 0, lines
    _same(_cpython(path)[1], lines)


def test_micropython_reports_unreadable_files() -> None:
    code, lines = _mp(ROOT / "no-such-file.json")
    assert code == 2
    assert lines[0].startswith("ERROR ")


def test_a_backend_without_blake2s_skips_those_vectors_with_the_reason(shared_vectors: Path) -> None:
    # On real MicroPython: a backend whose hash() refuses BLAKE2s with
    # LocalError, as a port without BLAKE2s does (device/backend.py contract).
    path = shared_vectors / "vectors" / "noise_nk_cacophony.json"
    out = run_mp(f"""
from moteseal.conformance import runner as conformance
from device.errors import LocalError
from micropython_port.backend import MicroBackend

class NoBlake(MicroBackend):
    def hash(self, name):
        if name == "BLAKE2s":
            raise LocalError("no BLAKE2s on this port")
        return MicroBackend.hash(self, name)

lines = []
counts, bad = conformance.run_paths([{str(path)!r}], NoBlake, lines.append)
for ln in lines:
    print(ln)
print(conformance.summary(counts))
""", timeout=TIMEOUT)
    lines = out.splitlines()
    assert lines[-1] == "6 passed, 0 failed, 6 skipped"
    skips = [ln for ln in lines if ln.startswith("SKIP ")]
    assert len(skips) == 6
    assert all("_BLAKE2s " in ln and ln.endswith(
        ": hash BLAKE2s unavailable on this backend (no BLAKE2s on this port)") for ln in skips)


def test_the_runner_fits_a_256k_heap(shared_vectors: Path) -> None:
    # 64-bit unix port compiling the modules from source; a board would run
    # them as frozen .mpy and need far less.
    path = shared_vectors / "vectors" / "noise_nk_cacophony.json"
    out = run_mp(f"""
import sys
from moteseal.conformance import runner as conformance
sys.exit(conformance.main([{str(path)!r}]))
""", heapsize="256k", timeout=TIMEOUT)
    _same(_cpython(path)[1], out.splitlines())
