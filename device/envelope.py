"""The device-side envelope codec: canonical CBOR arrays, no cbor2 needed.

Wire format: docs/protocol.md section "Envelope" (CDDL there).

Invariants:
- Rule 1: only the four envelope shapes are accepted, in canonical form
  (RFC 8949 section 4.2.1: shortest integer and length encodings, definite
  lengths). Anything else raises ``DecodeError``; decoding never raises
  anything else and never reads past ``n``.
- Rule 2: the routing header is authenticated verbatim: for ``data`` the
  associated data is every byte before the ciphertext (``msg_off``); for the
  handshake the prologue is ``PROLOGUE`` followed by every byte of the hs1
  envelope before the Noise message. Re-encoding is never needed, so a relay
  that changes any header byte breaks authentication.
- Rule 3: ``Envelope.decode_into`` fills the object's fields (offsets into the
  caller's buffer, not copies) and allocates nothing for ids or messages.
"""

from device import errors

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

VERSION = const(1)
HS1 = const(0)
HS2 = const(1)
DATA = const(2)
HINT = const(3)
HEAD_HS1 = const(4)  # VERSION << 2 | HS1
HEAD_HS2 = const(5)
HEAD_DATA = const(6)
HEAD_HINT = const(7)

HINT_UNKNOWN_SESSION = const(0)
HINT_SESSION_EXPIRED = const(1)
HINT_REFUSED = const(2)

ID_MAX_BYTES = const(16)
SID_MAX = 0xFFFFFFFF
NONCE_MAX = 0xFFFFFFFFFFFFFFFE
# Largest header: array(1) + head(1) + 2 ids (1 + 16 each) + sid (1 + 4)
# + nonce (1 + 8) + bstr length of the message (3).
HEADER_MAX_BYTES = const(1 + 1 + 17 + 17 + 5 + 9 + 3)
# Largest message: hs1 = e (32) + counter (4) + payload (1024) + tag (16).
ENVELOPE_MAX_BYTES = const(1200)  # >= HEADER_MAX_BYTES + 1076, rounded up

PROLOGUE = b"moteseal/v1"


def envelope_limit(max_payload):
    """The largest envelope a session with this plaintext bound can produce:
    header + e (32) + counter (4) + payload + tag (16); the default, with a
    1024-byte payload, is within ``ENVELOPE_MAX_BYTES``."""
    n = HEADER_MAX_BYTES + 32 + 4 + max_payload + 16
    return n if n > ENVELOPE_MAX_BYTES else ENVELOPE_MAX_BYTES


def _uint_size(v):
    if v < 24:
        return 1
    if v < 0x100:
        return 2
    if v < 0x10000:
        return 3
    if v < 0x100000000:
        return 5
    return 9


def put_head(buf, off, major, v):
    """Writes a CBOR initial byte and argument in shortest form (RFC 8949
    section 3); returns the offset after it. Allocates nothing."""
    m = major << 5
    if v < 24:
        buf[off] = m | v
        return off + 1
    if v < 0x100:
        buf[off] = m | 24
        buf[off + 1] = v
        return off + 2
    if v < 0x10000:
        buf[off] = m | 25
        size = 2
    elif v < 0x100000000:
        buf[off] = m | 26
        size = 4
    else:
        buf[off] = m | 27
        size = 8
    i = size
    while i > 0:
        buf[off + i] = v & 0xFF
        v >>= 8
        i -= 1
    return off + 1 + size


def _put_id(buf, off, ident):
    n = len(ident)
    if n < 1 or n > ID_MAX_BYTES:
        raise errors.LocalError("ids are 1..16 bytes")
    buf[off] = 0x40 | n
    off += 1
    for i in range(n):
        buf[off + i] = ident[i]
    return off + n


def header_size(src, dst, sid, nonce, msg_len):
    """Bytes ``encode_header_into`` writes (``nonce`` < 0: not a data envelope)."""
    n = 2 + 2 + len(src) + len(dst) + _uint_size(sid) + _uint_size(msg_len)
    if nonce >= 0:
        n += _uint_size(nonce)
    return n


def encode_header_into(buf, head, src, dst, sid, nonce, msg_len):
    """Writes an envelope up to (not including) its last item's bytes: the
    array head, the fields, and the bstr head of a ``msg_len``-byte message
    (for a hint, ``msg_len`` is the reason and no bytes follow). Returns the
    offset at which the message bytes go, which is also the associated data
    length for ``data``. Raises ``LocalError`` for bad fields,
    ``BufferTooSmall``."""
    if sid < 0 or sid > SID_MAX or msg_len < 0:
        raise errors.LocalError("bad envelope field")
    if head == HEAD_DATA and (nonce < 0 or nonce > NONCE_MAX):
        raise errors.LocalError("bad nonce")
    if len(buf) < header_size(src, dst, sid, nonce if head == HEAD_DATA else -1, msg_len):
        raise errors.BufferTooSmall("envelope buffer too small")
    buf[0] = 0x86 if head == HEAD_DATA else 0x85  # array(6) or array(5)
    buf[1] = head
    off = _put_id(buf, 2, src)
    off = _put_id(buf, off, dst)
    off = put_head(buf, off, 0, sid)
    if head == HEAD_DATA:
        off = put_head(buf, off, 0, nonce)
    return put_head(buf, off, 0 if head == HEAD_HINT else 2, msg_len)


