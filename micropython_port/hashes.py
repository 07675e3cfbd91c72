"""SHA-256 for the Noise core, over MicroPython's built-in ``hashlib.sha256``,
and HMAC (RFC 2104) over any 32-byte hash.

This module is itself the hash object that ``MicroBackend.hash("SHA256")``
returns: the shape ``device/backend.py`` asks for is ``HASHLEN``,
``BLOCKLEN``, ``digest(data)`` and ``hmac(key, data)``, and a module has it
without a class or an instance in RAM. ``micropython_port.blake2s`` is the
BLAKE2s one (optional; loaded only by a BLAKE2s suite).

Invariants:
- HMAC keys longer than ``BLOCKLEN`` are hashed first and shorter ones are
  zero-padded (RFC 2104 section 2); the pads are XORed as one integer
  rather than byte by byte, which on MicroPython is the fast way.
- Runs unchanged on CPython, where tests check it against ``hmac``.
"""

from hashlib import sha256

HASHLEN = 32
BLOCKLEN = 64


def digest(data):
    """SHA-256 of ``data``: 32 bytes."""
    return sha256(data).digest()


def hmac(key, data, h=digest):
    """RFC 2104 HMAC of ``data`` under ``key`` with the 32-byte hash ``h``
    (one-shot, ``h(data) -> bytes``; SHA-256 by default): 32 bytes."""
    if len(key) > BLOCKLEN:
        key = h(key)
    k = int.from_bytes(bytes(key), "big") << (8 * (BLOCKLEN - len(key)))  # zero-padded
    # ipad = 0x36 and opad = 0x5C, each repeated BLOCKLEN times (RFC 2104
    # section 2); made per call rather than held in RAM between handshakes.
    pad = int.from_bytes(b"\x36" * BLOCKLEN, "big")
    inner = h((k ^ pad).to_bytes(BLOCKLEN, "big") + bytes(data))
    pad = int.from_bytes(b"\x5c" * BLOCKLEN, "big")
    return h((k ^ pad).to_bytes(BLOCKLEN, "big") + inner)
