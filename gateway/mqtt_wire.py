"""The MQTT 5 packets the gateway's MQTT link (``gateway.mqtt``) needs, sans-I/O
(OASIS MQTT 5.0), and their MQTT 3.1.1 forms (``version=4``: the same packets
without properties, for brokers that speak only 3.1.1, such as NATS's MQTT
listener; docs/scaling.md).

Encoders return whole packets; ``PacketReader.feed`` splits a byte stream
into ``(type, flags, body)``; parsers read the bodies. Only what a relay uses
is here: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH and PUBACK at QoS 0/1,
PINGREQ/PINGRESP and DISCONNECT.

Invariants:
- A reader never raises anything but ``ProtocolError`` on broker bytes, and
  refuses a packet longer than its ``max_packet`` (MQTT 5 section 3.1.2.11.4:
  we announce it as Maximum Packet Size, so a conforming broker never sends
  one) before buffering it.
- Properties are parsed by their type (section 2.2.2.2); unknown property
  identifiers are a ``ProtocolError``, never skipped by guesswork.
"""

from __future__ import annotations

import struct

__all__ = [
    "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "SUBSCRIBE", "SUBACK",
    "PINGREQ", "PINGRESP", "DISCONNECT", "PINGREQ_PACKET", "DISCONNECT_PACKET",
    "ProtocolError", "PacketReader", "encode_connect", "encode_subscribe",
    "encode_publish", "encode_puback", "parse_connack", "parse_suback",
    "parse_publish", "parse_puback", "parse_properties",
]

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # reason 0, no properties: keep the session

# Property identifier -> wire type (section 2.2.2.2).
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _U32, 0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
RECEIVE_MAXIMUM = 0x21


