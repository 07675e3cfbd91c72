"""The MicroPython primitives and the Noise core on a 32-bit Cortex-M3:
moteseal's MicroPython firmware under ``qemu-system-arm -M mps2-an385``
(see tests/qemu/conftest.py and qemu/). RFC 7748 X25519 and RFC 8439
ChaCha20-Poly1305 vectors on the viper and the pure-Python paths, and the
cacophony Noise NK vectors through ``moteseal.conformance.runner``.

What this lane adds over the unix port: 30-bit small ints and 32-bit machine
words, so a limb or a tag computation that only fits on a 64-bit host shows
up here, and the viper code is compiled to Thumb-2 instead of x86-64.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.mp_vectors import (RFC7748_5_2, RFC7748_6_1, RFC7748_ITER_1,
                              RFC7748_ITER_1000, RFC8439_2_3_2, RFC8439_2_4_2, RFC8439_2_5_2,
                              RFC8439_2_8_2, RFC8439_A_5, SUNSCREEN)

PATHS = ["fast", "fallback"]
REPO = Path(__file__).resolve().parents[2]


def run(board: Any, code: str, timeout: float = 120) -> Any:
    """Run ``code`` on the board; its last printed line, as a Python literal."""
    out = board.exec(code, timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, "the target printed nothing"
    return ast.literal_eval(lines[-1])


_PRELUDE = """
import mp_primitive_hooks as T
from micropython_port import x25519 as X
from micropython_port import chacha20poly1305 as C
U = bytes.fromhex
T.force_fallback_for_testing_only({fallback})
"""


def prelude(path: str) -> str:
    return _PRELUDE.format(fallback=path == "fallback")


# --- the board itself ---------------------------------------------------------


def test_the_target_is_a_32_bit_micropython(board: Any) -> None:
    got = run(board, """
import sys, micropython
@micropython.viper
def inc(x: uint) -> uint:
    return x + uint(1)  # a machine word: wraps at 2**32 here, not on a 64-bit host
print(repr((sys.implementation.name, sys.platform, sys.maxsize, inc(0xFFFFFFFF))))
""")
    assert got == ("micropython", "moteseal-qemu", 2**31 - 1, 0)


def test_the_viper_fast_paths_load_on_thumb2(board: Any) -> None:
    assert run(board, prelude("fast") + "print(T.has_fast_path())") == [True, True, True]


def test_sha256_module_matches_hashlib(board: Any) -> None:
    import hashlib

    msgs = [b"", b"abc", bytes(range(256)) * 3, b"a" * 55, b"a" * 56, b"a" * 64]
    code = "import hashlib\nprint([hashlib.sha256(m).digest().hex() for m in %r])" % (msgs,)
    assert run(board, code) == [hashlib.sha256(m).hexdigest() for m in msgs]


# --- X25519 (RFC 7748) ------------------------------------------------------------



@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_section_5_2_vectors(board: Any, path: str) -> None:
    pairs = [(k, u) for k, u, _ in RFC7748_5_2]
    got = run(board, prelude(path) + f"print([X.x25519(U(k), U(u)).hex() for k, u in {pairs!r}])")
    assert got == [want for _, _, want in RFC7748_5_2]


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_section_6_1_diffie_hellman(board: Any, path: str) -> None:
    v = RFC7748_6_1
    got = run(board, prelude(path) + f"""
a, b = U('{v["alice_priv"]}'), U('{v["bob_priv"]}')
A, B = X.x25519_base(a), X.x25519_base(b)
print([A.hex(), B.hex(), X.x25519(a, B).hex(), X.x25519(b, A).hex()])
""")
    assert got == [v["alice_pub"], v["bob_pub"], v["shared"], v["shared"]]


_ITERATE = """
import time
k = u = U("09" + "00" * 31)
t0 = time.ticks_us()
out = []
for i in range({n}):
    k, u = X.x25519(k, u), k
    if i == 0 or i == {n} - 1:
        out.append(k.hex())
