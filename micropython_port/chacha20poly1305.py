"""ChaCha20-Poly1305 AEAD (RFC 8439) for MicroPython, with a pure-Python
fallback that also runs on CPython.

Invariants:
- ``decrypt_into`` computes the tag over the ciphertext, compares it in
  constant time, and only then writes plaintext. On a mismatch (or
  ``src_len < 16``) it raises ``AuthError`` and ``dst`` is untouched.
- Once a ``ChaCha20Poly1305`` object exists, ``encrypt_into`` and
  ``decrypt_into`` on the fast path allocate nothing on the heap (a test runs
  them under ``micropython.heap_lock()``): state, keystream, Poly1305 key,
  padding block and tag live in buffers made by ``__init__``, and offsets and
  lengths reach the viper code through those buffers, never through slices.
  (A nonce of 2**30 or more on a 32-bit port, or 2**62 on a 64-bit one, is a
  heap integer already; splitting it allocates.)
- Every offset and length is checked before viper code touches memory: viper
  does no bounds checks.
- Fast path: ``_chachapoly_viper`` (32-bit-safe viper, see its docstring),
  used when the port has the native emitter; otherwise, and on CPython, the
  pure-Python class of ``_chachapoly_py`` runs (imported only then, so a
  board with the emitter never loads it into RAM). ``force_fallback_for_testing_only`` switches
  paths so tests can compare them on one interpreter.
"""

from device.errors import AuthError, BufferTooSmall, LocalError

KEY_BYTES = 32
TAG_BYTES = 16
IV_BYTES = 12

try:
    import array

    from micropython_port import _chachapoly_viper as _v
except Exception:  # noqa: BLE001 - CPython, or a port without the native emitter
    _v = None

_use_fast = _v is not None


def has_fast_path():
    """True if the viper ChaCha20/Poly1305 loaded on this interpreter."""
    return _v is not None


def force_fallback_for_testing_only(flag):
    """Make new ``ChaCha20Poly1305`` objects use the pure-Python code
    (``flag=True``) or the viper code (``False``); returns the previous
    setting."""
    global _use_fast
    prev = not _use_fast
    _use_fast = (not flag) and _v is not None
    return prev


def ChaCha20Poly1305(key):  # noqa: N802 - a factory standing in for a class
    """A cipher object for the 32-byte ``key`` with ``encrypt_into`` and
    ``decrypt_into`` (see ``device/backend.py``). Raises ``LocalError`` for a
    key of the wrong length."""
    if len(key) != KEY_BYTES:
        raise LocalError("ChaCha20-Poly1305 key must be 32 bytes")
    if _use_fast:
        return _ViperChaCha20Poly1305(key)
    from micropython_port._chachapoly_py import PyChaCha20Poly1305

    return PyChaCha20Poly1305(key)


def _check_ranges(ad, ad_len, src, src_off, src_len, dst, dst_off, out_len):
    if dst.__class__ is bytes:
        # viper would write into an immutable (possibly frozen, in-flash) object
        raise LocalError("dst must be writable")
    if ad_len < 0 or src_off < 0 or src_len < 0 or dst_off < 0:
        raise LocalError("negative offset or length")
    if ad_len and ad_len > len(ad):
        raise LocalError("ad_len exceeds ad")
    if src_off + src_len > len(src):
        raise LocalError("src range exceeds src")
    if dst_off + out_len > len(dst):
        raise BufferTooSmall("dst cannot hold the output")


def _check_nonce(nonce):
    if nonce < 0 or nonce >> 64:
        raise LocalError("nonce must be a uint64")


