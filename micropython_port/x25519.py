"""X25519 (RFC 7748 section 5) for MicroPython, with a CPython-compatible
pure-Python fallback.

Invariants:
- The scalar is clamped (RFC 7748 section 5: clear bits 0, 1, 2 and 255, set
  bit 254) and the u-coordinate's top bit is masked; a u >= p (non-canonical)
  is processed as if reduced mod p, as the RFC requires. The output is always
  the canonical 32-byte encoding of a value < p.
- A low-order u gives 32 zero bytes; this module does not raise for it, the
  core checks (``device.backend.is_all_zero`` in ``noise.dh``).
- The ladder swaps with an arithmetic mask (``fe_cswap``), not a branch on a
  scalar bit, and runs all 255 steps whatever the scalar.
- Fast path: viper field arithmetic on 20 limbs of 13 bits in preallocated
  ``array('I')`` scratch (``_fe25519_viper``, whose docstring proves the
  32-bit bounds). It is used when the port has the native emitter; otherwise,
  and on CPython, the big-integer ladder of ``_x25519_py`` runs (imported
  only then, so a board with the emitter never loads it into RAM). The scratch is module-global:
  one scalar multiplication at a time (MicroPython boards run one thread).
"""

P = 2**255 - 19
A24 = 121665
_BYTES = 32
_LIMBS = 20

try:
    import array

    from micropython_port import _fe25519_viper as _fe
except Exception:  # noqa: BLE001 - CPython (no micropython module), or a port
    # without the native emitter (the viper decorator fails to compile).
    _fe = None

_use_fast = _fe is not None


def has_fast_path():
    """True if the viper field arithmetic loaded on this interpreter."""
    return _fe is not None


def force_fallback_for_testing_only(flag):
    """Make ``x25519`` use the big-integer ladder even where viper exists
    (``flag=True``), or go back to the fast path (``False``). Returns the
    previous setting. Tests use it to run both paths on one interpreter."""
    global _use_fast
    prev = not _use_fast
    _use_fast = (not flag) and _fe is not None
    return prev


def _clamp(k):
    if len(k) != _BYTES:
        raise ValueError("X25519 scalar must be 32 bytes")
    kb = bytearray(k)
    kb[0] &= 248
    kb[31] &= 127
    kb[31] |= 64
    return kb


def _decode_u(u):
    if len(u) != _BYTES:
        raise ValueError("X25519 u-coordinate must be 32 bytes")
    # Mask the top bit (RFC 7748 section 5); values in [p, 2**255) stay as they
    # are and are reduced by the arithmetic.
    return int.from_bytes(bytes(u), "little") & ((1 << 255) - 1)


# --- viper fast path --------------------------------------------------------


class _Scratch:
    """Field elements for one ladder, allocated once: (x2, z2) and (x3, z3)
    are adjacent so one ``fe_cswap`` over 40 words swaps both pairs."""

    def __init__(self):
        self.ws = array.array("I", bytes(4 * _LIMBS * 16))
        mv = memoryview(self.ws)
        v = [mv[_LIMBS * i : _LIMBS * (i + 1)] for i in range(16)]
        self.p2 = mv[0 : 2 * _LIMBS]
        self.p3 = mv[2 * _LIMBS : 4 * _LIMBS]
        (self.x2, self.z2, self.x3, self.z3, self.x1, self.a, self.b, self.c,
         self.d, self.aa, self.bb, self.e, self.da, self.cb, self.t1,
         self.t2) = v


_scratch = None


def _set_int(fe, n):
    for i in range(_LIMBS):
        fe[i] = n & 0x1FFF
        n >>= 13


def _get_int(fe):
    n = 0
    for i in range(_LIMBS - 1, -1, -1):
        n = (n << 13) + fe[i]
    return n % P


def _sqn(r, a, n):
    # r = a ** (2 ** n)
    mul = _fe.fe_mul
    mul(r, a, a)
    for _ in range(n - 1):
        mul(r, r, r)


