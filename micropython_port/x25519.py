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
  scalar bit, and runs all 255 steps whatever the scalar; the inversion is a
  fixed addition chain.
- Fast paths, best first: on ARMv7-M/ARMv7E-M (Cortex-M3/M4/M7) the whole
  ladder and inversion in inline Thumb-2 assembler on 8 words of 32 bits
  (``_fe25519_thumb``, UMULL/UMLAL, its docstring proves the carries); on
  ARMv6-M (Cortex-M0/M0+, RP2040) the same in Thumb-1 (``_fe25519_thumb1``,
  16x16-bit MULS, "asm_thumb1"); elsewhere viper on 20 limbs of 13 bits
  (``_fe25519_viper``, whose docstring proves the 32-bit bounds);
  otherwise, and on CPython, the big-integer ladder of ``_x25519_py``
  (imported only then, so a board with a fast path never loads it into
  RAM). Scratch is allocated by one call and
  dropped, so nothing stays on the heap between handshakes. ``PATH`` names
  the path in use ("asm_thumb", "asm_thumb1", "viper" or "python"), and a
  fallback happens only when the interpreter cannot load a module (see
  ``_NO_EMITTER``), never on a MemoryError. ``tests/mp_primitive_hooks.py`` switches paths
  for tests.
"""

from device.errors import LocalError

try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

import sys
from array import array

# The fast paths, best first. Only "this interpreter cannot load it" is
# caught, never MemoryError (a tight heap must fail loudly, not quietly run
# the Python ladder: on a Cortex-M3, 29x the instructions of asm_thumb and
# 2.3x those of viper):
# - ImportError: CPython (raised here: the modules are MicroPython code, and
#   under pytest ``import micropython`` finds tests/micropython/), or a
#   build without the file;
# - SyntaxError: the port's compiler lacks the emitter: "invalid micropython
#   decorator" without the native emitter (viper) or the inline Thumb
#   assembler, "unsupported Thumb instruction" for the ARMv7-M instructions
#   on an ARMv6-M (Cortex-M0) build;
# - ValueError: a precompiled .mpy whose native code this port cannot run
#   ("native code in .mpy unsupported", "incompatible .mpy arch").
_NO_EMITTER = (ImportError, SyntaxError, ValueError)
# The native architecture (py/persistentcode.h MP_NATIVE_ARCH_*; 0 where the
# port does not say). asm_thumb is tried only on ARMv7-M/ARMv7E-M (5..8) or
# an unknown arch, asm_thumb1 only on ARMv6-M (4): elsewhere they cannot run,
# and merely parsing their source would take more heap than a 64 KiB device
# has.
_ARCH = getattr(sys.implementation, "_mpy", 0) >> 10

# The paths a build may ship: a flash build for one architecture turns off
# those it leaves out (moteseal/flash/features.py ``arch_flags``), and
# mpy-cross drops their tries.
_THUMB2 = const(1)
_THUMB1 = const(1)
_VIPER = const(1)


def _load():
    """(module, PATH) of the best fast path this interpreter can load: the
    Thumb-2 module on ARMv7-M (or an unknown arch), the Thumb-1 module on
    ARMv6-M (Cortex-M0/M0+, RP2040: arch 4; 16-bit instructions only),
    else viper, else (None, "python")."""
    if sys.implementation.name != "micropython":
        return None, "python"
    if _THUMB2 and (_ARCH == 0 or 5 <= _ARCH <= 8):
        try:
            from micropython_port import _fe25519_thumb as fe

            return fe, "asm_thumb"
        except _NO_EMITTER:
            pass
    if _THUMB1 and _ARCH == 4:
        try:
            from micropython_port import _fe25519_thumb1 as fe

            return fe, "asm_thumb1"
        except _NO_EMITTER:
            pass
    if _VIPER:
        try:
            from micropython_port import _fe25519_viper as fe

            return fe, "viper"
        except _NO_EMITTER:
            pass
    return None, "python"


_fe, PATH = _load()

_P = const(2**255 - 19)
_LIMBS = const(20)  # the viper path's 13-bit limbs

# z ** (p - 2) = 1 / z (RFC 7748 section 5) with the addition chain of ref10:
# 254 squarings and 11 multiplications. Each step (dst, src, n, m) computes
# fe[dst] = fe[src] ** (2 ** n) * fe[m] over the ladder's field elements
# (see ``ladder``): z is fe[1] (z2), the powers go into fe[5..14] (the
# ladder's temporaries, free by then), fe[15] (t) holds the squarings, and
# the result goes into fe[3] (z3).
_INVERT_CHAIN = const(
    b"\x05\x01\x00\x01"  # 5 = z**2
    b"\x06\x05\x02\x01"  # 6 = z**9
    b"\x07\x06\x00\x05"  # 7 = z**11
    b"\x08\x07\x01\x06"  # 8 = z**(2**5 - 1)
    b"\x09\x08\x05\x08"  # 9 = z**(2**10 - 1)
    b"\x0a\x09\x0a\x09"  # 10 = z**(2**20 - 1)
    b"\x0b\x0a\x14\x0a"  # 11 = z**(2**40 - 1)
    b"\x0c\x0b\x0a\x09"  # 12 = z**(2**50 - 1)
    b"\x0d\x0c\x32\x0c"  # 13 = z**(2**100 - 1)
    b"\x0e\x0d\x64\x0d"  # 14 = z**(2**200 - 1)
    b"\x0e\x0e\x32\x0c"  # 14 = z**(2**250 - 1)
    b"\x03\x0e\x05\x07"  # 3 = z**(2**255 - 21) = z**(p - 2)
)


def x25519(k, u):
    """RFC 7748 X25519(k, u): 32-byte scalar ``k``, 32-byte u-coordinate ``u``.
    Returns 32 bytes (all zero for a low-order ``u``). Raises ``LocalError``
    unless both are 32 bytes."""
    if len(k) != 32 or len(u) != 32:
        raise LocalError("key must be 32 bytes")
    kb = bytearray(k)
    kb[0] &= 248
    kb[31] &= 127
    kb[31] |= 64
    # Mask the top bit (RFC 7748 section 5); values in [p, 2**255) stay as they
    # are and are reduced by the arithmetic.
    un = int.from_bytes(bytes(u), "little") & ((1 << 255) - 1)
    if PATH[:3] == "asm":  # asm_thumb, asm_thumb1: the same entry and state
        r = ladder_asm(kb, un)
    elif _VIPER and _fe:
        r = ladder(kb, un)
    else:
        from micropython_port import _x25519_py

        r = _x25519_py.ladder(kb, un)
    return (r % _P).to_bytes(32, "little")


def x25519_base(k):
    """The public key X25519(k, 9) of the 32-byte private key ``k``. Raises
    ``LocalError`` unless ``k`` is 32 bytes."""
    return x25519(k, b"\x09" + bytes(31))


def ladder_asm(kb, u):
    """The same ladder and inversion run by one call of
    ``_fe25519_thumb.x25519_core`` on 8-word field elements (see its
    docstring); returns x2 / z2 as an integer below 2**256."""
    # One 512-byte block: the assembler addresses the 16 field elements from
    # one base register. fe 0..4 are x2, z2, x3, z3, x1 (the ladder's order).
    st = array("I", bytes(512))
    for i in range(8):  # x1 = x3 = u, x2 = z3 = 1, z2 = 0
        st[16 + i] = st[32 + i] = u & 0xFFFFFFFF
        u >>= 32
    st[0] = st[24] = 1
    _fe.x25519_core(st, kb, 0)
    r = 0
    for i in range(7, -1, -1):
        r = (r << 32) + st[i]
    return r


def ladder(kb, u):
    """The RFC 7748 section 5 ladder on viper field elements, for the
    clamped scalar bytes ``kb`` and the u-coordinate ``u`` (an int); returns
    x2 / z2 as an integer below 2**260, which ``x25519`` reduces mod p.
    ``_x25519_py.ladder`` is the same on Python integers."""
    # Scratch in small arrays rather than one 1280-byte block: a handshake
    # runs on a fragmented heap, where 80- and 160-byte holes are plentiful
    # and a long run of free blocks may not be. (x2, z2) and (x3, z3) share
    # one array each, so one fe_cswap over 40 words swaps both pairs.
    p2 = memoryview(array("I", bytes(8 * _LIMBS)))
    p3 = memoryview(array("I", bytes(8 * _LIMBS)))
    fe = [p2[:_LIMBS], p2[_LIMBS:], p3[:_LIMBS], p3[_LIMBS:]]
    for _ in range(12):
        fe.append(memoryview(array("I", bytes(4 * _LIMBS))))
    x2, z2, x3, z3, x1, a, b, c, d, aa, bb, e, da, cb, t1, t = fe
    mul, addsub, a24, cswap = _fe.fe_mul, _fe.fe_addsub, _fe.fe_a24_add, _fe.fe_cswap
    for i in range(_LIMBS):  # x1 = x3 = u, x2 = z3 = 1, z2 = 0
        x1[i] = x3[i] = u & 0x1FFF
        u >>= 13
    x2[0] = z3[0] = 1
    swap = 0
    for i in range(254, -1, -1):
        kt = (kb[i >> 3] >> (i & 7)) & 1
        cswap(p2, p3, 2 * _LIMBS, swap ^ kt)
        swap = kt
        addsub(a, b, x2, z2)  # A = x2 + z2, B = x2 - z2
        addsub(c, d, x3, z3)  # C = x3 + z3, D = x3 - z3
        mul(aa, a, a)  # AA = A^2
        mul(bb, b, b)  # BB = B^2
        addsub(t, e, aa, bb)  # E = AA - BB (t, the sum, is not used)
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
    ch = _INVERT_CHAIN
    for i in range(0, len(ch), 4):
        n = ch[i + 2]
        src = fe[ch[i + 1]]
        if n:
            mul(t, src, src)
            for _ in range(n - 1):
                mul(t, t, t)
            src = t
        mul(fe[ch[i]], src, fe[ch[i + 3]])
    mul(x2, x2, z3)  # x2 * z2 ** (p - 2)
    r = 0
    for i in range(_LIMBS - 1, -1, -1):
        r = (r << 13) + x2[i]
    return r