class _Cipher:
    """The RFC 8439 section 2.8 construction with a raw 12-byte nonce, over
    the ``_set_iv``, ``_start``, ``_xor``, ``_mac``, ``_poly_finish`` and
    ``_tag_matches`` primitives of a subclass (for vectors and tests; the
    subclasses' ``encrypt_into``/``decrypt_into`` are the hot path)."""

    def encrypt_iv(self, iv, ad, pt):
        """RFC 8439 AEAD with a raw 12-byte nonce; returns ciphertext || tag
        (allocates; for vectors and tests)."""
        out = bytearray(len(pt) + TAG_BYTES)
        self._set_iv(iv)
        self._seal(ad, len(ad), pt, 0, len(pt), out, 0)
        return bytes(out)

    def decrypt_iv(self, iv, ad, ct):
        """Inverse of ``encrypt_iv``; raises ``AuthError``."""
        if len(ct) < TAG_BYTES:
            raise AuthError("authentication failed")
        out = bytearray(len(ct) - TAG_BYTES)
        self._set_iv(iv)
        self._open(ad, len(ad), ct, 0, len(ct), out, 0)
        return bytes(out)

    def _seal(self, ad, ad_len, src, src_off, src_len, dst, dst_off):
        self._start()  # Poly1305 key from block 0; counter is now 1
        self._xor(src, src_off, dst, dst_off, src_len)
        self._mac(ad, ad_len, dst, dst_off, src_len)
        self._poly_finish(dst, dst_off + src_len)
        return src_len + TAG_BYTES

    def _open(self, ad, ad_len, src, src_off, src_len, dst, dst_off):
        ct_len = src_len - TAG_BYTES
        self._start()
        self._mac(ad, ad_len, src, src_off, ct_len)
        if not self._tag_matches(src, src_off + ct_len):
            raise AuthError("authentication failed")
        self._xor(src, src_off, dst, dst_off, ct_len)
        return ct_len


class _ViperChaCha20Poly1305(_Cipher):
    """The fast path. ``encrypt_into``/``decrypt_into`` are written out flat
    (no helper calls) because on MicroPython each Python-level call costs
    about as much as absorbing a Poly1305 block."""

    def __init__(self, key):
        self._st = array.array("I", bytes(4 * 48))
        self._ps = array.array("I", bytes(4 * 40))
        self._blk = bytearray(16)
        self._tag = bytearray(16)
        _v.chacha_setkey(self._st, key)

    def encrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off):
        if nonce < 0 or nonce >> 64:
            raise LocalError("nonce must be a uint64")
        _check_ranges(ad, ad_len, src, src_off, src_len, dst, dst_off, src_len + TAG_BYTES)
        st = self._st
        ps = self._ps
        v = _v
        st[20] = nonce & 0xFFFF
        st[21] = (nonce >> 16) & 0xFFFF
        st[22] = (nonce >> 32) & 0xFFFF
        st[23] = (nonce >> 48) & 0xFFFF
        v.chacha_setnonce(st)
        v.chacha_polykey(st, ps)  # block 0 -> r, s; counter = 1
        st[16] = src_off
        st[17] = dst_off
        st[18] = src_len
        v.chacha_xor(st, src, dst)
        ps[31] = ad_len
        ps[32] = src_len
        ps[33] = dst_off + src_len  # the tag follows the ciphertext
        if ad_len:
            ps[28] = 0
            ps[29] = ad_len
            ps[30] = 1
            v.poly_update(ps, ad, self._blk, dst)
        ps[28] = dst_off
        ps[29] = src_len
        ps[30] = 7  # pad, then the length block, then the tag
        v.poly_update(ps, dst, self._blk, dst)
        return src_len + TAG_BYTES

    def decrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off):
        if nonce < 0 or nonce >> 64:
            raise LocalError("nonce must be a uint64")
        if src_len < TAG_BYTES:
            raise AuthError("authentication failed")
        ct_len = src_len - TAG_BYTES
        _check_ranges(ad, ad_len, src, src_off, src_len, dst, dst_off, ct_len)
        st = self._st
        ps = self._ps
        v = _v
        st[20] = nonce & 0xFFFF
        st[21] = (nonce >> 16) & 0xFFFF
        st[22] = (nonce >> 32) & 0xFFFF
        st[23] = (nonce >> 48) & 0xFFFF
        v.chacha_setnonce(st)
        v.chacha_polykey(st, ps)
        ps[31] = ad_len
        ps[32] = ct_len
        ps[33] = src_off + ct_len  # the received tag, compared in place
        if ad_len:
            ps[28] = 0
            ps[29] = ad_len
            ps[30] = 1
            v.poly_update(ps, ad, self._blk, src)
        ps[28] = src_off
        ps[29] = ct_len
        ps[30] = 15  # pad, length block, finish, compare (constant time)
        if v.poly_update(ps, src, self._blk, src):
            raise AuthError("authentication failed")
        st[16] = src_off
        st[17] = dst_off
        st[18] = ct_len
        v.chacha_xor(st, src, dst)
        return ct_len

    # primitives for the shared encrypt_iv/decrypt_iv and the raw functions

    def _set_iv(self, iv):
        if len(iv) != IV_BYTES:
            raise LocalError("nonce must be 12 bytes")
        _v.chacha_setiv(self._st, iv)

    def _start(self):
        _v.chacha_polykey(self._st, self._ps)

    def _xor(self, src, src_off, dst, dst_off, n):
        st = self._st
        st[16] = src_off
        st[17] = dst_off
        st[18] = n
        _v.chacha_xor(st, src, dst)

    def _mac(self, ad, ad_len, ct, ct_off, ct_len):
        ps = self._ps
        ps[31] = ad_len
        ps[32] = ct_len
        ps[33] = 0
        if ad_len:
            ps[28] = 0
            ps[29] = ad_len
            ps[30] = 1
            _v.poly_update(ps, ad, self._blk, self._tag)
        ps[28] = ct_off
        ps[29] = ct_len
        ps[30] = 7
        _v.poly_update(ps, ct, self._blk, self._tag)

    def _poly_finish(self, out, off):
        tag = self._tag
        for i in range(TAG_BYTES):
            out[off + i] = tag[i]

    def _tag_matches(self, src, off):
        tag = self._tag
        acc = 0
        for i in range(TAG_BYTES):
            acc |= src[off + i] ^ tag[i]
        return acc == 0