def _invert(s, out, z):
    """out = z ** (p - 2): 254 squarings and 11 multiplications (the chain
    of the ref10 implementation); uses s.a..s.e, s.da, s.cb, s.t1, s.t2."""
    mul = _fe.fe_mul
    z2, z9, z11, z5, z10, z20, z50, z100, t = (s.a, s.b, s.c, s.d, s.e, s.da,
                                               s.cb, s.t1, s.t2)
    _sqn(z2, z, 1)  # z**2
    _sqn(t, z2, 2)  # z**8
    mul(z9, t, z)  # z**9
    mul(z11, z9, z2)  # z**11
    _sqn(t, z11, 1)  # z**22
    mul(z5, t, z9)  # z**(2**5 - 1)
    _sqn(t, z5, 5)
    mul(z10, t, z5)  # z**(2**10 - 1)
    _sqn(t, z10, 10)
    mul(z20, t, z10)  # z**(2**20 - 1)
    _sqn(t, z20, 20)
    mul(t, t, z20)  # z**(2**40 - 1)
    _sqn(t, t, 10)
    mul(z50, t, z10)  # z**(2**50 - 1)
    _sqn(t, z50, 50)
    mul(z100, t, z50)  # z**(2**100 - 1)
    _sqn(t, z100, 100)
    mul(t, t, z100)  # z**(2**200 - 1)
    _sqn(t, t, 50)
    mul(t, t, z50)  # z**(2**250 - 1)
    _sqn(t, t, 5)  # z**(2**255 - 32)
    mul(out, t, z11)  # z**(2**255 - 21) = z**(p - 2)


def _ladder_fast(kb, u):
    global _scratch
    s = _scratch
    if s is None:
        s = _scratch = _Scratch()
    mul, addsub = _fe.fe_mul, _fe.fe_addsub
    sub, a24, cswap = _fe.fe_sub, _fe.fe_a24_add, _fe.fe_cswap
    x1, x2, z2, x3, z3 = s.x1, s.x2, s.z2, s.x3, s.z3
    a, b, c, d, aa, bb, e = s.a, s.b, s.c, s.d, s.aa, s.bb, s.e
    da, cb, t1, p2, p3 = s.da, s.cb, s.t1, s.p2, s.p3
    _set_int(x1, u)
    _set_int(x2, 1)
    _set_int(z2, 0)
    _set_int(x3, u)
    _set_int(z3, 1)
    swap = 0
    for t in range(254, -1, -1):
        kt = (kb[t >> 3] >> (t & 7)) & 1
        cswap(p2, p3, 2 * _LIMBS, swap ^ kt)
        swap = kt
        addsub(a, b, x2, z2)  # A = x2 + z2, B = x2 - z2
        addsub(c, d, x3, z3)  # C = x3 + z3, D = x3 - z3
        mul(aa, a, a)  # AA = A^2
        mul(bb, b, b)  # BB = B^2
        sub(e, aa, bb)  # E = AA - BB
        mul(da, d, a)  # DA = D * A
        mul(cb, c, b)  # CB = C * B
        addsub(x3, t1, da, cb)  # DA + CB, DA - CB
        mul(x3, x3, x3)  # x3 = (DA + CB)^2
        mul(t1, t1, t1)
        mul(z3, x1, t1)  # z3 = x1 * (DA - CB)^2
        mul(x2, aa, bb)  # x2 = AA * BB
        a24(t1, e, aa)  # AA + a24 * E
        mul(z2, e, t1)  # z2 = E * (AA + a24 * E)
    cswap(p2, p3, 2 * _LIMBS, swap)
    _invert(s, z3, z2)
    mul(x2, x2, z3)
    return _get_int(x2)


# --- public API -------------------------------------------------------------


def x25519(k, u):
    """RFC 7748 X25519(k, u): 32-byte scalar ``k``, 32-byte u-coordinate ``u``.
    Returns 32 bytes (all zero for a low-order ``u``). Raises ``ValueError``
    for wrong lengths."""
    kb = _clamp(k)
    un = _decode_u(u)
    if _use_fast:
        r = _ladder_fast(kb, un)
    else:
        from micropython_port._x25519_py import ladder_int

        r = ladder_int(kb, un)
    return r.to_bytes(_BYTES, "little")


_BASE = b"\x09" + bytes(31)


def x25519_base(k):
    """The public key X25519(k, 9) of the 32-byte private key ``k``."""
    return x25519(k, _BASE)
