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

RFC7748_5_2 = [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
]
RFC7748_ITER_1 = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
RFC7748_ITER_1000 = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"
RFC7748_6_1 = {
    "alice_priv": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "alice_pub": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    "bob_priv": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "bob_pub": "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    "shared": "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
}


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

SUNSCREEN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
             b"the future, sunscreen would be it.")
KEY_00_1F = bytes(range(32)).hex()
RFC8439_2_3_2 = (KEY_00_1F, 1, "000000090000004a00000000",
                 "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
                 "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e")
RFC8439_2_4_2 = (KEY_00_1F, 1, "000000000000004a00000000",
                 "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
                 "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
                 "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
                 "5af90bbf74a35be6b40b8eedf2785e42874d")
RFC8439_2_5_2 = ("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b",
                 b"Cryptographic Forum Research Group".hex(),
                 "a8061dc1305136c6c22b8baf0c0127a9")
RFC8439_2_8_2 = (bytes(range(0x80, 0xA0)).hex(), "070000004041424344454647",
                 "50515253c0c1c2c3c4c5c6c7", SUNSCREEN.hex(),
                 "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
                 "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
                 "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
                 "3ff4def08e4b7a9de576d26586cec64b6116"
                 "1ae10b594f09e26a7e902ecbd0600691")
RFC8439_A_5 = ("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
               "000000000102030405060708", "f33388860000000000004e91",
               "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
               "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
               "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
               "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
               "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
               "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
               "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
               "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
               "a6ad5cb4022b02709b"
               "eead9d67890cbb22392336fea1851f38",
               "496e7465726e65742d4472616674732061726520647261667420646f63756d65"
               "6e74732076616c696420666f722061206d6178696d756d206f6620736978206d"
               "6f6e74687320616e64206d617920626520757064617465642c207265706c6163"
               "65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65"
               "6e747320617420616e792074696d652e20497420697320696e617070726f7072"
               "6961746520746f2075736520496e7465726e65742d4472616674732061732072"
               "65666572656e6365206d6174657269616c206f7220746f206369746520746865"
               "6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67"
               "726573732e2fe2809d")


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