# --- raw RFC 8439 primitives (allocating; for vectors and tests) -------------


def chacha20_encrypt(key, counter, iv, data):
    """RFC 8439 section 2.4 ChaCha20 of ``data`` from block ``counter``."""
    c = ChaCha20Poly1305(key)
    c._set_iv(iv)
    out = bytearray(len(data))
    if isinstance(c, _ViperChaCha20Poly1305):
        c._st[12] = counter
    else:
        c._state[12] = counter
    c._xor(data, 0, out, 0, len(data))
    return bytes(out)


def chacha20_block(key, counter, iv):
    """RFC 8439 section 2.3 block function: 64 keystream bytes."""
    return chacha20_encrypt(key, counter, iv, bytes(64))


def poly1305(key, msg):
    """RFC 8439 section 2.5 one-time authenticator of ``msg`` under the
    32-byte ``key``."""
    if len(key) != KEY_BYTES:
        raise LocalError("Poly1305 key must be 32 bytes")
    if _use_fast:
        ps = array.array("I", bytes(4 * 40))
        out = bytearray(16)
        _v.poly_init(ps, key)
        ps[28] = 0
        ps[29] = len(msg)
        ps[30] = 4  # plain Poly1305 padding, then the tag
        ps[33] = 0
        _v.poly_update(ps, msg, bytearray(16), out)
        return bytes(out)
    from micropython_port._chachapoly_py import PyChaCha20Poly1305

    p = PyChaCha20Poly1305(bytes(32))
    p._r = int.from_bytes(bytes(key[0:16]), "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    p._s = int.from_bytes(bytes(key[16:32]), "little")
    p._h = 0
    p._poly_update(msg, 0, len(msg), pad=False)
    return p._tag_bytes()
