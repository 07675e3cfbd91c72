"""Padding plaintexts to size buckets, inside the caller's buffer.

Wire form (docs/protocol.md, "Padding"): ISO/IEC 7816-4, the padding of
ISO/IEC 9797-1 method 2: the plaintext, then one ``0x80`` byte, then zero
bytes up to the bucket size. Chosen over a length prefix because:
- it is unambiguous for every plaintext (the last non-zero byte is the
  mark; what precedes it is the plaintext, whatever its bytes), costs one
  byte at least and needs no field whose width depends on the bucket;
- the receiver needs no bucket list to strip it: only the sender chooses
  buckets, so per-kind and per-message buckets need no negotiation, and
  both ends agree only on *whether* a device pads (its bundle and registry
  entry, ``device/bundle.py`` field ``pad``).

Invariants:
- Rule 1: padding is inside the AEAD: it is stripped only after the tag
  verified, so a malformed padding comes from a key holder, never from the
  wire, and checking it is no padding oracle (the check cannot be reached
  with bytes that did not authenticate).
- Rule 2: a padded plaintext that has no ``0x80`` mark after its trailing
  zeros is refused with ``DecodeError("malformed padding")`` and nothing
  changes (``Transport.decrypt_into`` strips before it commits the nonce).
- Rule 3: ``pad_into``, ``padded_size`` and ``unpad_len`` allocate
  nothing (tests/micropython/test_mp_padding.py runs them under
  ``heap_lock``).
"""

from device.errors import BufferTooSmall, DecodeError, LocalError

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

PAD_MARK = const(0x80)
PAD_MIN_BYTES = const(1)  # the mark: a padded plaintext is one byte longer at least
DEFAULT_BUCKETS = (32, 64, 128, 256)
MAX_BUCKETS = const(8)  # a few sizes are all a sensor has; bounds the bundle field


def check_buckets(buckets):
    """Raises ``LocalError`` unless ``buckets`` is 1..8 strictly rising
    sizes of 1..65535 bytes."""
    if not 1 <= len(buckets) <= MAX_BUCKETS:
        raise LocalError("1..8 padding buckets")
    prev = 0
    for b in buckets:
        if not isinstance(b, int) or b <= prev or b > 65535:
            raise LocalError("padding buckets rise strictly, 1..65535 bytes")
        prev = b


def padded_size(n, buckets):
    """The padded length of an ``n``-byte plaintext: the smallest bucket
    that holds ``n + 1`` bytes, else ``n + 1`` rounded up to a multiple of
    the largest bucket (so a long message still hides its exact size)."""
    need = n + PAD_MIN_BYTES
    for b in buckets:
        if need <= b:
            return b
    top = buckets[len(buckets) - 1]
    return (need + top - 1) // top * top


def pad_into(buf, off, n, size):
    """Pads the ``n`` plaintext bytes at ``buf[off:]`` to ``size`` bytes in
    place: the mark, then zeros. Returns ``size``. Raises ``BufferTooSmall``
    (a ``LocalError``) if ``buf`` cannot hold them."""
    if size < n + PAD_MIN_BYTES:
        raise LocalError("padded size below plaintext + mark")
    if off + size > len(buf):
        raise BufferTooSmall("buffer cannot hold the padding")
    buf[off + n] = PAD_MARK
    i = off + n + 1
    end = off + size
    while i < end:
        buf[i] = 0
        i += 1
    return size


def unpad_len(buf, off, size):
    """The plaintext length of the padded ``buf[off:off+size]`` (Rule 2).
    Raises ``DecodeError("malformed padding")`` if it has no mark after its
    trailing zeros (or is empty)."""
    i = off + size - 1
    while i >= off and buf[i] == 0:
        i -= 1
    if i < off or buf[i] != PAD_MARK:
        raise DecodeError("malformed padding")
    return i - off


class PadPolicy:
    """Which buckets each kind of message pads to, for a device that pads.

    Kinds: ``hs`` (message 1's 0-RTT payload and message 2's payload),
    ``up`` (device to peer data), ``down`` (peer to device data). Each
    defaults to ``buckets``; a caller may pass other buckets for one message
    (``send_into(..., buckets=...)``), e.g. 32 for readings and 256 for a
    status report. The receiver strips any padding whatever its bucket."""

    def __init__(self, buckets=DEFAULT_BUCKETS, hs=None, up=None, down=None):
        self.hs = tuple(hs or buckets)
        self.up = tuple(up or buckets)
        self.down = tuple(down or buckets)
        check_buckets(self.hs)
        check_buckets(self.up)
        check_buckets(self.down)

    def __repr__(self):
        return "PadPolicy(hs=%r, up=%r, down=%r)" % (self.hs, self.up, self.down)


def pad_bytes(payload, buckets):
    """Allocating convenience: ``payload`` padded to its bucket."""
    n = len(payload)
    size = padded_size(n, buckets)
    out = bytearray(size)
    out[:n] = payload
    pad_into(out, 0, n, size)
    return bytes(out)
