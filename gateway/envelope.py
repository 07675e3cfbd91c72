"""The outer envelope as the gateway sees it: routing header only (cbor2).

The gateway reads ``head``, ``src``, ``dst`` and ``sid`` to route and checks
the shape of the rest; it never looks inside ``msg`` or ``ct`` and never
re-encodes: the relay forwards the bytes it received, because the peer
authenticates the header verbatim (docs/protocol.md, "Envelope").

Invariants:
- ``read_header`` returns a ``Header`` or raises ``Rejected`` with one of
  ``OVERSIZE``, ``MALFORMED`` or ``UNKNOWN_VERSION``; nothing else escapes,
  whatever the bytes.
- Accepted input is canonical CBOR (RFC 8949 section 4.2.1): the bytes equal
  cbor2's canonical encoding of what they decode to, so there is exactly one
  accepted encoding of each header (no trailing bytes, no indefinite lengths,
  no tags, no long-form integers).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import cbor2

__all__ = [
    "VERSION",
    "HS1",
    "HS2",
    "DATA",
    "HINT",
    "KIND_NAMES",
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "OVERSIZE",
    "MALFORMED",
    "UNKNOWN_VERSION",
    "Header",
    "Rejected",
    "read_header",
    "valid_id",
]

VERSION = 1
HS1, HS2, DATA, HINT = 0, 1, 2, 3  # head & 3
KIND_NAMES = ("hs1", "hs2", "data", "hint")

# One envelope fits an MQTT packet a constrained device can buffer and a
# serial frame; telemetry is tens of bytes, a handshake message under 200.
DEFAULT_MAX_ENVELOPE_BYTES = 1200

OVERSIZE = "oversize"
MALFORMED = "malformed"
UNKNOWN_VERSION = "unknown_version"

_ID_MAX_BYTES = 16
_SID_MAX = 0xFFFFFFFF
_NONCE_MAX = 0xFFFFFFFFFFFFFFFE
_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,16}\Z")
# Definite-length arrays of 1..23 items start with one byte 0x81..0x97; an
# envelope of any version is such an array.
_ARRAY_FIRST = range(0x81, 0x98)


class Header(NamedTuple):
    """The routing header of one envelope."""

    kind: int  # HS1, HS2, DATA or HINT
    src: str
    dst: str
    sid: int


class Rejected(Exception):
    """An envelope the gateway drops; ``reason`` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def valid_id(raw: object) -> bool:
    """True for a bstr id of 1..16 ASCII ``[A-Za-z0-9._-]``."""
    return type(raw) is bytes and _ID_RE.match(raw) is not None


def _uint(x: object, limit: int) -> bool:
    # bool is an int subclass; CBOR true/false are not integers here.
    return type(x) is int and 0 <= x <= limit


def _flat(data: bytes) -> bool:
    """True if ``data`` is one definite array of flat items (integers, byte or
    text strings, simple values) and nothing after it. Linear in
    ``len(data)``. cbor2 only ever sees such arrays: canonical re-encoding
    of nested maps costs cbor2 time exponential in the depth (map keys are
    sorted by their encodings at every level; a fuzzer found a 104-byte
    envelope that took minutes), and no envelope of any version nests."""
    n = len(data)
    off = 1
    for _ in range(data[0] & 0x1F):
        if off >= n:
            return False
        b = data[off]
        major, ai = b >> 5, b & 0x1F
        if major in (4, 5, 6) or ai > 27:  # array, map, tag; reserved or indefinite
            return False
        off += 1
        value = ai
        if ai >= 24:
            size = 1 << (ai - 24)
            if off + size > n:
                return False
            value = int.from_bytes(data[off:off + size], "big")
            off += size
        if major in (2, 3):  # byte or text string: skip its contents
            off += value
    return off == n


def read_header(data: bytes, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> Header:
    """Validate an envelope and return its routing header.

    Raises ``Rejected(OVERSIZE)`` above ``max_bytes``, ``Rejected(UNKNOWN_VERSION)``
    for a well-formed array of flat items whose head names another version, and
    ``Rejected(MALFORMED)`` for anything else that is not a canonical v1
    envelope (docs/protocol.md CDDL).
    """
    if len(data) > max_bytes:
        raise Rejected(OVERSIZE)
    if not data or data[0] not in _ARRAY_FIRST or not _flat(data):
        raise Rejected(MALFORMED)
    try:
        items = cbor2.loads(data)
        canonical = cbor2.dumps(items, canonical=True) == data
    except Exception:  # cbor2 raises several types on hostile input
        raise Rejected(MALFORMED) from None
    if not canonical or type(items) is not list:
        raise Rejected(MALFORMED)
    head = items[0]
    if not _uint(head, 0xFF):
        raise Rejected(MALFORMED)
    if head >> 2 != VERSION:
        raise Rejected(UNKNOWN_VERSION)
    kind = head & 3
    if len(items) != (6 if kind == DATA else 5):
        raise Rejected(MALFORMED)
    src, dst, sid = items[1], items[2], items[3]
    if not (valid_id(src) and valid_id(dst) and _uint(sid, _SID_MAX)):
        raise Rejected(MALFORMED)
    if kind == DATA:
        if not (_uint(items[4], _NONCE_MAX) and type(items[5]) is bytes):
            raise Rejected(MALFORMED)
    elif kind == HINT:
        if not _uint(items[4], 0xFFFFFFFFFFFFFFFF):
            raise Rejected(MALFORMED)
    elif type(items[4]) is not bytes:
        raise Rejected(MALFORMED)
    return Header(kind, src.decode(), dst.decode(), sid)
