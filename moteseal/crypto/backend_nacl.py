"""The CPython backend: PyNaCl's libsodium and hashlib/hmac (device/backend.py).

Invariants:
- No primitive is ours: X25519 and ChaCha20-Poly1305 are libsodium calls
  through PyNaCl's own cffi module; SHA-256, BLAKE2s and HMAC are hashlib/hmac.
- The AEAD calls go straight to ``nacl._sodium.lib`` rather than through
  ``nacl.bindings``: the wrappers there allocate and copy on every call
  (about 3 us of Python per call); the raw call writes into the caller's
  buffer. Every length is checked here first, because libsodium trusts its
  pointers.
- From ``LARGE_BYTES`` of plaintext up, the AEAD is ``cryptography``'s
  ``ChaCha20Poly1305`` (OpenSSL): PyNaCl's bundled libsodium runs ChaCha20
  about 5x slower at 4 KiB, while its per-call cost is lower for small
  messages (bench/bench_core.py prints both). OpenSSL writes plaintext
  before it checks the tag, so on failure that range is zeroed here, as
  libsodium does: no unauthenticated plaintext is left in a caller's buffer.
- Threads: every object here may be shared between threads. No call writes
  to state kept between calls: each X25519 writes into its own fresh
  buffer (libsodium releases the GIL, so a shared scratch buffer handed one
  thread's DH secret to another), a cipher holds only its immutable key
  (and ``cryptography``'s stateless AEAD object, made once), a hash object
  holds constants.
- A nonce outside 0 .. 2^64 - 1 raises ``LocalError``, as on MicroPython.
"""

from __future__ import annotations

import hashlib
import hmac

try:  # OpenSSL's HMAC behind the hmac module, without its Python wrapper
    from _hashlib import hmac_new as _hmac_new
except ImportError:  # pragma: no cover - CPython built without OpenSSL
    _hmac_new = None
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl._sodium import ffi, lib

from device.errors import AuthError, BufferTooSmall, LocalError

_NONCE = struct.Struct("<4xQ")  # Noise section 12.3: 32 zero bits || LE uint64
_NULL = ffi.NULL
_TAG_BYTES = 16
LARGE_BYTES = 448  # plaintext size from which OpenSSL's ChaCha20 beats libsodium's here (bench_core)


class NaclCipher:
    """ChaCha20-Poly1305 (RFC 8439) under one 32-byte key. May be shared
    between threads (it keeps no per-call state)."""

    __slots__ = ("_key", "_big")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise LocalError("ChaCha20-Poly1305 key must be 32 bytes")
        self._key = bytes(key)
        self._big = None  # cryptography's object, made on first large message

    def encrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off) -> int:
        # One combined bounds check (libsodium trusts its pointers), then one call.
        if (ad_len > len(ad) or src_off + src_len > len(src)
                or dst_off + src_len + _TAG_BYTES > len(dst)
                or (ad_len | src_off | src_len | dst_off) < 0):
            raise BufferTooSmall("buffer too small for the AEAD operation")
        if dst.__class__ is not bytearray:
            _writable(dst)
        if src_len >= LARGE_BYTES:
            big = self._big or self._make_big()
            # cryptography >= 46 refuses overlapping buffers (an in-place seal
            # or open, which the core does): seal from a copy then.
            data = memoryview(src)[src_off:src_off + src_len]
            if src is dst or (ad is dst and ad_len):
                data = bytes(data)
            big.encrypt_into(_pack(nonce), data, bytes(memoryview(ad)[:ad_len]),
                             memoryview(dst)[dst_off:dst_off + src_len + _TAG_BYTES])
            return src_len + _TAG_BYTES
        _encrypt(_from(dst) + dst_off, _NULL,
                 src if (src_off == 0 and src.__class__ is bytes) else _from(src) + src_off,
                 src_len, ad if ad.__class__ is bytes else _from(ad), ad_len,
                 _NULL, _pack(nonce), self._key)
        return src_len + _TAG_BYTES

    def decrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off) -> int:
        n = src_len - _TAG_BYTES
        if n < 0:
            raise AuthError("message does not authenticate")
        if (ad_len > len(ad) or src_off + src_len > len(src) or dst_off + n > len(dst)
                or (ad_len | src_off | dst_off) < 0):
            raise BufferTooSmall("buffer too small for the AEAD operation")
        if dst.__class__ is not bytearray:
            _writable(dst)
        if n >= LARGE_BYTES:
            big = self._big or self._make_big()
            out = memoryview(dst)[dst_off:dst_off + n]
            data = memoryview(src)[src_off:src_off + src_len]
            if src is dst:  # in place: see encrypt_into
                data = bytes(data)
            try:
                big.decrypt_into(_pack(nonce), data, bytes(memoryview(ad)[:ad_len]), out)
            except InvalidTag:
                out[:] = bytes(n)
                raise AuthError("message does not authenticate") from None
            return n
        try:  # _pack inlined: this is the hub's per-message path
            nb = _pack_struct(nonce)
        except (struct.error, TypeError):
            raise LocalError("nonce must be an integer in 0 .. 2^64 - 1") from None
        # A bytes source is passed as bytes (cffi hands libsodium its buffer):
        # a slice of a small message costs less than from_buffer plus an offset.
        if _decrypt(_from(dst) + dst_off if dst_off else _from(dst), _NULL, _NULL,
                    (src if src_off == 0 else src[src_off:src_off + src_len])
                    if src.__class__ is bytes else _from(src) + src_off,
                    src_len, ad if ad.__class__ is bytes else _from(ad), ad_len,
                    nb, self._key) != 0:
            raise AuthError("message does not authenticate")
        return n

    def _make_big(self) -> ChaCha20Poly1305:
        self._big = ChaCha20Poly1305(self._key)
        return self._big


