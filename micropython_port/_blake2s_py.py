"""BLAKE2s-256 (RFC 7693) on Python integers: the fallback of
``micropython_port.blake2s`` where ``_blake2s_viper`` cannot load. Kept apart
so that a board with the native emitter never loads it into RAM.

Invariant: every word is masked to 32 bits after each addition and left
shift; the result equals ``hashlib.blake2s`` on CPython (tested).
"""

# The IV and parameter word come from the caller (``blake2s``), which this
# module must not import: the fallback sits below its facade.
from micropython_port.hashes import BLOCKLEN, HASHLEN

_M32 = 0xFFFFFFFF
_SIGMA = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    (14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3),
    (11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4),
    (7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8),
    (9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13),
    (2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9),
    (12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11),
    (13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10),
    (6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5),
    (10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0),
)
# (a, b, c, d) column then diagonal steps of one round (RFC 7693 section 3.2)
_STEPS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
          (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))


def _compress(h, block, t, last, iv):
    """RFC 7693 section 3.2 F: mix one 64-byte ``block`` into ``h`` (8 words)
    with byte counter ``t``; ``last`` marks the final block."""
    m = [block[4 * i] | (block[4 * i + 1] << 8) | (block[4 * i + 2] << 16) | (block[4 * i + 3] << 24)
         for i in range(16)]
    v = list(h) + list(iv)
    v[12] ^= t & _M32
    v[13] ^= (t >> 32) & _M32
    if last:
        v[14] ^= _M32
    for r in range(10):
        s = _SIGMA[r]
        for i in range(8):
            a, b, c, d = _STEPS[i]
            x = m[s[2 * i]]
            y = m[s[2 * i + 1]]
            # G (section 3.1) with R1..R4 = 16, 12, 8, 7
            va = (v[a] + v[b] + x) & _M32
            vd = v[d] ^ va
            vd = (vd >> 16) | ((vd << 16) & _M32)
            vc = (v[c] + vd) & _M32
            vb = v[b] ^ vc
            vb = (vb >> 12) | ((vb << 20) & _M32)
            va = (va + vb + y) & _M32
            vd ^= va
            vd = (vd >> 8) | ((vd << 24) & _M32)
            vc = (vc + vd) & _M32
            vb ^= vc
            v[b] = (vb >> 7) | ((vb << 25) & _M32)
            v[a] = va
            v[c] = vc
            v[d] = vd
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


def _words_le(h):
    out = bytearray(HASHLEN)
    for i in range(8):
        w = h[i]
        out[4 * i] = w & 0xFF
        out[4 * i + 1] = (w >> 8) & 0xFF
        out[4 * i + 2] = (w >> 16) & 0xFF
        out[4 * i + 3] = w >> 24
    return bytes(out)


def blake2s_int(data, iv, param0):
    """Unkeyed BLAKE2s-256 of ``data``; ``iv`` and ``param0`` as RFC 7693
    section 2.6 and 2.8 give them (``blake2s.IV``, ``blake2s.PARAM0``)."""
    data = bytes(data)
    h = list(iv)
    h[0] ^= param0
    n = len(data)
    off = 0
    while n - off > BLOCKLEN:
        _compress(h, data[off:off + BLOCKLEN], off + BLOCKLEN, False, iv)
        off += BLOCKLEN
    last = data[off:]
    _compress(h, last + bytes(BLOCKLEN - len(last)), n, True, iv)
    return _words_le(h)