print(repr((out, time.ticks_diff(time.ticks_us(), t0))))
"""


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_iterated_once(board: Any, path: str) -> None:
    got, _ = run(board, prelude(path) + _ITERATE.format(n=1))
    assert got == [RFC7748_ITER_1]


def test_rfc7748_iterated_1000_times_on_the_fast_path(board: Any) -> None:
    got, us = run(board, prelude("fast") + _ITERATE.format(n=1000), timeout=240)
    assert got == [RFC7748_ITER_1, RFC7748_ITER_1000]
    # -icount shift=0: 1 guest instruction = 1 ns, so this is ~instructions / 1000.
    print(f"\nX25519 on the Cortex-M3 target: {us / 1000:.0f} virtual us per call (~{us / 1e6:.1f}M instructions)")


# --- ChaCha20-Poly1305 (RFC 8439) -------------------------------------------------



@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_sections_2_3_2_and_2_4_2_chacha20(board: Any, path: str) -> None:
    k, ctr, iv, block = RFC8439_2_3_2
    k4, ctr4, iv4, stream = RFC8439_2_4_2
    got = run(board, prelude(path) + f"""
print([T.chacha20_block(U('{k}'), {ctr}, U('{iv}')).hex(),
       T.chacha20_encrypt(U('{k4}'), {ctr4}, U('{iv4}'), U('{SUNSCREEN.hex()}')).hex()])
""")
    assert got == [block, stream]


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_5_2_poly1305(board: Any, path: str) -> None:
    k, msg, tag = RFC8439_2_5_2
    assert run(board, prelude(path) + f"print(repr(T.poly1305(U('{k}'), U('{msg}')).hex()))") == tag


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_8_2_aead_and_appendix_a_5(board: Any, path: str) -> None:
    k, iv, ad, pt, ct = RFC8439_2_8_2
    k5, iv5, ad5, ct5, pt5 = RFC8439_A_5
    got = run(board, prelude(path) + f"""
from device.errors import AuthError
ct = T.encrypt_iv(U('{k}'), U('{iv}'), U('{ad}'), U('{pt}'))
back = T.decrypt_iv(U('{k}'), U('{iv}'), U('{ad}'), ct)
a5 = T.decrypt_iv(U('{k5}'), U('{iv5}'), U('{ad5}'), U('{ct5}'))
bad = bytearray(ct)
bad[-1] ^= 1
try:
    T.decrypt_iv(U('{k}'), U('{iv}'), U('{ad}'), bytes(bad))
    refused = False
except AuthError:
    refused = True
print([ct.hex(), back.hex(), a5.hex(), refused])
""")
    assert got == [ct, pt, pt5, True]


# --- Noise (cacophony NK vectors through moteseal.conformance.runner) ---------------------


def _cacophony() -> dict:
    shared = Path(os.environ.get("MOTESEAL_SHARED") or REPO.parent / "shared")
    path = shared / "vectors" / "noise_nk_cacophony.json"
    if not path.exists():
        pytest.skip(f"no Noise vector file at {path}")
    return json.loads(path.read_text())


def test_cacophony_noise_vectors_pass_on_the_target(board: Any) -> None:
    doc = _cacophony()
    # The primitives first: compiling _fe25519_thumb from source takes about
    # 125 KiB at its peak, more than is left beside the vectors document in
    # the 256 KiB heap (a board loads the .mpy of a flash build instead).
    board.exec("import micropython_port.backend")
    out = board.exec(f"""
from moteseal.conformance import runner as conformance
lines = []
counts = conformance.run_vectors({doc!r}, conformance.default_backend(), lines.append)
for ln in lines:
    print(ln)
print(conformance.summary(counts))
""", timeout=240)
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    n = len(doc["vectors"])
    assert lines[-1] == f"{2 * n} passed, 0 failed, 0 skipped", "\n".join(lines)
