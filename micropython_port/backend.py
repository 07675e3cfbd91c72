"""``MicroBackend``: the primitives the core needs, on MicroPython (the
contract is ``device/backend.py``).

Invariants:
- Everything here is ours except SHA-256 (MicroPython's built-in
  ``hashlib``) and randomness (``os.urandom``: the board's TRNG on ESP32 and
  RP2040, ``getrandom`` on the unix port). A port without ``os.urandom``
  fails at import rather than fall back to a non-cryptographic generator.
- The same class imports and runs on CPython (viper is absent there, so it
  uses the pure-Python paths), which lets tests compare it with
  ``NaclBackend``.
- ``x25519`` returns 32 zero bytes for a low-order point rather than raise;
  the core's ``noise.dh`` rejects that output.
- ``fixed_ephemeral_key_for_testing_only`` starts as ``None``; the core reads
  it, this class never does.
"""

try:
    from os import urandom as _urandom
except ImportError:  # older MicroPython ports name it uos
    from uos import urandom as _urandom

from device.errors import LocalError
from micropython_port import chacha20poly1305 as _aead
from micropython_port import hashes as _hashes
from micropython_port import x25519 as _x

_KEY_BYTES = 32


class MicroBackend:
    """Primitives for the core on MicroPython (and, more slowly, CPython)."""

    name = "micropython"

    def __init__(self):
        self.fixed_ephemeral_key_for_testing_only = None

    def x25519(self, priv, pub):
        """RFC 7748 X25519; 32 zero bytes for a low-order ``pub``. Raises
        ``LocalError`` unless both are 32 bytes."""
        if len(priv) != _KEY_BYTES or len(pub) != _KEY_BYTES:
            raise LocalError("X25519 keys are 32 bytes")
        return _x.x25519(priv, pub)

    def x25519_base(self, priv):
        """The public key of the 32-byte ``priv``. Raises ``LocalError``."""
        if len(priv) != _KEY_BYTES:
            raise LocalError("X25519 keys are 32 bytes")
        return _x.x25519_base(priv)

    def random_bytes(self, n):
        """``n`` bytes from the platform CSPRNG."""
        return bytes(_urandom(n))

    def generate_keypair(self):
        """A fresh (private, public) X25519 key pair."""
        priv = self.random_bytes(_KEY_BYTES)
        return priv, _x.x25519_base(priv)

    def cipher(self, key):
        """A ChaCha20-Poly1305 object for the 32-byte ``key`` (raises
        ``LocalError`` for another length)."""
        return _aead.ChaCha20Poly1305(key)

    def hash(self, name):
        """``"SHA256"`` or ``"BLAKE2s"``; raises ``LocalError`` otherwise."""
        if name == "SHA256":
            return _hashes.SHA256
        if name == "BLAKE2s":
            return _hashes.BLAKE2S
        raise LocalError("unsupported hash")


__all__ = ["MicroBackend"]