class ProtocolError(Exception):
    """The broker sent bytes that are not the MQTT 5 we expect."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def _str(s: bytes) -> bytes:
    return struct.pack(">H", len(s)) + s


def encode_connect(client_id: str, keepalive: int, *, clean_start: bool,
                   session_expiry: int, receive_maximum: int, max_packet: int,
                   username: str = "", password: str = "", version: int = 5,
                   will: tuple[str, bytes] | None = None) -> bytes:
    """CONNECT. With ``version=4`` (MQTT 3.1.1) there are no properties:
    ``session_expiry``, ``receive_maximum`` and ``max_packet`` are not sent
    (the broker's own settings apply) and ``clean_start`` is Clean Session.
    ``will`` = (topic, payload): a QoS 0, not retained will the broker
    publishes at once when the connection ends without DISCONNECT (section
    3.1.2.5; no will properties, so no Will Delay)."""
    flags = (0x80 if username else 0) | (0x40 if password else 0) | (0x02 if clean_start else 0)
    flags |= 0x04 if will else 0
    if version == 4:
        props = b""
    else:
        props = (b"\x11" + struct.pack(">I", session_expiry)
                 + b"\x21" + struct.pack(">H", receive_maximum)
                 + b"\x27" + struct.pack(">I", max_packet))
        props = varint(len(props)) + props
    body = (_str(b"MQTT") + bytes([version, flags]) + struct.pack(">H", keepalive)
            + props + _str(client_id.encode()))
    if will:
        body += (b"" if version == 4 else b"\x00") + _str(will[0].encode()) + _str(will[1])
    if username:
        body += _str(username.encode())
    if password:
        body += _str(password.encode())
    return _packet(0x10, body)


def encode_subscribe(pid: int, topic_filter: str, qos: int = 1, version: int = 5) -> bytes:
    props = b"" if version == 4 else b"\x00"
    return _packet(0x82, struct.pack(">H", pid) + props + _str(topic_filter.encode()) + bytes([qos]))


def encode_publish(topic: bytes, pid: int, payload: bytes, dup: bool = False,
                   version: int = 5) -> bytes:
    """A QoS 1 PUBLISH without properties (3.1.1: without the property length)."""
    props = b"" if version == 4 else b"\x00"
    body = _str(topic) + struct.pack(">H", pid) + props + payload
    return _packet(0x32 | (0x08 if dup else 0), body)


def encode_publish_qos0(topic: bytes, payload: bytes, version: int = 5) -> bytes:
    """A QoS 0 PUBLISH without properties (no packet id)."""
    props = b"" if version == 4 else b"\x00"
    return _packet(0x30, _str(topic) + props + payload)


def encode_puback(pid: int) -> bytes:
    # Reason 0 (success) with no properties may be omitted (section 3.4.2.1).
    return b"\x40\x02" + struct.pack(">H", pid)


class PacketReader:
    """Splits a byte stream into packets: ``feed(data)`` -> [(type, flags, body)]."""

    def __init__(self, max_packet: int) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Raises ``ProtocolError`` for a malformed length or an oversized packet."""
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= 2:
            n, mult, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    return out
                b = buf[i]
                n += (b & 0x7F) * mult
                i += 1
                if not b & 0x80:
                    break
                mult <<= 7
                if i > 4:
                    raise ProtocolError("remaining length longer than 4 bytes")
            if n + i > self.max_packet:
                raise ProtocolError(f"packet of {n + i} bytes exceeds {self.max_packet}")
            if len(buf) < i + n:
                return out
            out.append((buf[0] >> 4, buf[0] & 0x0F, bytes(buf[i:i + n])))
            del buf[:i + n]
        return out


def _varint_at(b: bytes, off: int) -> tuple[int, int]:
    n, mult = 0, 1
    for i in range(4):
        if off + i >= len(b):
            raise ProtocolError("truncated variable byte integer")
        x = b[off + i]
        n += (x & 0x7F) * mult
        if not x & 0x80:
            return n, off + i + 1
        mult <<= 7
    raise ProtocolError("variable byte integer longer than 4 bytes")


def _u16(b: bytes, off: int) -> int:
    if off + 2 > len(b):
        raise ProtocolError("truncated")
    return (b[off] << 8) | b[off + 1]


def parse_properties(b: bytes, off: int) -> tuple[dict[int, object], int]:
    """Properties at ``b[off:]`` -> ({identifier: value}, offset after them)."""
    length, off = _varint_at(b, off)
    end = off + length
    if end > len(b):
        raise ProtocolError("properties run past the packet")
    props: dict[int, object] = {}
    while off < end:
        ident, off = _varint_at(b, off)
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        if kind == _BYTE:
            if off >= end:
                raise ProtocolError("truncated property")
            value: object = b[off]
            off += 1
        elif kind == _U16:
            value, off = _u16(b, off), off + 2
        elif kind == _U32:
            if off + 4 > end:
                raise ProtocolError("truncated property")
            value, off = struct.unpack_from(">I", b, off)[0], off + 4
        elif kind == _VARINT:
            value, off = _varint_at(b, off)
        else:
            n = _u16(b, off)
            value, off = bytes(b[off + 2:off + 2 + n]), off + 2 + n
            if kind == _PAIR:
                m = _u16(b, off)
                value, off = (value, bytes(b[off + 2:off + 2 + m])), off + 2 + m
        if off > end:
            raise ProtocolError("property runs past its block")
        props[ident] = value
    return props, end


def parse_connack(body: bytes, version: int = 5) -> tuple[bool, int, dict[int, object]]:
    """-> (session_present, reason_code, properties). 3.1.1 return codes 1-5
    (refusals) come back as 0x80 + code, so ``>= 0x80`` means refused in both."""
    if len(body) < 2:
        raise ProtocolError("short CONNACK")
    if version == 4:
        return bool(body[0] & 1), (0x80 + body[1]) if body[1] else 0, {}
    props, _ = parse_properties(body, 2) if len(body) > 2 else ({}, 2)
    return bool(body[0] & 1), body[1], props


def parse_suback(body: bytes, version: int = 5) -> tuple[int, list[int]]:
    pid = _u16(body, 0)
    if version == 4:
        return pid, list(body[2:])
    _props, off = parse_properties(body, 2)
    return pid, list(body[off:])


def parse_publish(flags: int, body: bytes, version: int = 5) -> tuple[str, int, bytes, int]:
    """-> (topic, packet id (0 at QoS 0), payload, qos)."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    n = _u16(body, 0)
    if 2 + n > len(body):
        raise ProtocolError("topic runs past the packet")
    try:
        topic = body[2:2 + n].decode()
    except UnicodeDecodeError:
        raise ProtocolError("topic is not UTF-8") from None
    off = 2 + n
    pid = 0
    if qos:
        pid, off = _u16(body, off), off + 2
    if version == 4:
        return topic, pid, body[off:], qos
    _props, off = parse_properties(body, off)
    return topic, pid, body[off:], qos


def parse_puback(body: bytes) -> tuple[int, int]:
    """-> (packet id, reason code)."""
    return _u16(body, 0), (body[2] if len(body) > 2 else 0)
