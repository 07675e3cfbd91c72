"""The CPython backend against PyNaCl's own bindings, on both AEAD paths
(libsodium below LARGE_BYTES, OpenSSL from there), with its guards."""

import os

import nacl.bindings as nb
import pytest

from device.backend import is_all_zero
from moteseal.crypto.backend_nacl import LARGE_BYTES, NaclBackend, NaclCipher
from device.errors import AuthError, BufferTooSmall, LocalError

SIZES = [0, 1, 63, LARGE_BYTES - 1, LARGE_BYTES, 1024, 4096]


@pytest.mark.parametrize("size", SIZES)
def test_aead_matches_libsodium_bindings_at_offsets(size):
    key, ad, pt = os.urandom(32), os.urandom(13), os.urandom(size)
    nonce = 0x0102030405060708
    expect = nb.crypto_aead_chacha20poly1305_ietf_encrypt(pt, ad, b"\0" * 4 + nonce.to_bytes(8, "little"), key)
    c = NaclCipher(key)
    src = bytearray(b"x" * 5 + pt)
    dst = bytearray(3 + size + 16 + 2)
    assert c.encrypt_into(nonce, ad + b"junk", 13, src, 5, size, dst, 3) == size + 16
    assert bytes(dst[3:3 + size + 16]) == expect
    out = bytearray(size + 1)
    assert c.decrypt_into(nonce, ad, 13, dst, 3, size + 16, out, 1) == size
    assert bytes(out[1:]) == pt


@pytest.mark.parametrize("size", [16, LARGE_BYTES + 10])
def test_failed_decrypt_leaves_no_plaintext_in_the_output(size):
    c = NaclCipher(os.urandom(32))
    ct = bytearray(size + 16)
    c.encrypt_into(7, b"", 0, b"A" * size, 0, size, ct, 0)
    for pos in (0, size - 1, size + 15):
        bad = bytearray(ct)
        bad[pos] ^= 1
        out = bytearray(b"\xee" * size)
        with pytest.raises(AuthError):
            c.decrypt_into(7, b"", 0, bad, 0, len(bad), out, 0)
        assert b"A" not in out


@pytest.mark.parametrize("size", [16, LARGE_BYTES + 10])
def test_in_place_decrypt(size):
    c = NaclCipher(os.urandom(32))
    buf = bytearray(size + 16)
    c.encrypt_into(1, b"", 0, b"B" * size, 0, size, buf, 0)
    good = bytes(buf)
    buf[0] ^= 1
    with pytest.raises(AuthError):
        c.decrypt_into(1, b"", 0, buf, 0, len(buf), buf, 0)
    assert b"B" not in buf[:size]  # no unauthenticated plaintext left behind
    buf[:] = good
    assert c.decrypt_into(1, b"", 0, buf, 0, len(buf), buf, 0) == size
    assert bytes(buf[:size]) == b"B" * size


def test_guards():
    c = NaclCipher(os.urandom(32))
    with pytest.raises(BufferTooSmall):
        c.encrypt_into(0, b"", 0, b"abc", 0, 3, bytearray(18), 0)
    with pytest.raises(BufferTooSmall):
        c.encrypt_into(0, b"", 5, b"abc", 0, 3, bytearray(19), 0)
    with pytest.raises(LocalError):
        c.encrypt_into(0, b"", 0, b"abc", 0, 3, bytes(19), 0)
    with pytest.raises(AuthError):
        c.decrypt_into(0, b"", 0, bytes(15), 0, 15, bytearray(16), 0)
    with pytest.raises(LocalError):
        NaclCipher(b"short")
    with pytest.raises(LocalError):
        NaclBackend().hash("MD5")


def test_x25519_and_the_low_order_check():
    b = NaclBackend()
    a_priv, a_pub = b.generate_keypair()
    c_priv, c_pub = b.generate_keypair()
    assert b.x25519(a_priv, c_pub) == b.x25519(c_priv, a_pub) == nb.crypto_scalarmult(a_priv, c_pub)
    assert is_all_zero(b.x25519(a_priv, bytes(32)))
    assert not is_all_zero(b.x25519(a_priv, c_pub))
