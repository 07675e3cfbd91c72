"""BLAKE2s-256 (RFC 7693) for the Noise core, which MicroPython's
``hashlib`` lacks; HMAC over it is ``hashes.hmac``.

Like ``hashes``, this module is itself the hash object
(``MicroBackend.hash("BLAKE2s")``): ``HASHLEN``, ``BLOCKLEN``,
``digest(data)`` and ``hmac(key, data)``. The backend imports it only when a
BLAKE2s suite asks, and a SHA-256 device's flash build leaves it out.

Invariants:
- Compresses with ``_blake2s_viper`` where the native emitter exists (32-bit
  safe, see its docstring), and otherwise on Python integers in
  ``_blake2s_py``, imported only then (about 60 us per 64-byte block on a
  fast unix host, and far slower on a 32-bit board, where every word above
  2**30 is a heap integer). ``tests/mp_primitive_hooks.py`` switches paths for tests.
  SHA-256 is still the one to pick on a device: it is built in. ``PATH``
  says which ("viper" or "python"); a MemoryError while loading the viper
  code is raised, not swallowed.
- Equals ``hashlib.blake2s`` on CPython (tested).
"""

from micropython_port.hashes import BLOCKLEN, HASHLEN
from micropython_port.hashes import hmac as _hmac

import sys
from array import array

# Only "this interpreter cannot load the viper code" falls back, never
# MemoryError (see ``x25519`` for the three exception types and why).
try:
    if sys.implementation.name != "micropython":
        raise ImportError  # CPython
    from micropython_port import _blake2s_viper as _bv

    PATH = "viper"
except (ImportError, SyntaxError, ValueError):
    _bv = None
    PATH = "python"

IV = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)
PARAM0 = 0x01010000 ^ HASHLEN  # parameter block word 0: depth 1, fanout 1, no key


def digest(data):
    """Unkeyed BLAKE2s-256 of ``data`` (RFC 7693): 32 bytes."""
    if not _bv:
        from micropython_port._blake2s_py import blake2s_int

        return blake2s_int(data, IV, PARAM0)
    # The viper state (see _blake2s_viper): h = IV ^ parameter block, t = 0,
    # f = 0, then scratch.
    bs = array("I", bytes(4 * 32))
    for i in range(8):
        bs[i] = IV[i]
    bs[0] ^= PARAM0
    n = len(data)
    off = 0
    while n - off > BLOCKLEN:
        bs[8] = off + BLOCKLEN
        bs[11] = off
        _bv.compress(bs, data, _bv.SIGMA_BYTES)
        off += BLOCKLEN
    last = bytearray(BLOCKLEN)
    last[0 : n - off] = data[off:n]
    bs[8] = n
    bs[10] = 1
    bs[11] = 0
    _bv.compress(bs, last, _bv.SIGMA_BYTES)
    _bv.output(bs, last)
    return bytes(last[0:HASHLEN])


def hmac(key, data):
    """RFC 2104 HMAC-BLAKE2s of ``data`` under ``key``: 32 bytes."""
    return _hmac(key, data, digest)
