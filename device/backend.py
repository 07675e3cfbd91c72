"""The backend contract: how primitives and randomness reach the core.

The protocol core (``noise``, ``transport``, ``session``) never imports a
crypto library, reads a clock or draws randomness. It receives a backend
object, the way snow receives a ``CryptoResolver``. Two backends exist:

- ``moteseal.crypto.backend_nacl.NaclBackend`` on CPython: PyNaCl's libsodium for
  X25519 and ChaCha20-Poly1305, hashlib/hmac for SHA-256 and BLAKE2s.
- ``micropython_port.backend.MicroBackend`` on MicroPython: our own
  primitives over the built-in ``hashlib.sha256``.

A backend provides:

``x25519(priv, pub) -> bytes``
    RFC 7748 X25519 of a 32-byte private scalar (clamped by the backend) and
    a 32-byte u-coordinate. Returns 32 bytes, and MAY return 32 zero bytes
    for a low-order point: the core checks for that (``noise.dh``).
``x25519_base(priv) -> bytes``
    The public key of ``priv``.
``random_bytes(n) -> bytes``
    ``n`` bytes from a CSPRNG.
``cipher(key) -> cipher``
    A ChaCha20-Poly1305 (RFC 8439) object for a 32-byte key with:

    ``encrypt_into(nonce, ad, ad_len, src, src_off, src_len, dst, dst_off) -> int``
        Encrypts ``src[src_off:src_off+src_len]`` with the 96-bit nonce
        ``0x00000000 || little-endian uint64(nonce)`` (Noise section 12.3),
        associated data ``ad[:ad_len]``, and writes ciphertext || tag into
        ``dst`` at ``dst_off``. Returns ``src_len + 16``. ``src`` and ``dst``
        may be the same buffer with the same offset (in place).
    ``decrypt_into(nonce, ad, ad_len, src, src_off, src_len, dst, dst_off) -> int``
        Verifies the tag in constant time, writes the plaintext and returns
        ``src_len - 16``. Raises ``errors.AuthError`` if the tag is wrong or
        ``src_len < 16``; the output range then holds no plaintext (it is
        left untouched or zeroed). In place is allowed, as for encryption.
``hash(name) -> hash``
    ``name`` is ``"SHA256"`` or ``"BLAKE2s"``. The object has ``HASHLEN``
    (32), ``BLOCKLEN`` (64), ``digest(data) -> bytes`` and
    ``hmac(key, data) -> bytes`` (RFC 2104). Raises ``LocalError`` for a
    hash the backend lacks.

Test-only hook (named so that its name says so, as in snow):

``fixed_ephemeral_key_for_testing_only``
    An attribute a test may set to a list of 32-byte private keys; the
    handshake takes its ephemeral keys from its front instead of from
    ``random_bytes``. Production code never sets it.
"""

DHLEN_BYTES = 32
TAG_BYTES = 16
KEY_BYTES = 32


def is_all_zero(b):
    """Constant-time check that ``b`` is all zero bytes (low-order DH output,
    RFC 7748 section 6.1)."""
    # int.from_bytes reads every byte whatever their values.
    return int.from_bytes(b, "little") == 0


def ct_equal(a, b):
    """Constant-time equality of two byte strings of equal length."""
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0