def encode(head, src, dst, sid, msg, nonce=-1):
    """Allocating convenience: a whole envelope as bytes (``msg`` is bytes, or
    for a hint the reason number)."""
    if head == HEAD_HINT:
        buf = bytearray(header_size(src, dst, sid, -1, msg))
        encode_header_into(buf, head, src, dst, sid, -1, msg)
        return bytes(buf)
    size = header_size(src, dst, sid, nonce if head == HEAD_DATA else -1, len(msg))
    buf = bytearray(size + len(msg))
    off = encode_header_into(buf, head, src, dst, sid, nonce, len(msg))
    buf[off:] = msg
    return bytes(buf)


class Envelope:
    """A decoded envelope: fields, and offsets into the decoded buffer.
    Reused for every decode, so not shareable between threads."""

    def __init__(self):
        self.head = 0
        self.type = 0
        self.src_off = self.src_len = 0
        self.dst_off = self.dst_len = 0
        self.sid = 0
        self.nonce = -1
        self.reason = -1
        self.msg_off = self.msg_len = 0
        self.buf = None

    def decode_into(self, buf, n, limit=ENVELOPE_MAX_BYTES):
        """Decodes ``buf[:n]`` into this object. Raises ``DecodeError`` naming
        what is wrong (truncated, oversized, not canonical, unknown version,
        bad id, trailing bytes). Fields are undefined after an error."""
        if n > limit:
            raise errors.DecodeError("envelope oversized")
        if n > len(buf) or n < 2:
            raise errors.DecodeError("envelope truncated")
        first = buf[0]
        head = buf[1]
        if head > 23 or (head >> 2) != VERSION:
            raise errors.DecodeError("unknown envelope version")
        typ = head & 3
        if first != (0x86 if typ == DATA else 0x85):
            raise errors.DecodeError("wrong array or item count")
        self.head = head
        self.type = typ
        off = self._id(buf, 2, n)
        self.src_off, self.src_len = off - self._v, self._v
        off = self._id(buf, off, n)
        self.dst_off, self.dst_len = off - self._v, self._v
        off = self._uint(buf, off, n, 0)
        self.sid = self._v
        if self._v > SID_MAX:
            raise errors.DecodeError("sid or nonce out of range")
        self.nonce = -1
        self.reason = -1
        if typ == DATA:
            off = self._uint(buf, off, n, 0)
            if self._v > NONCE_MAX:
                raise errors.DecodeError("sid or nonce out of range")
            self.nonce = self._v
        if typ == HINT:
            off = self._uint(buf, off, n, 0)
            self.reason = self._v
            self.msg_off = off
            self.msg_len = 0
        else:
            off = self._uint(buf, off, n, 2)
            self.msg_off = off
            self.msg_len = self._v
            off += self._v
        if off != n:
            raise errors.DecodeError("envelope truncated" if off > n
                                     else "trailing bytes after envelope")
        self.buf = buf
        return self

    def _uint(self, buf, off, n, major):
        # Reads a canonical head of the given major type; value in self._v.
        if off >= n:
            raise errors.DecodeError("envelope truncated")
        b = buf[off]
        ai = b & 31
        if b >> 5 != major or ai > 27:
            raise errors.DecodeError("unexpected CBOR item")
        if ai < 24:
            self._v = ai
            return off + 1
        size = 1 << (ai - 24)
        if off + 1 + size > n:
            raise errors.DecodeError("envelope truncated")
        v = 0
        for i in range(size):
            v = (v << 8) | buf[off + 1 + i]
        if (size == 1 and v < 24) or (size > 1 and v < (1 << (4 * size))):
            raise errors.DecodeError("non-canonical CBOR integer")
        self._v = v
        return off + 1 + size

    def _id(self, buf, off, n):
        off = self._uint(buf, off, n, 2)
        if self._v < 1 or self._v > ID_MAX_BYTES:
            raise errors.DecodeError("ids are 1..16 bytes")
        if off + self._v > n:
            raise errors.DecodeError("envelope truncated")
        return off + self._v  # self._v is still the id's length

    # Allocating accessors (CPython side, tests, logs).
    @property
    def src(self):
        return bytes(self.buf[self.src_off:self.src_off + self.src_len])

    @property
    def dst(self):
        return bytes(self.buf[self.dst_off:self.dst_off + self.dst_len])

    @property
    def msg(self):
        return bytes(self.buf[self.msg_off:self.msg_off + self.msg_len])

    def src_is(self, ident):
        return self._same(self.src_off, self.src_len, ident)

    def dst_is(self, ident):
        return self._same(self.dst_off, self.dst_len, ident)

    def _same(self, off, n, ident):
        # Compares in place: no slice of the buffer is allocated (Rule 3).
        buf = self.buf
        if n != len(ident):
            return False
        for i in range(n):
            if buf[off + i] != ident[i]:
                return False
        return True


def decode(data, limit=ENVELOPE_MAX_BYTES):
    """Allocating convenience: ``Envelope().decode_into(data, len(data))``."""
    return Envelope().decode_into(data, len(data), limit)
