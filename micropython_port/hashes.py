"""The two Noise hash functions for MicroPython: SHA-256 over the built-in
``hashlib.sha256``, and BLAKE2s-256 (RFC 7693) in pure Python, which
MicroPython's ``hashlib`` lacks; each with HMAC (RFC 2104).

Invariants:
- Each hash object has ``HASHLEN`` (32), ``BLOCKLEN`` (64), ``digest(data)``
  and ``hmac(key, data)``, the shape ``device/backend.py`` asks for.
- HMAC keys longer than ``BLOCKLEN`` are hashed first and shorter ones are
  zero-padded (RFC 2104 section 2); the pads are XORed as one integer
  rather than byte by byte, which on MicroPython is the fast way.
- Runs unchanged on CPython, where tests check both against ``hashlib`` and
  ``hmac``.
- BLAKE2s compresses with ``_blake2s_viper`` where the native emitter exists
  (32-bit safe, see its docstring), and otherwise on Python integers in
  ``_blake2s_py``, imported only then (about 60 us per 64-byte block on a
  fast unix host, and far slower on a 32-bit board, where every word above
  2**30 is a heap integer).
  ``force_fallback_for_testing_only`` switches paths for tests. SHA-256 is
  still the one to pick on a device: it is built in.
"""

import hashlib

try:
    import array

    from micropython_port import _blake2s_viper as _bv
except Exception:  # noqa: BLE001 - CPython, or a port without the native emitter
    _bv = None

_use_fast = _bv is not None


def has_fast_path():
    """True if the viper BLAKE2s compression loaded on this interpreter."""
    return _bv is not None


def force_fallback_for_testing_only(flag):
    """Make BLAKE2s use the pure-Python compression (``flag=True``) or the
    viper one (``False``); returns the previous setting."""
    global _use_fast
    prev = not _use_fast
    _use_fast = (not flag) and _bv is not None
    return prev

HASHLEN = 32
BLOCKLEN = 64

_IPAD = int.from_bytes(b"\x36" * BLOCKLEN, "big")
_OPAD = int.from_bytes(b"\x5c" * BLOCKLEN, "big")
_ZERO_BLOCK = bytes(BLOCKLEN)


class _HmacHash:
    """HMAC (RFC 2104) over a subclass's ``digest(data)``, the 32-byte hash."""

    HASHLEN = HASHLEN
    BLOCKLEN = BLOCKLEN

    def _two_part(self, a, b):
        """digest(a || b) without building a || b when the hash streams."""
        return self.digest(bytes(a) + bytes(b))

    def hmac(self, key, data):
        """RFC 2104 HMAC of ``data`` under ``key``: 32 bytes."""
        if len(key) > BLOCKLEN:
            key = self.digest(key)
        k = int.from_bytes(bytes(key) + _ZERO_BLOCK[len(key):], "big")
        inner = self._two_part((k ^ _IPAD).to_bytes(BLOCKLEN, "big"), data)
        return self._two_part((k ^ _OPAD).to_bytes(BLOCKLEN, "big"), inner)


class Sha256(_HmacHash):
    """SHA-256 from the built-in ``hashlib``."""

    name = "SHA256"

    def digest(self, data):
        return hashlib.sha256(data).digest()

    def _two_part(self, a, b):
        h = hashlib.sha256(a)
        h.update(b)
        return h.digest()


# --- BLAKE2s (RFC 7693) -------------------------------------------------------

_IV = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)


def blake2s(data):
    """Unkeyed BLAKE2s-256 of ``data`` (RFC 7693)."""
    if _use_fast:
        return _blake2s_viper(data)
    from micropython_port._blake2s_py import blake2s_int

    return blake2s_int(data)


_PARAM0 = 0x01010000 ^ HASHLEN  # parameter block word 0: depth 1, fanout 1, no key
# The viper state template: h = IV ^ parameter block, t = 0, f = 0, scratch.
_BS0 = None
if _bv is not None:
    _BS0 = array.array("I", bytes(4 * 32))
    for _i in range(8):
        _BS0[_i] = _IV[_i]
    _BS0[0] ^= _PARAM0


def _blake2s_viper(data):
    bs = array.array("I", _BS0)
    sigma = _bv.SIGMA_BYTES
    compress = _bv.compress
    n = len(data)
    off = 0
    while n - off > 64:
        bs[8] = off + 64
        bs[11] = off
        compress(bs, data, sigma)
        off += 64
    last = bytearray(64)
    last[0 : n - off] = data[off:n]
    bs[8] = n
    bs[10] = 1
    bs[11] = 0
    compress(bs, last, sigma)
    _bv.output(bs, last)
    return bytes(last[0:HASHLEN])


class Blake2s(_HmacHash):
    """BLAKE2s-256 (``hashlib`` on MicroPython has none)."""

    name = "BLAKE2s"

    def digest(self, data):
        return blake2s(data)


SHA256 = Sha256()
BLAKE2S = Blake2s()
