"""ChaCha20-Poly1305 on the Cortex-M3 target's fast paths: the inline
Thumb-2 assembler (``_chachapoly_thumb``, the default there) and viper
(``_chachapoly_viper``, what every other 32-bit board runs). The unix
port's AEAD tests (``tests/micropython/test_mp_chachapoly.py``: RFC 8439
vectors, Poly1305 edge cases, a flip at every byte, random inputs against
``cryptography``) run here on both; then random inputs of many lengths in
place and into caller buffers at odd offsets, Poly1305 at its carry edges
(biased random keys and messages, and the finish on hand-set limbs at the
bounds the assembler keeps), a ``heap_lock`` proof, which path the device
reports, that only a missing assembler falls back, and the instruction
budget of issue 16 (a 64-byte seal or open in at most 40,000 guest
instructions).
"""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest

from tests.micropython import test_mp_chachapoly as U
from tests.qemu.target_scripts import (AEAD_HEAP_LOCKED, XOR_INTO_EMPTY, aead_instructions,
                                      aead_into_buffers, path_when_module_raises)
from tests.qemu.test_qemu_primitives import run

PATHS = ["asm_thumb", "viper"]

# The unix-port tests' prelude for the target: hooks are a top-level module
# there, and the firmware has no json (results come back as Python literals).
_PRELUDE = """
from binascii import hexlify, unhexlify
from micropython_port import chacha20poly1305 as C
import mp_primitive_hooks as T
from device.errors import AuthError
class json:
    dumps = staticmethod(repr)
def hx(b):
    return hexlify(b).decode()
def use(path):  # "viper" becomes the fast path the hooks switch back to
    if path == "viper":
        from micropython_port import _chachapoly_viper as V
        T._FAST = (T._FAST[0], V, T._FAST[2])
        T._PATHS = (T._PATHS[0], "viper", T._PATHS[2])
    T.force_fallback_for_testing_only(path == "python")
use({path!r})
"""

# Their heap test uses nonces up to 2**40, heap integers on a 32-bit port
# (splitting one allocates; see chacha20poly1305's docstring): the target's
# own version is test_the_aead_allocates_nothing_under_heap_lock below. And
# the unix port's choice of viper is the unix port's.
_NOT_ON_32_BIT = {"test_aead_allocates_nothing_per_call_under_heap_lock",
                  "test_the_unix_port_chooses_viper_never_the_thumb_module"}
# The tests that run MicroPython code (through ``_mp_aead``); the others
# check host-side things (the generator, the vectors' transcription).
_UNIX_TESTS = sorted(n for n, f in vars(U).items()
                     if n.startswith("test_") and callable(f) and n not in _NOT_ON_32_BIT
                     and "_mp_aead(" in inspect.getsource(f))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", _UNIX_TESTS)
def test_the_unix_port_aead_tests_pass_on_the_target(board: Any, monkeypatch: pytest.MonkeyPatch,
                                                     name: str, path: str) -> None:
    def on_board(p: str, body: str, timeout: float = 120) -> Any:
        # "fast" is the path under test; "fallback" the pure-Python code
        return run(board, _PRELUDE.format(path=path if p == "fast" else "python") + body, timeout=timeout)

    monkeypatch.setattr(U, "_mp_aead", on_board)
    fn = getattr(U, name)
    fn(**({"path": "fast"} if "path" in inspect.signature(fn).parameters else {}))


def test_the_target_reports_asm_thumb_for_the_aead(board: Any) -> None:
    got = run(board, """
from micropython_port import backend, chacha20poly1305 as C
print(repr((C.PATH, C._v.__name__, backend.paths())))
""")
    assert got == ("asm_thumb", "micropython_port._chachapoly_thumb", "x25519=asm_thumb aead=asm_thumb")


@pytest.mark.parametrize("exc, want", [("MemoryError", "MemoryError"),
                                       ("SyntaxError('unsupported Thumb instruction')", "viper")])
def test_only_a_missing_assembler_falls_back_never_a_memory_error(qemu_firmware: Any, exc: str,
                                                                   want: str) -> None:
    assert path_when_module_raises(qemu_firmware, "_chachapoly_thumb.py", "chacha20poly1305", exc) == want


_LENGTHS = [0, 1, 3, 4, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 1000, 1024]


