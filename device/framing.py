"""Serial framing: COBS frames with a CRC-16, delimited by zero bytes.

Sans-I/O and in the MicroPython subset: the same file frames envelopes on a
microcontroller's UART and on the gateway's pyserial link. Wire format
(docs/protocol.md, "Serial framing")::

    frame = 0x00 || COBS(payload || crc16_be(payload)) || 0x00

``crc16`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no
final xor; check value 0x29B1 for ``b"123456789"``), the same function as
CPython's ``binascii.crc_hqx(data, 0xFFFF)``. It finds line errors; it is not
a security check (the envelope inside is authenticated end to end). CRC-16
rather than CRC-32 because its values stay small ints on 32-bit MicroPython
ports (no heap allocation per byte), and poly 0x1021 detects every error of
up to 3 flipped bits in frames of up to 4095 bytes.

Invariants:
- Rule 1: the decoder never raises on remote bytes. A frame that fails the
  CRC, exceeds ``FRAME_PAYLOAD_MAX_BYTES``, is not valid COBS or ends before
  its COBS block does is dropped and counted by reason, and decoding
  resumes at the next 0x00; the frame after it is delivered intact.
- Rule 2: only a frame whose CRC matches is delivered, and it is delivered
  exactly as encoded.
- Rule 3: buffers are allocated once, in ``__init__``; ``feed_into`` and
  ``encode_into`` allocate nothing per byte or per frame.
- Rule 4: ``LocalError`` (from ``device.errors``) is the only exception the
  module raises, and only for a caller's mistake (payload too large, output
  buffer too small, bad argument).
"""

try:
    from micropython import const
except ImportError:
    const = lambda x: x  # noqa: E731

from device.errors import BufferTooSmall, LocalError, MessageTooLarge

