"""The RFC 7748 section 5 Montgomery ladder on Python integers: the
fallback of ``micropython_port.x25519`` where ``_fe25519_viper`` cannot load
(and the path CPython runs). Kept apart so that a board with the native
emitter never loads it into RAM.

Invariant: the swap is an arithmetic mask, not a branch on a scalar bit, and
all 255 steps run whatever the scalar (Python integers are not constant time
themselves; this is the best a big-integer fallback can do).
"""

P = 2**255 - 19
A24 = 121665  # (486662 - 2) / 4, RFC 7748 section 5


def ladder(kb, u):
    """RFC 7748 section 5 ladder on Python integers: X25519 of the clamped
    scalar bytes ``kb`` and the u-coordinate ``u`` (an int), reduced mod p."""
    x1 = u % P
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        kt = (kb[t >> 3] >> (t & 7)) & 1
        swap ^= kt
        # cswap with a mask rather than a branch on the bit
        m = -swap
        d = m & (x2 ^ x3)
        x2 ^= d
        x3 ^= d
        d = m & (z2 ^ z3)
        z2 ^= d
        z3 ^= d
        swap = kt
        a = x2 + z2
        aa = a * a % P
        b = x2 - z2
        bb = b * b % P
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % P
        cb = c * b % P
        x3 = (da + cb) ** 2 % P
        z3 = x1 * (da - cb) ** 2 % P
        x2 = aa * bb % P
        z2 = e * (aa + A24 * e) % P
    m = -swap
    d = m & (x2 ^ x3)
    x2 ^= d
    d = m & (z2 ^ z3)
    z2 ^= d
    return x2 * _inv_int(z2) % P


def _inv_int(z):
    try:
        return pow(z, P - 2, P)
    except (TypeError, NotImplementedError):  # port without 3-argument pow
        r = 1
        e = P - 2
        b = z % P
        while e:
            if e & 1:
                r = r * b % P
            b = b * b % P
            e >>= 1
        return r
