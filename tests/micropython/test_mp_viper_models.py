"""CPython models of the viper code (micropython_port/_*_viper.py) that
prove every intermediate fits in 32 bits, so the arithmetic is the same on
the 32-bit boards as on the 64-bit unix port."""

from __future__ import annotations

import importlib.util
import random
import sys
import types

import nacl.bindings
import pytest

from tests.mp_helpers import ROOT

from tests.mp_vectors import P, RFC7748_5_2, SUNSCREEN, RFC8439_2_4_2

pytestmark = pytest.mark.micropython

PATHS = ["fast", "fallback"]

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
