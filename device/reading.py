"""Readings: a CBOR map written field by field into a caller's buffer
(sans-I/O; CPython and MicroPython). The device application hands user code
a ``ReadingWriter`` over its fixed reading buffer (``read(w)``); the format
is ``reading`` in docs/protocol.md (CDDL).

Invariants:
- Rule 1: the writer allocates nothing (proved on the MicroPython unix port
  under ``micropython.heap_lock()``, tests/micropython/test_mp_reading.py)
  for int fields of small ints (|v| < 2**30 on 32-bit ports), bools, byte
  strings and ASCII text; keys are ASCII ``str`` or ``bytes``. A float
  field allocates nothing here either, but the float the caller passes is
  usually a heap object already (docs/micropython.md: use fixed-point ints).
- Rule 2: a field is written whole or not at one: a field that does not fit
  raises ``LocalError`` before a byte of it is written, and the map's
  count covers only whole fields. The writer is then poisoned: ``end``
  raises too, so a truncated reading is never sent.
- Rule 3: the map head is one byte (at most ``MAX_FIELDS`` entries) and a
  key's head is one byte (at most ``KEY_MAX_BYTES``), so the head can be
  reserved before the fields are known and filled in by ``end``.
- Rule 4: numbers use the shortest CBOR head (RFC 8949 section 4.2.1);
  floats are always 64-bit (major type 7, additional info 27), the one
  width every port can write exactly what it holds.
"""

import struct

from device.envelope import put_head
from device.errors import LocalError

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAX_FIELDS = const(23)  # Rule 3: map(0..23) has a one-byte head
KEY_MAX_BYTES = const(23)  # Rule 3: text(0..23) has a one-byte head
_FLOAT_BYTES = const(1 + 8)  # 0xFB + binary64


class ReadingWriter:
    """Writes one CBOR map into ``buf`` (a ``bytearray``), reused reading
    after reading: ``begin(off)``, then ``int``/``float``/``bool``/
    ``text``/``bytes`` fields, then ``end()``, which returns the offset
    after the map. Or ``raw(data)`` instead of fields: the payload is
    ``data`` itself, not a map.

    Every field method raises ``LocalError`` (Rule 2) for a key that is not
    ASCII or longer than ``KEY_MAX_BYTES``, more than ``MAX_FIELDS``
    fields, an integer out of range, a field that does not fit the buffer,
    or a field mixed with ``raw``.

    Memory: the device loads this class for its life, so it has few
    methods (each costs heap on the device, docs/micropython.md).
    """

    def __init__(self, buf):
        self.buf = buf
        self.begin(0)

    def begin(self, off=0):
        """Start a map at ``buf[off]``."""
        self._start = off
        self.off = off + 1  # the map head, filled in by end()
        self.count = 0
        self._bad = False  # Rule 2: a field failed; end() refuses
        self._raw = False

    def end(self):
        """Finish the map (or the raw payload); returns the offset after it.
        Raises ``LocalError`` if a field failed (Rule 2)."""
        if self._bad:
            raise LocalError("bad field")
        if not self._raw:
            self.buf[self._start] = 0xA0 | self.count
        return self.off

    def _key(self, key, need):
        # Checks the whole field (key + at most ``need`` value bytes) fits,
        # then writes the key (Rule 2). Returns the offset of the value.
        n = _ascii_len(key)
        off = self.off
        if (self._raw or self.count >= MAX_FIELDS or n < 0 or n > KEY_MAX_BYTES
                or off + 1 + n + need > len(self.buf)):
            self._bad = True
            raise LocalError("bad field")
        b = self.buf
        b[off] = 0x60 | n
        _copy(b, off + 1, key, n)
        self.count += 1
        return off + 1 + n

    def int(self, key, v):
        """An integer field, -2**64..2**64-1 (major type 0 or 1)."""
        major = 0
        if v < 0:
            major = 1
            v = -1 - v
        if v >> 64:
            self._bad = True
            raise LocalError("bad field")
        self.off = put_head(self.buf, self._key(key, 9), major, v)

    def float(self, key, v):
        """A float field, as a 64-bit CBOR float (Rule 4)."""
        off = self._key(key, _FLOAT_BYTES)
        self.buf[off] = 0xFB
        struct.pack_into(">d", self.buf, off + 1, v)
        self.off = off + _FLOAT_BYTES

    def bool(self, key, v):
        off = self._key(key, 1)
        self.buf[off] = 0xF5 if v else 0xF4
        self.off = off + 1

    def text(self, key, s):
        """A text field: ASCII ``str`` without allocation, other ``str``
        encoded to UTF-8 first (which allocates)."""
        n = _ascii_len(s)
        if n < 0:
            s = s.encode()
            n = len(s)
        self.bytes(key, s, n, 3)

    def bytes(self, key, data, n=-1, major=2):
        """A byte-string field: ``data[:n]`` (all of ``data`` if ``n`` < 0)."""
        if n < 0:
            n = len(data)
        off = put_head(self.buf, self._key(key, 9 + n), major, n)
        _copy(self.buf, off, data, n)
        self.off = off + n

    def raw(self, data, n=-1):
        """The whole payload is ``data[:n]`` (bytes-like), not a map."""
        if n < 0:
            n = len(data)
        if self.count or self._start + n > len(self.buf):
            self._bad = True
            raise LocalError("bad raw")
        _copy(self.buf, self._start, data, n)
        self._raw = True
        self.off = self._start + n


def _ascii_len(s):
    # The byte length of bytes-like ``s`` or of an ASCII str; -1 for a str
    # with a non-ASCII character. Indexing an ASCII str allocates nothing
    # on MicroPython (one-character strings are interned).
    n = len(s)
    if isinstance(s, str):
        for i in range(n):
            if ord(s[i]) > 127:
                return -1
    return n


def _copy(buf, off, s, n):
    # s[:n] into buf[off:] without a slice of s (a str is ASCII here).
    if isinstance(s, str):
        for i in range(n):
            buf[off + i] = ord(s[i])
    else:
        for i in range(n):
            buf[off + i] = s[i]
