"""Test and benchmark hooks for the MicroPython primitives
(``micropython_port``), run under MicroPython as well as CPython. They live
here, not in the port, so that no device build ships them: on a device they
would only take RAM.

- ``has_fast_path()`` and ``force_fallback_for_testing_only(flag)``: which
  primitives loaded their fast (viper or asm_thumb) code, and a switch that makes ``x25519``,
  ``chacha20poly1305`` and ``blake2s`` run their pure-Python fallbacks on
  the same interpreter, so tests and benchmarks cover both paths.
- ``force_x25519_path_for_testing_only(path)``: X25519 on the asm_thumb,
  viper or Python field arithmetic.
- The raw RFC 8439 functions the vectors need (section 2.3 block, 2.4
  stream, 2.5 one-time authenticator, 2.8 AEAD with a 12-byte nonce). They
  drive the same viper code and cipher objects as the device, and allocate.
"""

from array import array

from device.errors import LocalError
from micropython_port import blake2s as B
from micropython_port import chacha20poly1305 as C
from micropython_port import x25519 as X
from micropython_port._chachapoly_py import ChaCha20Poly1305 as PyChaCha20Poly1305

# The viper modules as the primitives loaded them (None where they could not).
_FAST = (X._fe, C._v, B._bv)
_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF  # RFC 8439 section 2.5.1


def has_fast_path():
    """``[x25519, chacha20poly1305, blake2s]``: True where the viper code
    loaded on this interpreter."""
    return [m is not None for m in _FAST]


_PATHS = (X.PATH, C.PATH, B.PATH)


def force_fallback_for_testing_only(flag):
    """Make the three primitives use their pure-Python code (``flag=True``)
    or their fast code again (``False``); returns the previous setting.
    Cipher objects made before the switch keep the path they were made with.
    Each module's ``PATH`` follows."""
    prev = X._fe is None and _FAST[0] is not None
    X._fe, C._v, B._bv = (None, None, None) if flag else _FAST
    X.PATH, C.PATH, B.PATH = ("python",) * 3 if flag else _PATHS
    return prev


def force_x25519_path_for_testing_only(path):
    """Run X25519 on ``path``: "asm_thumb", "viper" (imported now, so the
    port must support it) or "python"; ``X.PATH`` follows."""
    if path == "python":
        X._fe = None
    elif path == "viper":
        from micropython_port import _fe25519_viper as fe

        X._fe = fe
    else:
        from micropython_port import _fe25519_thumb as fe

        X._fe = fe
    X.PATH = path


def _le32(b, o):
    return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)


def chacha20_encrypt(key, counter, iv, data):
    """RFC 8439 section 2.4: ChaCha20 of ``data`` under the 12-byte ``iv``,
    starting at block ``counter``."""
    c = C.ChaCha20Poly1305(key)
    out = bytearray(len(data))
    if isinstance(c, PyChaCha20Poly1305):
        for i in range(3):
            c._state[13 + i] = _le32(iv, 4 * i)
        c._state[12] = counter
        c._xor(data, 0, out, 0, len(data))
        return bytes(out)
    st = c._st
    for i in range(6):  # the nonce as six 16-bit pieces (see _chachapoly_viper)
        st[20 + i] = iv[2 * i] | (iv[2 * i + 1] << 8)
    C._v.chacha_polykey(st, c._ps)  # assembles st[13..15]
    st[12] = counter
    st[16] = st[17] = 0
    st[18] = len(data)
    C._v.chacha_xor(st, data, out)
    return bytes(out)


def chacha20_block(key, counter, iv):
    """RFC 8439 section 2.3: the 64-byte block function output."""
    return chacha20_encrypt(key, counter, iv, bytes(64))


def poly1305(key, msg):
    """RFC 8439 section 2.5: the tag of ``msg`` under the 32-byte one-time
    ``key``."""
    if len(key) != 32:
        raise LocalError("Poly1305 key must be 32 bytes")
    r = int.from_bytes(bytes(key[0:16]), "little") & _CLAMP
    if not C._v:
        p = PyChaCha20Poly1305(bytes(32), C._check)
        p._r = r
        p._s = int.from_bytes(bytes(key[16:32]), "little")
        p._h = 0
        p._poly_update(msg, 0, len(msg), pad=False)
        return p._tag_bytes()
    ps = array("I", bytes(4 * 32))
    for i in range(10):
        ps[10 + i] = (r >> (13 * i)) & 0x1FFF
    for i in range(8):
        ps[20 + i] = key[16 + 2 * i] | (key[17 + 2 * i] << 8)
    buf = bytearray(msg) + bytearray(16)  # the tag lands after the message
    ps[28] = 0
    ps[29] = len(msg)
    ps[30] = 4  # plain Poly1305 padding, then the tag
    ps[31] = 0
    C._v.poly_update(ps, b"", buf, bytearray(16))
    return bytes(buf[len(msg):])


def _with_iv(key, iv):
    # A cipher whose nonce words are the raw 12-byte iv: encrypt_into writes
    # the last 8 bytes from its uint64 nonce, and the first word, which the
    # Noise path keeps zero, is set here.
    if len(iv) != 12:
        raise LocalError("nonce must be 12 bytes")
    c = C.ChaCha20Poly1305(key)
    w = _le32(iv, 0)
    if isinstance(c, PyChaCha20Poly1305):
        c._state[13] = w
    else:
        c._st[20] = w & 0xFFFF
        c._st[21] = w >> 16
    return c, int.from_bytes(bytes(iv[4:12]), "little")


def encrypt_iv(key, iv, ad, pt):
    """RFC 8439 section 2.8 AEAD with a raw 12-byte nonce: ciphertext || tag."""
    c, n = _with_iv(key, iv)
    out = bytearray(len(pt) + 16)
    c.encrypt_into(n, ad, len(ad), pt, 0, len(pt), out, 0)
    return bytes(out)


def decrypt_iv(key, iv, ad, ct):
    """Inverse of ``encrypt_iv``; raises ``AuthError``."""
    c, n = _with_iv(key, iv)
    out = bytearray(max(len(ct) - 16, 0))
    c.decrypt_into(n, ad, len(ad), ct, 0, len(ct), out, 0)
    return bytes(out)
