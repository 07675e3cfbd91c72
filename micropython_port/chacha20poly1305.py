"""ChaCha20-Poly1305 AEAD (RFC 8439) for MicroPython, with a pure-Python
fallback that also runs on CPython.

Invariants:
- ``decrypt_into`` computes the tag over the ciphertext, compares it in
  constant time, and only then writes plaintext. On a mismatch (or
  ``src_len < 16``) it raises ``AuthError`` and ``dst`` is untouched.
- Once a ``ChaCha20Poly1305`` object exists, ``encrypt_into`` and
  ``decrypt_into`` on the fast path allocate nothing on the heap (a test runs
  them under ``micropython.heap_lock()``): state, keystream, Poly1305 key and
  padding block live in buffers made by ``__init__``, and offsets and lengths
  reach the fast code through those buffers, never through slices. (A
  nonce of 2**30 or more on a 32-bit port, or 2**62 on a 64-bit one, is a
  heap integer already; splitting it allocates.)
- Every offset and length is checked (``_check``) before fast code touches
  memory: neither viper nor the assembler does bounds checks.
- Fast paths, best first: on ARMv7-M/ARMv7E-M (Cortex-M3/M4/M7) inline
  Thumb-2 assembler (``_chachapoly_thumb``: UMULL/UMLAL Poly1305, the
  ChaCha20 state in registers; its docstring has the bounds and the
  constant-time argument), on ARMv6-M (Cortex-M0/M0+, RP2040) Thumb-1
  assembler (``_chachapoly_thumb1``, "asm_thumb1"), elsewhere viper
  (``_chachapoly_viper``, see its docstring). All take the same arguments
  and buffer layouts. ``PATH`` names the one in use ("asm_thumb",
  "asm_thumb1", "viper" or "python"); a fallback
  happens only when the interpreter cannot load a module, never on a
  MemoryError. Without either, and on CPython, the pure-Python class of
  ``_chachapoly_py`` runs (imported only then, so a board with a fast path
  never loads it into RAM).
- The raw RFC 8439 functions (block, stream, one-time authenticator, AEAD
  with a 12-byte nonce) and the switch to the fallback are test-only and
  live in ``tests/mp_primitive_hooks.py``, which the device never imports.
"""

from device.errors import AuthError, BufferTooSmall, LocalError

try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

import sys
from array import array

# The fast paths, best first; as in ``x25519``, only "this interpreter cannot
# load it" falls back (ImportError, SyntaxError, ValueError: see
# ``x25519._NO_EMITTER`` for which raises what), never MemoryError. The
# inline-Thumb module is tried only on ARMv7-M/ARMv7E-M (native arch 5..8 in
# ``sys.implementation._mpy``) or an unknown arch, where importing it is the
# probe: an ARMv6-M assembler refuses its push of r8-r11 (SyntaxError).
_NO_EMITTER = (ImportError, SyntaxError, ValueError)
_ARCH = getattr(sys.implementation, "_mpy", 0) >> 10

# The paths a build may ship: a flash build for one architecture turns off
# those it leaves out (moteseal/flash/features.py ``arch_flags``), and
# mpy-cross drops their tries.
_THUMB2 = const(1)
_THUMB1 = const(1)
_VIPER = const(1)


def _load():
    """(module, PATH) of the best fast path this interpreter can load: the
    Thumb-2 module on ARMv7-M (or an unknown arch), the Thumb-1 module on
    ARMv6-M (Cortex-M0/M0+, RP2040: arch 4), else viper, else (None,
    "python")."""
    if sys.implementation.name != "micropython":
        return None, "python"  # CPython
    if _THUMB2 and (_ARCH == 0 or 5 <= _ARCH <= 8):
        try:
            from micropython_port import _chachapoly_thumb as v

            return v, "asm_thumb"
        except _NO_EMITTER:
            pass
    if _THUMB1 and _ARCH == 4:
        try:
            from micropython_port import _chachapoly_thumb1 as v

            return v, "asm_thumb1"
        except _NO_EMITTER:
            pass
    if _VIPER:
        try:
            from micropython_port import _chachapoly_viper as v

            return v, "viper"
        except _NO_EMITTER:
            pass
    return None, "python"


_v, PATH = _load()

_TAG_BYTES = const(16)
# poly_update mode bits (see _chachapoly_viper): pad, length block, finish
_SEAL = const(1 | 2 | 4)
_OPEN = const(1 | 2 | 4 | 8)  # ... and compare with the received tag


