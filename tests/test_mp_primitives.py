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
X.force_fallback_for_testing_only({fallback})
def hx(b):
    return hexlify(b).decode()
"""


def _mp_x25519(path: str, body: str, timeout: float = 120) -> object:
    code = _MP_PRELUDE.format(fallback=path == "fallback") + body
    return run_mp_json(code, timeout=timeout)


def test_x25519_fast_path_loads_on_the_unix_port() -> None:
    assert _mp_x25519("fast", "print(json.dumps(X.has_fast_path()))") is True


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
    """An int whose every arithmetic result must fit a signed 32-bit word,
    and whose right shifts only ever see non-negative values (so arithmetic
    and logical shifts agree): the conditions under which the viper code
    computes the same on a 32-bit microcontroller as on the 64-bit unix port.
    """

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
        if int(self) < 0:
            raise OverflowError("right shift of a negative value")
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
    mod.__dict__.update(ptr32=object, ptr8=object, ptr16=object, uint=int)
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


def test_generated_field_code_is_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_fe25519", ROOT / "micropython_port" / "tools" / "gen_fe25519.py"
    )
    gen = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    assert (ROOT / "micropython_port" / "_fe25519_viper.py").read_text() == gen.generate()


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
        for op in ("mul", "sq", "add", "sub", "a24"):
            outs[op] = [0] * 20
        fe.fe_mul(_Ptr32(outs["mul"]), _Ptr32(list(a)), _Ptr32(list(b)))
        fe.fe_sq(_Ptr32(outs["sq"]), _Ptr32(list(a)))
        fe.fe_addsub(_Ptr32(outs["add"]), _Ptr32(outs["sub"]), _Ptr32(list(a)), _Ptr32(list(b)))
        fe.fe_a24_add(_Ptr32(outs["a24"]), _Ptr32(list(a)), _Ptr32(list(b)))
        sub2 = [0] * 20
        fe.fe_sub(_Ptr32(sub2), _Ptr32(list(a)), _Ptr32(list(b)))
        assert _value(outs["mul"]) == va * vb % P
        assert _value(outs["sq"]) == va * va % P
        assert _value(outs["add"]) == (va + vb) % P
        assert _value(outs["sub"]) == (va - vb) % P == _value(sub2)
        assert _value(outs["a24"]) == (vb + 121665 * va) % P
        for words in [*outs.values(), sub2]:
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
        **{n: Model._wrap(getattr(fe, n)) for n in ("fe_mul", "fe_sq", "fe_addsub", "fe_sub", "fe_a24_add", "fe_cswap")}
    )
    monkeypatch.setattr(X, "_fe", model)
    monkeypatch.setattr(X, "_use_fast", True)
    k, u, want = RFC7748_5_2[1]
    assert X.x25519(bytes.fromhex(k), bytes.fromhex(u)).hex() == want
    u_max = ((1 << 255) - 1).to_bytes(32, "little")  # non-canonical, all limbs high
    assert X.x25519(bytes(32), u_max) == nacl.bindings.crypto_scalarmult(
        bytes(32), ((2**255 - 1) % P).to_bytes(32, "little")
    )
