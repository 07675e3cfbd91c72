"""The CPython backend: PyNaCl's libsodium and hashlib/hmac (device/backend.py).

Invariants:
- No primitive is ours: X25519 and ChaCha20-Poly1305 are libsodium calls
  through PyNaCl's own cffi module; SHA-256, BLAKE2s and HMAC are hashlib/hmac.
- The AEAD calls go straight to ``nacl._sodium.lib`` rather than through
  ``nacl.bindings``: the wrappers there allocate and copy on every call
  (about 3 us of Python per call, measured in bench/bench_core.py); the raw
  call writes into the caller's buffer. Every length is checked here first,
  because libsodium trusts its pointers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from nacl._sodium import ffi, lib

from device.errors import AuthError, BufferTooSmall, LocalError

_NONCE = struct.Struct("<4xQ")  # Noise section 12.3: 32 zero bits || LE uint64
_NULL = ffi.NULL
_TAG_BYTES = 16


def _check(buf, off: int, n: int, what: str) -> None:
    if off < 0 or n < 0 or off + n > len(buf):
        raise BufferTooSmall(f"{what}: need {off + n} bytes, have {len(buf)}")


class NaclCipher:
    """ChaCha20-Poly1305 (RFC 8439) under one 32-byte key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise LocalError("ChaCha20-Poly1305 key must be 32 bytes")
        self._key = bytes(key)

    def encrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off) -> int:
        _check(ad, 0, ad_len, "associated data")
        _check(src, src_off, src_len, "plaintext")
        _check(dst, dst_off, src_len + _TAG_BYTES, "ciphertext buffer")
        lib.crypto_aead_chacha20poly1305_ietf_encrypt(
            ffi.from_buffer(dst, require_writable=True) + dst_off, _NULL,
            ffi.from_buffer(src) + src_off, src_len,
            ffi.from_buffer(ad), ad_len,
            _NULL, _NONCE.pack(nonce), self._key)
        return src_len + _TAG_BYTES

    def decrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off) -> int:
        if src_len < _TAG_BYTES:
            raise AuthError("message does not authenticate")
        _check(ad, 0, ad_len, "associated data")
        _check(src, src_off, src_len, "ciphertext")
        n = src_len - _TAG_BYTES
        _check(dst, dst_off, n, "plaintext buffer")
        if src is dst:
            # libsodium zeroes its output on failure; decrypting in place
            # would then destroy the caller's ciphertext. Copy it first.
            src = bytes(memoryview(src)[src_off:src_off + src_len])
            src_off = 0
        rc = lib.crypto_aead_chacha20poly1305_ietf_decrypt(
            ffi.from_buffer(dst, require_writable=True) + dst_off, _NULL, _NULL,
            ffi.from_buffer(src) + src_off, src_len,
            ffi.from_buffer(ad), ad_len,
            _NONCE.pack(nonce), self._key)
        if rc != 0:
            raise AuthError("message does not authenticate")
        return n


class _Hash:
    __slots__ = ("HASHLEN", "BLOCKLEN", "_new", "_digestmod")

    def __init__(self, new, digestmod) -> None:
        self.HASHLEN = 32
        self.BLOCKLEN = 64
        self._new = new
        self._digestmod = digestmod

    def digest(self, data) -> bytes:
        return self._new(data).digest()

    def hmac(self, key, data) -> bytes:
        return hmac.digest(key, data, self._digestmod)


_HASHES = {
    "SHA256": _Hash(hashlib.sha256, "sha256"),
    "BLAKE2s": _Hash(hashlib.blake2s, hashlib.blake2s),
}


class NaclBackend:
    """Primitives for the core on CPython (contract: device/backend.py)."""

    name = "nacl"

    def __init__(self) -> None:
        self.fixed_ephemeral_key_for_testing_only: list[bytes] | None = None
        self._out = bytearray(32)
        self._outp = ffi.from_buffer(self._out)

    def x25519(self, priv: bytes, pub: bytes) -> bytes:
        if len(priv) != 32 or len(pub) != 32:
            raise LocalError("X25519 keys are 32 bytes")
        # libsodium returns -1 for an all-zero result (low-order point) and
        # still writes the zeros; the core rejects all-zero output itself.
        lib.crypto_scalarmult(self._outp, priv, pub)
        return bytes(self._out)

    def x25519_base(self, priv: bytes) -> bytes:
        if len(priv) != 32:
            raise LocalError("X25519 keys are 32 bytes")
        lib.crypto_scalarmult_base(self._outp, priv)
        return bytes(self._out)

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def generate_keypair(self) -> tuple[bytes, bytes]:
        priv = os.urandom(32)
        return priv, self.x25519_base(priv)

    def cipher(self, key: bytes) -> NaclCipher:
        return NaclCipher(key)

    def hash(self, name: str) -> _Hash:
        try:
            return _HASHES[name]
        except KeyError:
            raise LocalError(f"unsupported hash {name!r}") from None