def ChaCha20Poly1305(key):  # noqa: N802 - a factory standing in for a class
    """A cipher object for the 32-byte ``key`` with ``encrypt_into`` and
    ``decrypt_into`` (see ``device/backend.py``). Raises ``LocalError`` for a
    key of the wrong length."""
    if len(key) != 32:
        raise LocalError("key must be 32 bytes")
    if _v:
        return _Fast(key)
    from micropython_port import _chachapoly_py

    return _chachapoly_py.ChaCha20Poly1305(key, _check)


def _check(nonce, ad, ad_len, src, src_off, src_len, dst, dst_off, out_len):
    """Raise ``LocalError`` unless ``nonce`` is a uint64, ``dst`` is writable
    and every range lies inside its buffer; ``BufferTooSmall`` if only the
    ``out_len`` bytes at ``dst_off`` do not fit in ``dst``."""
    # One message for all of them: each distinct string costs heap.
    if (nonce < 0 or nonce >> 64 or ad_len < 0 or src_off < 0 or src_len < 0 or dst_off < 0
            or ad_len > len(ad) or src_off + src_len > len(src)
            # fast code would write into an immutable (possibly frozen, in-flash) object
            or dst.__class__ is bytes):
        raise LocalError("bad nonce, range or dst")
    if dst_off + out_len > len(dst):
        raise BufferTooSmall("dst too small")


class _Fast:
    """The fast paths (``_v``: asm_thumb or viper). ``encrypt_into`` and
    ``decrypt_into`` are written out flat (one Python-level call per fast
    step) because on MicroPython each Python-level call costs about as much
    as absorbing a Poly1305 block in viper (and 1.2-1.5 k instructions on a
    Cortex-M3, more than a ChaCha20 block in asm_thumb). The buffer layouts
    (``st``, ``ps``) are documented in ``_chachapoly_viper``; st[20] and
    st[21], the nonce's first 32 bits, stay zero (Noise section 12.3). Not
    to be shared between threads: a call uses the object's buffers."""

    def __init__(self, key):
        self._st = array("I", bytes(4 * 48))
        self._ps = array("I", bytes(4 * 32))
        self._blk = bytearray(16)
        _v.chacha_setkey(self._st, key)

    def encrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off):
        _check(nonce, ad, ad_len, src, src_off, src_len, dst, dst_off, src_len + _TAG_BYTES)
        st = self._st
        ps = self._ps
        st[22] = nonce & 0xFFFF
        st[23] = (nonce >> 16) & 0xFFFF
        st[24] = (nonce >> 32) & 0xFFFF
        st[25] = nonce >> 48
        # RFC 8439 section 2.8: the one-time key is block 0 (section 2.6), the
        # plaintext is XORed from block 1, and the tag covers AD || pad16 ||
        # ciphertext || pad16 || le64(len(AD)) || le64(len(ciphertext)).
        _v.chacha_polykey(st, ps)  # block 0 -> r, s; counter = 1
        st[16] = src_off
        st[17] = dst_off
        st[18] = src_len
        _v.chacha_xor(st, src, dst)
        ps[28] = dst_off
        ps[29] = src_len
        ps[30] = _SEAL  # the tag goes right after the ciphertext
        ps[31] = ad_len
        _v.poly_update(ps, ad, dst, self._blk)
        return src_len + _TAG_BYTES

    def decrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off):
        if src_len < _TAG_BYTES:
            raise AuthError
        ct_len = src_len - _TAG_BYTES
        _check(nonce, ad, ad_len, src, src_off, src_len, dst, dst_off, ct_len)
        st = self._st
        ps = self._ps
        st[22] = nonce & 0xFFFF
        st[23] = (nonce >> 16) & 0xFFFF
        st[24] = (nonce >> 32) & 0xFFFF
        st[25] = nonce >> 48
        _v.chacha_polykey(st, ps)
        # The tag first, over the ciphertext as received; plaintext only after.
        ps[28] = src_off
        ps[29] = ct_len
        ps[30] = _OPEN  # compare, in constant time, with the tag after it
        ps[31] = ad_len
        if _v.poly_update(ps, ad, src, self._blk):
            raise AuthError
        st[16] = src_off
        st[17] = dst_off
        st[18] = ct_len
        _v.chacha_xor(st, src, dst)
        return ct_len