CRC_BYTES = const(2)
# Largest payload a frame carries: one whole envelope, equal to
# envelope.ENVELOPE_MAX_BYTES (tests/device/test_framing.py keeps them equal; not
# imported, so the gateway's framing needs no envelope code). A bound so
# that a receiver needs one fixed buffer.
FRAME_PAYLOAD_MAX_BYTES = const(1200)
# COBS adds one code byte per started run of 254 non-zero bytes:
# n + n // 254 + 1 for n = 1200 + 2 (payload + CRC) is 1202 + 4 + 1 = 1207;
# plus the leading and the trailing 0x00 delimiter.
FRAME_MAX_BYTES = const(1200 + 2 + (1200 + 2) // 254 + 1 + 2)  # 1209

# Drop reasons (index into FrameDecoder.drops).
DROP_CRC = const(0)  # COBS decoded, CRC mismatch
DROP_OVERSIZE = const(1)  # more than FRAME_PAYLOAD_MAX_BYTES + 2 decoded bytes
DROP_COBS = const(2)  # a code byte points past the end of the frame
DROP_TRUNCATED = const(3)  # fewer than the 2 CRC bytes, or cut off by reset()
DROP_REASONS = ("crc", "oversize", "cobs", "truncated")


def _make_table():
    t = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t.append(c & 0xFFFF)
    return tuple(t)


_TABLE = _make_table()


try:
    # CPython's C implementation of the same CRC; MicroPython lacks it.
    from binascii import crc_hqx as _crc_hqx
except ImportError:
    _crc_hqx = None


def crc16_into(buf, n, crc=0xFFFF):
    """CRC-16/CCITT-FALSE of ``buf[:n]``, continuing from ``crc``. Returns
    an int in 0..0xFFFF. Uses ``binascii.crc_hqx`` where it exists."""
    if _crc_hqx is not None:
        return _crc_hqx(memoryview(buf)[:n], crc)
    return crc16_py_into(buf, n, crc)


def crc16_py_into(buf, n, crc=0xFFFF):
    """The table-driven pure-Python CRC (what MicroPython runs)."""
    t = _TABLE
    for i in range(n):
        crc = ((crc << 8) & 0xFFFF) ^ t[((crc >> 8) ^ buf[i]) & 0xFF]
    return crc


def crc16(data):
    """CRC-16/CCITT-FALSE of all of ``data``."""
    return crc16_into(data, len(data))


def encoded_len(n):
    """Bytes on the wire for an ``n``-byte payload, delimiter included."""
    m = n + CRC_BYTES
    return m + m // 254 + 1 + 2


def encode_into(payload, n, out):
    """Frame ``payload[:n]`` into ``out`` and return the byte count.

    ``out`` needs ``encoded_len(n)`` bytes (at most ``FRAME_MAX_BYTES``)
    and must not overlap ``payload[:n]``.
    Raises ``MessageTooLarge`` if ``n > FRAME_PAYLOAD_MAX_BYTES`` and
    ``BufferTooSmall`` if ``out`` is too short; ``out`` is then untouched.
    """
    if n < 0 or n > len(payload):
        raise LocalError("n out of range")
    if n > FRAME_PAYLOAD_MAX_BYTES:
        raise MessageTooLarge("frame payload too large")
    if len(out) < encoded_len(n):
        raise BufferTooSmall("frame output buffer too small")
    crc = crc16_into(payload, n)
    # A leading delimiter ends any line noise before this frame, so noise
    # between frames costs no intact frame.
    out[0] = 0
    code_at = 1  # where the current block's code byte goes
    code = 1  # 1 + number of data bytes in the current block
    o = 2
    # The CRC bytes go through the same loop as the payload (i >= n).
    for i in range(n + CRC_BYTES):
        if i < n:
            b = payload[i]
        elif i == n:
            b = crc >> 8
        else:
            b = crc & 0xFF
        if b == 0:
            out[code_at] = code
            code_at = o
            o += 1
            code = 1
        else:
            out[o] = b
            o += 1
            code += 1
            if code == 0xFF:
                # A full block of 254 non-zero bytes: no implied zero.
                out[code_at] = code
                code_at = o
                o += 1
                code = 1
    out[code_at] = code
    out[o] = 0
    return o + 1


def encode(payload):
    """Frame ``payload`` and return the wire bytes (allocates; see
    ``encode_into`` for the errors)."""
    out = bytearray(encoded_len(len(payload)))
    n = encode_into(payload, len(payload), out)
    return bytes(out[:n])


class FrameDecoder:
    """Streaming decoder: bytes in, complete intact payloads out.

    ``feed_into(data, n, on_frame)`` calls ``on_frame(buf, length)`` for each
    intact frame; ``buf[:length]`` is the payload, valid only until
    ``on_frame`` returns (the buffer is reused). ``feed(data)`` returns a
    list of ``bytes`` payloads instead (allocates). Drops are counted in
    ``drops[DROP_*]`` and ``delivered`` counts frames handed out.

    Bytes before the first 0x00 may be the tail of a frame that started
    before we listened; they are dropped and counted like any garbage.
    Empty frames (consecutive 0x00) are idle fill, not drops.
    """

    def __init__(self, max_payload=FRAME_PAYLOAD_MAX_BYTES):
        if max_payload < 0 or max_payload > FRAME_PAYLOAD_MAX_BYTES:
            raise LocalError("max_payload out of range")
        self.max_payload = max_payload
        self._cap = max_payload + CRC_BYTES
        self._buf = memoryview(bytearray(self._cap))
        self.drops = [0, 0, 0, 0]
        self.delivered = 0
        self._frames = None  # list used by feed()
        self._append = self._collect  # bound once: no allocation per frame
        self._reset()

    def _reset(self):
        self._n = 0  # decoded bytes in _buf
        self._left = 0  # data bytes left in the current COBS block
        self._code = 0  # current block's code byte; 0 = no block yet
        self._bad = -1  # drop reason already decided for this frame, or -1

    def dropped(self):
        """Total frames dropped, all reasons."""
        d = self.drops
        return d[0] + d[1] + d[2] + d[3]

    def drop_counts(self):
        """``{reason: count}`` for logs and metrics."""
        return {DROP_REASONS[i]: self.drops[i] for i in range(4)}

    def _end(self, on_frame):
        # A 0x00 arrived: the frame between the last delimiter and here ends.
        n = self._n
        bad = self._bad
        if bad < 0:
            if self._code == 0:
                return  # empty frame: idle fill or a resync delimiter
            if self._left != 0:
                bad = DROP_COBS
            elif n < CRC_BYTES:
                bad = DROP_TRUNCATED
            else:
                buf = self._buf
                crc = crc16_into(buf, n - CRC_BYTES)
                if (buf[n - 2] << 8 | buf[n - 1]) != crc:
                    bad = DROP_CRC
        if bad >= 0:
            self.drops[bad] += 1
            return
        self.delivered += 1
        on_frame(self._buf, n - CRC_BYTES)

    def feed_into(self, data, n, on_frame):
        """Decode ``data[:n]``; call ``on_frame(buf, length)`` per intact
        frame. Never raises on any content of ``data``; raises
        ``LocalError`` only if ``n`` is out of range. An exception raised by
        ``on_frame`` propagates and the rest of ``data`` is discarded; the
        decoder stays consistent (the next frame after a 0x00 decodes)."""
        if n < 0 or n > len(data):
            raise LocalError("n out of range")
        buf = self._buf
        cap = self._cap
        # State in locals for speed (attribute access per byte is the cost
        # on both interpreters); written back before _end and at the end.
        k = self._n
        left = self._left
        code = self._code
        bad = self._bad
        for i in range(n):
            b = data[i]
            if b == 0:
                self._n = k
                self._left = left
                self._code = code
                self._bad = bad
                try:
                    self._end(on_frame)
                finally:
                    self._reset()
                k = 0
                left = 0
                code = 0
                bad = -1
                continue
            if bad >= 0:
                continue  # skip to the next delimiter
            if left == 0:
                # A code byte. A block shorter than 254 data bytes that is
                # followed by another block stood for a zero byte.
                if code != 0 and code != 0xFF:
                    if k >= cap:
                        bad = DROP_OVERSIZE
                        continue
                    buf[k] = 0
                    k += 1
                code = b
                left = b - 1
            else:
                if k >= cap:
                    bad = DROP_OVERSIZE
                    continue
                buf[k] = b
                k += 1
                left -= 1
        self._n = k
        self._left = left
        self._code = code
        self._bad = bad

    def _collect(self, buf, n):
        self._frames.append(bytes(buf[:n]))

    def feed(self, data):
        """Decode all of ``data`` and return the intact payloads as a list of
        ``bytes`` (allocates). Never raises on any content of ``data``."""
        self._frames = []
        try:
            self.feed_into(data, len(data), self._append)
            return self._frames
        finally:
            self._frames = None

    def reset(self):
        """Discard a partly received frame (the link went away mid-frame);
        it counts as ``truncated`` if any of it had arrived."""
        if self._code != 0 and self._bad < 0:
            self.drops[DROP_TRUNCATED] += 1
        elif self._bad >= 0:
            self.drops[self._bad] += 1
        self._reset()

    def pending(self):
        """Bytes of an unfinished frame held since the last delimiter."""
        return self._n
