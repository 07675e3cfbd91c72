"""ChaCha20-Poly1305 in Thumb-1 inline assembler (``_chachapoly_thumb1``) on
the lane's ARMv6-M firmware (see ``test_qemu_thumb1.py``), where it is the
fast path the device selects: the unix port's AEAD tests
(``tests/micropython/test_mp_chachapoly.py``: RFC 8439 vectors, Poly1305
edge cases, a flip at every byte of ciphertext and tag, random inputs
against ``cryptography``), random inputs of many lengths in place and into
caller buffers at odd offsets, Poly1305 at its carry edges, the finish on
hand-set limbs at their bounds, a ``heap_lock`` proof, and instructions per
call beside viper's.
"""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest

from tests.micropython import test_mp_chachapoly as U
from tests.qemu.test_qemu_chachapoly_asm import _UNIX_TESTS, _XS, _cases
from tests.qemu.target_scripts import AEAD_HEAP_LOCKED, XOR_INTO_EMPTY, aead_instructions, aead_into_buffers
from tests.qemu.test_qemu_primitives import run
from tests.qemu.test_qemu_thumb1 import m0, m0_firmware, m0_session  # noqa: F401 - fixtures

_PRELUDE = """
from binascii import hexlify, unhexlify
from micropython_port import chacha20poly1305 as C
import mp_primitive_hooks as T
from device.errors import AuthError
class json:
    dumps = staticmethod(repr)
def hx(b):
    return hexlify(b).decode()
T.force_fallback_for_testing_only({fallback})
"""


@pytest.mark.parametrize("name", _UNIX_TESTS)
def test_the_unix_port_aead_tests_pass_on_asm_thumb1(m0: Any, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                     name: str) -> None:
    def on_board(p: str, body: str, timeout: float = 120) -> Any:
        # "fast" is the firmware's own fast path (asm_thumb1), "fallback" Python
        return run(m0, _PRELUDE.format(fallback=p != "fast") + body, timeout=timeout)

    monkeypatch.setattr(U, "_mp_aead", on_board)
    assert run(m0, _PRELUDE.format(fallback=False) + "print(repr(C.PATH))") == "asm_thumb1"
    fn = getattr(U, name)
    fn(**({"path": "fast"} if "path" in inspect.signature(fn).parameters else {}))


def test_random_inputs_of_many_lengths_match_cryptography_in_place_and_into_buffers(m0: Any) -> None:  # noqa: F811
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    cases = _cases(61)
    for k, nonce, ad, pt in cases:
        w = ChaCha20Poly1305(k).encrypt(b"\0" * 4 + nonce.to_bytes(8, "little"), pt, ad).hex()
        got = run(m0, _PRELUDE.format(fallback=False) + aead_into_buffers(k, nonce, ad, pt))
        assert got == ["asm_thumb1", w, True, True, w, True], (len(pt), len(ad), nonce)


def test_poly1305_at_its_carry_edges_matches_cryptography(m0: Any) -> None:  # noqa: F811
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    ns: dict = {}
    exec(_XS, ns)
    cases = [(i * 7919 + 3, i % 97) for i in range(1, 161)]  # (seed, message length)
    want = [Poly1305.generate_tag(d[:32], d[32:]).hex() for d in (ns["stream"](s, 32 + n) for s, n in cases)]
    out = m0.exec(_PRELUDE.format(fallback=False) + _XS + f"""
import gc
for seed, n in {cases!r}:
    data = stream(seed, 32 + n)
    print(hx(T.poly1305(data[:32], data[32:])))
    gc.collect()
""", timeout=240)
    assert [ln.strip() for ln in out.splitlines() if ln.strip()] == want


_M13 = (1 << 13) - 1
# h as ten 13-bit limbs at the finish, at the bounds the block keeps (limb 1
# up to 2**13 + 2**11, the others below 2**13): carries that ripple through
# every limb and back into limb 0, h just below and above p = 2**130 - 5.
_H_EDGES = ([[_M13] * 10, [_M13 - 4] + [_M13] * 9, [_M13 - 5] + [_M13] * 9, [0] * 10, [5] + [0] * 9,
             [_M13, _M13 + 2048] + [_M13] * 8, [0, _M13 + 2048] + [0] * 8, [_M13] * 9 + [0]]
            + [[random.Random(i).choice((0, 1, _M13 - 1, _M13)) for _ in range(10)] for i in range(24)])


def test_poly1305_finish_at_the_limb_bounds_matches_python_ints(m0: Any) -> None:  # noqa: F811
    # poly_update with no input (mode 4: finish only) takes h from ps[0..9].
    p = (1 << 130) - 5
    ss = [0, (1 << 128) - 1, 0x0123456789ABCDEF0123456789ABCDEF]
    want = []
    for i, h in enumerate(_H_EDGES):
        v = sum(x << (13 * k) for k, x in enumerate(h))
        want.append(((v % p + ss[i % 3]) % (1 << 128)).to_bytes(16, "little").hex())
    out = m0.exec(f"""
from array import array
from binascii import hexlify
from micropython_port import _chachapoly_thumb1 as A
ps = array("I", bytes(128))
tag = bytearray(17)
ss = {ss!r}
for i, h in enumerate({_H_EDGES!r}):
    for k in range(10):
        ps[k] = h[k]
    s = ss[i % 3]
    for k in range(8):
        ps[20 + k] = (s >> (16 * k)) & 0xFFFF
    ps[28] = 1  # the tag at an odd offset
    ps[29] = ps[31] = 0
    ps[30] = 4
    A.poly_update(ps, b"", tag, bytearray(16))
    print(hexlify(tag[1:]).decode())
""", timeout=120)
    assert [ln.strip() for ln in out.splitlines() if ln.strip()] == want


def test_the_aead_allocates_nothing_under_heap_lock(m0: Any) -> None:  # noqa: F811
    got = run(m0, AEAD_HEAP_LOCKED)
    assert got == ["asm_thumb1", True, 31, True]


def test_chacha_xor_into_an_empty_buffer_is_not_taken_for_chacha_polykey(m0: Any) -> None:  # noqa: F811
    # chacha_polykey is chacha_xor(st, ps, -1) here too.
    got = run(m0, XOR_INTO_EMPTY)
    assert got == ("micropython_port._chachapoly_thumb1", 0, True, [7, 0, 0, 0, 0, 0, 0])


def test_instructions_per_aead_call_asm_thumb1_and_viper(m0: Any) -> None:  # noqa: F811
    # Measured, not asserted: -icount shift=0, ticks_us = instructions / 1000.
    got = run(m0, aead_instructions("asm_thumb1"))
    for path, out in got.items():
        print(f"\nAEAD on the ARMv6-M firmware, {path}: " + ", ".join(
            f"{k} {v / 1000:.1f}k" for k, v in sorted(out.items())) + " instructions", end="")
    print()
    assert set(got) == {"asm_thumb1", "viper"}