def _writable(buf) -> None:
    if buf.__class__ is bytes or (buf.__class__ is memoryview and buf.readonly):
        raise LocalError("output buffer must be writable")


_from = ffi.from_buffer
_encrypt = lib.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = lib.crypto_aead_chacha20poly1305_ietf_decrypt
_pack_struct = _NONCE.pack


def _new_out():
    return ffi.new("unsigned char[32]")


def _unpack_out(out) -> bytes:
    return ffi.buffer(out, 32)[:]


def _pack(nonce: int) -> bytes:
    # The contract's nonce is a uint64 (device/backend.py); struct.error for
    # anything else would escape the error tree.
    try:
        return _pack_struct(nonce)
    except (struct.error, TypeError):
        raise LocalError("nonce must be an integer in 0 .. 2^64 - 1") from None


class _Hash:
    __slots__ = ("HASHLEN", "BLOCKLEN", "_new", "_digestmod", "_fast")

    def __init__(self, new, digestmod) -> None:
        self.HASHLEN = 32
        self.BLOCKLEN = 64
        self._new = new
        self._digestmod = digestmod
        # hmac_new(...).digest() costs about 0.9 us against 1.2 us for the
        # one-shot hmac_digest (OpenSSL 3 fetches the digest per one-shot);
        # a handshake makes 19 HMACs per side (bench/bench_ingest.py).
        self._fast = _hmac_new if isinstance(digestmod, str) else None

    def digest(self, data) -> bytes:
        return self._new(data).digest()

    def hmac(self, key, data) -> bytes:
        if self._fast is not None:
            return self._fast(key, data, self._digestmod).digest()
        return hmac.digest(key, data, self._digestmod)


_HASHES = {
    "SHA256": _Hash(hashlib.sha256, "sha256"),
    "BLAKE2s": _Hash(hashlib.blake2s, hashlib.blake2s),
}


class NaclBackend:
    """Primitives for the core on CPython (contract: device/backend.py).

    May be shared between threads: every call works on its own buffers (see
    the module's "Threads" invariant). Only the test hook
    ``fixed_ephemeral_key_for_testing_only`` is state, and production never
    sets it."""

    name = "nacl"

    def __init__(self) -> None:
        self.fixed_ephemeral_key_for_testing_only: list[bytes] | None = None

    def x25519(self, priv: bytes, pub: bytes) -> bytes:
        if len(priv) != 32 or len(pub) != 32:
            raise LocalError("X25519 keys are 32 bytes")
        # A fresh output per call: crypto_scalarmult runs without the GIL.
        out = _new_out()
        # libsodium returns -1 for a low-order point WITHOUT writing the
        # output, so return the all-zero value the contract names; the core
        # rejects it.
        if lib.crypto_scalarmult(out, priv, pub) != 0:
            return bytes(32)
        return _unpack_out(out)

    def x25519_base(self, priv: bytes) -> bytes:
        if len(priv) != 32:
            raise LocalError("X25519 keys are 32 bytes")
        out = _new_out()  # fresh per call, as in x25519
        lib.crypto_scalarmult_base(out, priv)
        return _unpack_out(out)

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
