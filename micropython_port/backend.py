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
- ``x25519``, ``x25519_base`` and ``cipher`` are the primitive modules'
  functions themselves (no wrapper to keep in RAM); each raises
  ``LocalError`` for a key of the wrong length. ``x25519`` returns 32 zero
  bytes for a low-order point rather than raise; the core's ``noise.dh``
  rejects that output.
- ``fixed_ephemeral_key_for_testing_only`` is ``None`` unless a test sets it
  on an instance; the core reads it, this class never does.
"""

try:
    from os import urandom
except ImportError:  # older MicroPython ports name it uos
    from uos import urandom

from device.errors import LocalError
from micropython_port import hashes
from micropython_port.chacha20poly1305 import ChaCha20Poly1305
from micropython_port.x25519 import x25519, x25519_base

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

# A flash build for a SHA-256 suite sets this to const(0) (moteseal/flash/
# features.py ``suite_flags``): it ships no ``blake2s``, so BLAKE2s is an
# unsupported hash there.
_BLAKE2S = const(1)


class MicroBackend:
    """Primitives for the core on MicroPython (and, more slowly, CPython)."""

    name = "micropython"
    fixed_ephemeral_key_for_testing_only = None
    x25519 = staticmethod(x25519)  # (priv, pub) -> 32 bytes
    x25519_base = staticmethod(x25519_base)  # priv -> its public key
    random_bytes = staticmethod(urandom)  # n -> n bytes from the platform CSPRNG
    cipher = staticmethod(ChaCha20Poly1305)  # 32-byte key -> AEAD object

    def generate_keypair(self):
        """A fresh (private, public) X25519 key pair."""
        priv = urandom(32)
        return priv, x25519_base(priv)

    def hash(self, name):
        """``"SHA256"`` or ``"BLAKE2s"``: a module with ``HASHLEN``,
        ``BLOCKLEN``, ``digest`` and ``hmac``. Raises ``LocalError`` for any
        other name."""
        if name == "SHA256":
            return hashes
        if _BLAKE2S and name == "BLAKE2s":
            from micropython_port import blake2s

            return blake2s
        raise LocalError("unsupported hash")


def paths():
    """Which code runs each primitive, for the device to print at boot, e.g.
    ``"x25519=asm_thumb aead=asm_thumb"`` on ARMv7-M,
    ``"x25519=asm_thumb1 aead=asm_thumb1"`` on ARMv6-M (RP2040),
    ``"x25519=viper aead=viper"`` elsewhere (and ``blake2s=...`` once a BLAKE2s
    suite has imported it; this never imports it). A "python" there on a
    board means the slow fallback: its port cannot load the fast path."""
    import sys

    from micropython_port import chacha20poly1305, x25519

    out = "x25519=" + x25519.PATH + " aead=" + chacha20poly1305.PATH
    b = _BLAKE2S and sys.modules.get("micropython_port.blake2s")
    if b:
        out += " blake2s=" + b.PATH
    return out
