"""The least a Python program does for one NKpsk0 handshake, both sides.

A reference for ``bench_ingest.py``: with the libraries moteseal uses
(libsodium's X25519 through cffi, OpenSSL's HMAC-SHA256 and SHA-256 through
``_hashlib``, ``cryptography``'s ChaCha20-Poly1305), and every shortcut
a handshake can take:
- the state after the protocol name, the prologue, ``<- s`` and the PSK is
  computed once (it depends only on the responder key and the PSK);
- HKDF stops at the outputs that are used (a key overwritten before its
  first use is never derived);
- no length, turn or low-order checks, no error paths, no objects.

It is NOT a Noise implementation anyone should run: it exists to measure how
close to the six-DH bound a Python handshake can get at all.
"""

from __future__ import annotations

import os

from _hashlib import hmac_new
from _hashlib import openssl_sha256 as _sha
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl._sodium import ffi, lib

_NONCE0 = bytes(12)
NAME = b"Noise_NKpsk0_25519_ChaChaPoly_SHA256"


def _hkdf1(ck, ikm):
    return hmac_new(hmac_new(ck, ikm, "sha256").digest(), b"\x01", "sha256").digest()


def _hkdf2(ck, ikm):
    t = hmac_new(ck, ikm, "sha256").digest()
    o1 = hmac_new(t, b"\x01", "sha256").digest()
    return o1, hmac_new(t, o1 + b"\x02", "sha256").digest()


def _dh(priv, pub):
    out = ffi.new("unsigned char[32]")
    lib.crypto_scalarmult(out, priv, pub)
    return bytes(out)


def _base(priv):
    out = ffi.new("unsigned char[32]")
    lib.crypto_scalarmult_base(out, priv)
    return bytes(out)


def prefix(pub: bytes, psk: bytes) -> tuple[bytes, bytes]:
    """(ck, h) after the name, an empty prologue, ``<- s`` and ``psk``."""
    h = _sha(NAME).digest()
    ck = h
    h = _sha(_sha(h).digest() + pub).digest()
    t = hmac_new(ck, psk, "sha256").digest()
    o1 = hmac_new(t, b"\x01", "sha256").digest()
    o2 = hmac_new(t, o1 + b"\x02", "sha256").digest()
    return o1, _sha(h + o2).digest()


def both_sides(priv: bytes, pub: bytes, pre: tuple[bytes, bytes], rand=os.urandom):
    """Message 1 and 2 with empty payloads; the four transport ciphers."""
    ck0, h0 = pre
    # initiator, message 1: psk (pre-computed), e, es
    e = rand(32)
    ep = _base(e)
    h = _sha(h0 + ep).digest()
    ck, k = _hkdf2(_hkdf1(ck0, ep), _dh(e, pub))
    c1 = ChaCha20Poly1305(k).encrypt(_NONCE0, b"", h)
    h = _sha(h + c1).digest()
    # responder reads message 1
    rh = _sha(h0 + ep).digest()
    rck, k = _hkdf2(_hkdf1(ck0, ep), _dh(priv, ep))
    ChaCha20Poly1305(k).decrypt(_NONCE0, c1, rh)
    rh = _sha(rh + c1).digest()
    # responder, message 2: e, ee
    f = rand(32)
    fp = _base(f)
    rh = _sha(rh + fp).digest()
    rck, k = _hkdf2(_hkdf1(rck, fp), _dh(f, ep))
    c2 = ChaCha20Poly1305(k).encrypt(_NONCE0, b"", rh)
    # initiator reads message 2
    h = _sha(h + fp).digest()
    ck, k = _hkdf2(_hkdf1(ck, fp), _dh(e, fp))
    ChaCha20Poly1305(k).decrypt(_NONCE0, c2, h)
    i1, i2 = _hkdf2(ck, b"")
    r1, r2 = _hkdf2(rck, b"")
    return (ChaCha20Poly1305(i1), ChaCha20Poly1305(i2),
            ChaCha20Poly1305(r1), ChaCha20Poly1305(r2))
