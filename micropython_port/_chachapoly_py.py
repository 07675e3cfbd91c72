"""ChaCha20-Poly1305 (RFC 8439) on Python integers: the fallback of
``micropython_port.chacha20poly1305`` where ``_chachapoly_viper`` cannot
load (and the path CPython runs). Kept apart so that a board with the native
emitter never loads it into RAM.

Invariants: the same as ``chacha20poly1305``'s. The tag is checked, by OR of
XORs, before any plaintext is written; ranges are checked first. Unlike the
viper path this allocates per call. The nonce's first word, ``_state[13]``,
stays zero (Noise section 12.3); only ``tests/mp_primitive_hooks.py`` sets it, for the
RFC 8439 vectors' 12-byte nonces.
"""

from device.errors import AuthError

TAG_BYTES = 16

_M32 = 0xFFFFFFFF
_P1305 = (1 << 130) - 5


def _rotl(v, n):
    return ((v << n) & _M32) | (v >> (32 - n))


def _qr(x, a, b, c, d):
    x[a] = (x[a] + x[b]) & _M32
    x[d] = _rotl(x[d] ^ x[a], 16)
    x[c] = (x[c] + x[d]) & _M32
    x[b] = _rotl(x[b] ^ x[c], 12)
    x[a] = (x[a] + x[b]) & _M32
    x[d] = _rotl(x[d] ^ x[a], 8)
    x[c] = (x[c] + x[d]) & _M32
    x[b] = _rotl(x[b] ^ x[c], 7)


def _le32(b, o):
    return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)


class ChaCha20Poly1305:
    """ChaCha20-Poly1305 on Python integers and bytearrays."""

    def __init__(self, key, check):
        # ``check`` is the facade's range check (``chacha20poly1305._check``),
        # passed in because this fallback must not import its facade.
        self._check = check
        self._state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
        self._state += [_le32(key, 4 * i) for i in range(8)] + [0, 0, 0, 0]
        self._lens = bytearray(16)
        self._ks = bytearray(64)

    def encrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off):
        """Encrypt ``src[src_off:src_off+src_len]`` under the Noise nonce
        ``nonce`` (uint64) and ``ad[:ad_len]``; write ciphertext || tag at
        ``dst[dst_off:]``; return ``src_len + 16``. Raises ``LocalError`` for
        a bad range or nonce, ``BufferTooSmall`` if ``dst`` is too short."""
        self._check(nonce, ad, ad_len, src, src_off, src_len, dst, dst_off, src_len + TAG_BYTES)
        self._set_nonce(nonce)
        self._start()  # Poly1305 key from block 0; counter is now 1
        self._xor(src, src_off, dst, dst_off, src_len)
        self._mac(ad, ad_len, dst, dst_off, src_len)
        tag = self._tag_bytes()
        for i in range(TAG_BYTES):
            dst[dst_off + src_len + i] = tag[i]
        return src_len + TAG_BYTES

    def decrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off):
        """Verify and decrypt ``src[src_off:src_off+src_len]`` (ciphertext ||
        tag); write the plaintext at ``dst[dst_off:]`` and return
        ``src_len - 16``. Raises ``AuthError``, writing nothing, if the tag is
        wrong or ``src_len < 16``; ``LocalError``/``BufferTooSmall`` for bad
        ranges."""
        if src_len < TAG_BYTES:
            raise AuthError
        ct_len = src_len - TAG_BYTES
        self._check(nonce, ad, ad_len, src, src_off, src_len, dst, dst_off, ct_len)
        self._set_nonce(nonce)
        self._start()
        self._mac(ad, ad_len, src, src_off, ct_len)
        tag = self._tag_bytes()
        acc = 0
        for i in range(TAG_BYTES):
            acc |= src[src_off + ct_len + i] ^ tag[i]
        if acc:
            raise AuthError
        self._xor(src, src_off, dst, dst_off, ct_len)
        return ct_len

    def _mac(self, ad, ad_len, ct, ct_off, ct_len):
        # RFC 8439 section 2.8: ad || pad16 || ct || pad16 || le64(ad_len) || le64(ct_len)
        if ad_len:
            self._poly_update(ad, 0, ad_len)
        if ct_len:
            self._poly_update(ct, ct_off, ct_len)
        lens = self._lens
        for i in range(4):
            lens[i] = (ad_len >> (8 * i)) & 0xFF
            lens[8 + i] = (ct_len >> (8 * i)) & 0xFF
        self._poly_update(lens, 0, 16)

    def _set_nonce(self, nonce):
        self._state[14] = nonce & _M32
        self._state[15] = nonce >> 32

    def _block(self):
        """Keystream block for the current counter into self._ks; counter += 1."""
        s = self._state
        x = list(s)
        for _ in range(10):
            _qr(x, 0, 4, 8, 12)
            _qr(x, 1, 5, 9, 13)
            _qr(x, 2, 6, 10, 14)
            _qr(x, 3, 7, 11, 15)
            _qr(x, 0, 5, 10, 15)
            _qr(x, 1, 6, 11, 12)
            _qr(x, 2, 7, 8, 13)
            _qr(x, 3, 4, 9, 14)
        ks = self._ks
        for i in range(16):
            v = (x[i] + s[i]) & _M32
            ks[4 * i] = v & 0xFF
            ks[4 * i + 1] = (v >> 8) & 0xFF
            ks[4 * i + 2] = (v >> 16) & 0xFF
            ks[4 * i + 3] = v >> 24
        s[12] = (s[12] + 1) & _M32

    def _start(self):
        self._state[12] = 0
        self._block()
        pk = self._ks
        self._r = int.from_bytes(bytes(pk[0:16]), "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
        self._s = int.from_bytes(bytes(pk[16:32]), "little")
        self._h = 0

    def _xor(self, src, src_off, dst, dst_off, n):
        ks = self._ks
        done = 0
        while done < n:
            self._block()
            m = min(64, n - done)
            for i in range(m):
                dst[dst_off + done + i] = src[src_off + done + i] ^ ks[i]
            done += m

    def _poly_update(self, m, off, n, pad=True):
        h, r = self._h, self._r
        end = off + n
        while off < end:
            chunk = bytes(m[off : min(off + 16, end)])
            if pad or len(chunk) == 16:
                v = int.from_bytes(chunk, "little") + (1 << 128)
            else:
                v = int.from_bytes(chunk, "little") + (1 << (8 * len(chunk)))
            h = (h + v) * r % _P1305
            off += 16
        self._h = h

    def _tag_bytes(self):
        return ((self._h + self._s) & ((1 << 128) - 1)).to_bytes(16, "little")