def _cases(seed: int) -> list[tuple[bytes, int, bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for i, n in enumerate(_LENGTHS):
        nonce = [0, 1, (1 << 30) - 1, rng.randrange(1 << 64), (1 << 64) - 1][i % 5]
        ad = rng.randbytes([0, 1, 3, 15, 16, 17, 40][i % 7])
        out.append((rng.randbytes(32), nonce, ad, rng.randbytes(n)))
    return out


@pytest.mark.parametrize("path", PATHS)
def test_random_inputs_of_many_lengths_match_cryptography_in_place_and_into_buffers(
        board: Any, path: str) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    cases = _cases(16 + len(path))
    want = [ChaCha20Poly1305(k).encrypt(b"\0" * 4 + nonce.to_bytes(8, "little"), pt, ad).hex()
            for k, nonce, ad, pt in cases]
    # One case per run: the target's heap holds one 1 KiB case's hex easily.
    for (k, nonce, ad, pt), w in zip(cases, want):
        got = run(board, _PRELUDE.format(path=path) + aead_into_buffers(k, nonce, ad, pt))
        assert got[1:] == [w, True, True, w, True], (len(pt), len(ad), nonce)


# A generator both sides run: xorshift32, bytes biased to 0xff and 0x00 so
# that limbs sit at their carry edges (h close to p and to 2**130, r and s
# with every allowed bit set).
_XS = """
def stream(seed, n):
    x = seed
    out = bytearray(n)
    for i in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        k = x & 7
        out[i] = 0xFF if k < 4 else 0 if k == 4 else (x >> 8) & 0xFF
    return bytes(out)
"""


@pytest.mark.parametrize("path", PATHS)
def test_poly1305_at_its_carry_edges_matches_cryptography(board: Any, path: str) -> None:
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    ns: dict = {}
    exec(_XS, ns)
    cases = [(i * 7919 + 1, i % 97) for i in range(1, 161)]  # (seed, message length)
    want = []
    for seed, n in cases:
        data = ns["stream"](seed, 32 + n)
        want.append(Poly1305.generate_tag(data[:32], data[32:]).hex())
    out = board.exec(_PRELUDE.format(path=path) + _XS + f"""
import gc
for seed, n in {cases!r}:
    data = stream(seed, 32 + n)
    print(hx(T.poly1305(data[:32], data[32:])))  # a line each: the heap is small
    gc.collect()
""", timeout=240)
    got = [ln.strip() for ln in out.splitlines() if ln.strip()]
    assert got == want


_M26 = (1 << 26) - 1
# h in radix 2**26 at the finish, at the bounds _chachapoly_thumb keeps
# (h0, h2, h3, h4 < 2**26, h1 < 2**26 + 2**6): carries that ripple from h1
# through h4 and back into h0, h0 just below 2**26, h just below and above p.
_H_EDGES = [(h0, h1, h2, h3, h4)
            for h0 in (0, _M26 - 5, _M26 - 4, _M26)
            for h1 in (0, 1, _M26, _M26 + 1, _M26 + 2, _M26 + 64)
            for h2 in (0, _M26) for h3 in (0, _M26) for h4 in (0, 1 << 24, _M26)]


def test_poly1305_finish_at_the_limb_bounds_matches_python_ints(board: Any) -> None:
    # poly_update with no input (mode 4: finish only) takes h straight from
    # ps[0..9], 13-bit limbs in pairs: h_i = ps[2i] + (ps[2i + 1] << 13).
    p = (1 << 130) - 5
    ss = [0, (1 << 128) - 1, 0x0123456789ABCDEF0123456789ABCDEF]
    want = []
    for i, h in enumerate(_H_EDGES):
        v = sum(x << (26 * k) for k, x in enumerate(h))
        want.append(((v % p + ss[i % 3]) % (1 << 128)).to_bytes(16, "little").hex())
    out = board.exec(f"""
import gc
from array import array
from binascii import hexlify
from micropython_port import _chachapoly_thumb as A
ps = array("I", bytes(128))
tag = bytearray(16)
blk = bytearray(16)
ss = {ss!r}
for i, h in enumerate({_H_EDGES!r}):
    for k in range(5):
        ps[2 * k] = h[k] & 0x1FFF
        ps[2 * k + 1] = h[k] >> 13
    s = ss[i % 3]
    for k in range(8):
        ps[20 + k] = (s >> (16 * k)) & 0xFFFF
    ps[28] = ps[29] = ps[31] = 0
    ps[30] = 4
    A.poly_update(ps, b"", tag, blk)
    print(hexlify(tag).decode())
    gc.collect()
""", timeout=240)
    got = [ln.strip() for ln in out.splitlines() if ln.strip()]
    assert len(got) == len(_H_EDGES) == 288 and got == want


def test_the_aead_allocates_nothing_under_heap_lock(board: Any) -> None:
    got = run(board, AEAD_HEAP_LOCKED)
    assert got == ["asm_thumb", True, 31, True]


def test_chacha_xor_into_an_empty_buffer_is_not_taken_for_chacha_polykey(board: Any) -> None:
    # chacha_polykey is chacha_xor(st, ps, -1) (one copy of the rounds): an
    # empty bytearray's data pointer must not select that branch.
    got = run(board, XOR_INTO_EMPTY)
    assert got == ("micropython_port._chachapoly_thumb", 0, True, [7, 0, 0, 0, 0, 0, 0])


_COUNT = aead_instructions("asm_thumb")


def test_a_64_byte_seal_or_open_costs_at_most_40k_instructions(board: Any) -> None:
    # Instructions, not time: under -icount shift=0 the count is the same on
    # every host and every run. Printed for both fast paths (viper was the
    # Cortex-M3's path before the asm_thumb one; qemu/README.md has the table).
    got = run(board, _COUNT)
    for path, out in got.items():
        print(f"\nAEAD on the Cortex-M3 target, {path}: " + ", ".join(
            f"{k} {v / 1000:.1f}k" for k, v in sorted(out.items())) + " instructions", end="")
    print()
    assert got["asm_thumb"]["seal_64"] <= 40_000 and got["asm_thumb"]["open_64"] <= 40_000
    # the budget is what the asm_thumb code buys: viper does not meet it
    assert got["viper"]["seal_64"] > 40_000
