"""The device MQTT client's packets (``micropython_port.mqtt_codec``): byte
tables from MQTT 3.1.1, every refusal, and the fuzz invariant (a parse
either delivers packets or raises ``DecodeError``, whole input or one byte
at a time), on CPython and under the real MicroPython with the heap locked.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.errors import DecodeError, LocalError
# CPython keeps the module-private const names (MicroPython inlines them).
from micropython_port.mqtt_codec import _TOPIC_MAX_BYTES as TOPIC_MAX_BYTES
from micropython_port.mqtt_codec import (PacketParser, encode_connect_into, encode_publish_into,
                                         encode_subscribe_into)
from tests.mp_helpers import run_mp

# (name, wire bytes, expected [(type, flags, head bytes, payload bytes, pid)])
PACKETS = [
    # CONNACK: session present 1, return code 0 (section 3.2)
    ("connack", bytes.fromhex("20 02 01 00"), [(0x20, 0, "0100", "", 0)]),
    # PUBACK for packet id 0x1234 (section 3.4)
    ("puback", bytes.fromhex("40 02 12 34"), [(0x40, 0, "1234", "", 0x1234)]),
    # SUBACK pid 7, granted QoS 1 (section 3.9); pid is only parsed for a
    # PUBACK or a QoS 1 PUBLISH (the client waits for one SUBACK at a time)
    ("suback", bytes.fromhex("90 03 00 07 01"), [(0x90, 0, "000701", "", 0)]),
    ("pingresp", bytes.fromhex("d0 00"), [(0xD0, 0, "", "", 0)]),
    # PUBLISH QoS 0 "a/b" payload "hi": no packet id
    ("publish qos0", bytes.fromhex("30 07 00 03 61 2f 62 68 69"),
     [(0x30, 0, "0003612f62", "6869", 0)]),
    # PUBLISH QoS 1, DUP, pid 0x0102, empty payload
    ("publish qos1 dup", bytes.fromhex("3a 07 00 03 61 2f 62 01 02"),
     [(0x30, 0xA, "0003612f620102", "", 0x0102)]),
    # a 200-byte payload: two-byte remaining length 0xCB 0x01 = 203
    ("publish 200", bytes.fromhex("30 cb 01 00 01 74") + bytes(range(200)),
     [(0x30, 0, "000174", bytes(range(200)).hex(), 0)]),
    ("stream", bytes.fromhex("d0 00 40 02 00 01 30 04 00 01 74 58"),
     [(0xD0, 0, "", "", 0), (0x40, 0, "0001", "", 1), (0x30, 0, "000174", "58", 0)]),
]

BAD = [
    ("reserved type 0", "00 00"),
    ("reserved type 15", "f0 00"),
    ("client-only CONNECT", "10 00"),
    ("PUBREL (QoS 2 only)", "62 02 00 01"),
    ("PUBLISH QoS 3", "36 03 00 01 74"),
    ("CONNACK flags", "21 02 00 00"),
    ("CONNACK length", "20 03 00 00 00"),
    ("PUBACK length", "40 01 00"),
    ("SUBACK too short", "90 02 00 01"),
    ("PINGRESP with a body", "d0 01 00"),
    ("remaining length of 5 bytes", "30 ff ff ff ff 7f"),
    ("PUBLISH too short", "30 02 00 01"),
    ("empty topic", "30 03 00 00 58"),
    ("topic past the packet", "30 04 00 05 74 74"),
    ("topic too long", "30 43 00 41" + " 74" * 65),
    ("QoS 1 packet id 0", "32 05 00 01 74 00 00"),
    ("PUBACK packet id 0", "40 02 00 00"),
]


def feed(p: PacketParser, data: bytes, on_packet) -> None:
    """Every whole packet in ``data`` to ``on_packet(ptype, flags)``, the
    way the client's read loop takes them from the pull parser."""
    off = 0
    while off < len(data):
        off = p.feed_into(data, off, len(data))
        if p.packet:
            on_packet(p.packet & 0xF0, p.packet & 0x0F)


def _parse(data: bytes, step: int | None = None, max_payload: int = 1024) -> list[tuple]:
    p = PacketParser(max_payload)
    got: list[tuple] = []

    def on_packet(t: int, flags: int) -> None:
        got.append((t, flags, bytes(p.head[:p.head_len]).hex(),
                    bytes(p.payload[:p.payload_len]).hex(), p.pid))

    if step is None:
        feed(p, data, on_packet)
    else:
        for i in range(0, len(data), step):
            chunk = data[i:i + step]
            feed(p, chunk, on_packet)
    return got


@pytest.mark.parametrize("name,wire,expected", PACKETS, ids=[p[0] for p in PACKETS])
@pytest.mark.parametrize("step", [None, 1, 3])
def test_broker_packets_parse_whole_and_in_pieces(name: str, wire: bytes, expected: list,
                                                  step: int | None) -> None:
    assert _parse(wire, step) == expected


@pytest.mark.parametrize("name,wire", BAD, ids=[b[0] for b in BAD])
def test_bad_broker_bytes_raise_decode_error_and_stay_refused(name: str, wire: str) -> None:
    p = PacketParser(1024)
    data = bytes.fromhex(wire)
    with pytest.raises(DecodeError):
        feed(p, data, lambda t, f: None)
    # Out of step: everything is refused until reset().
    with pytest.raises(DecodeError):
        feed(p, b"\xd0\x00", lambda t, f: None)
    p.reset()
    seen = []
    feed(p, b"\xd0\x00", lambda t, f: seen.append(t))
    assert seen == [0xD0]


def test_feed_into_stops_after_each_whole_packet() -> None:
    # PINGRESP, PUBACK 1, then the first 3 bytes of a PUBACK.
    data = bytes.fromhex("d0 00 40 02 00 01 40 02 00")
    p = PacketParser(16)
    got = []
    off = 0
    while off < len(data):
        off = p.feed_into(data, off, len(data))
        got.append((off, p.packet, p.pid))
    assert got == [(2, 0xD0, 0), (6, 0x40, 1), (9, 0, 1)]
    assert (p.feed_into(b"\x02", 0, 1), p.packet, p.pid) == (1, 0x40, 2)


def test_an_oversized_publish_is_skipped_whole_and_the_stream_goes_on() -> None:
    # 1025-byte payload over a 1024-byte buffer, then a PINGRESP: the
    # PUBLISH is delivered flagged, with no bytes; QoS 1 keeps its packet
    # id so the client can acknowledge it.
    p = PacketParser(1024)
    # remaining length 1030 = 0x86 0x08: topic length 2 + "t" + packet id 2 + 1025
    wire = bytes.fromhex("32 86 08 00 01 74 00 2a") + bytes([0x55]) * 1025 + bytes.fromhex("d0 00")
    for step in (None, 1, 100):
        got: list[tuple] = []
        p.reset()
        chunks = [wire] if step is None else [wire[i:i + step] for i in range(0, len(wire), step)]
        for c in chunks:
            feed(p, c, lambda t, f: got.append((t, p.oversize, p.payload_len, p.pid)))
        assert got == [(0x30, True, 0, 42), (0xD0, False, 0, 0)]
        assert bytes(p.payload) == bytes(1024)  # nothing of it was stored


def test_publish_payload_lands_at_offset_zero_for_receive_into() -> None:
    p = PacketParser(64)
    out = bytearray(80)
    n = encode_publish_into(out, b"moteseal/v1/down/mote-1", b"\x86\x06ABC--", 5, 1, 9)
    seen = []
    feed(p, bytes(out[:n]), lambda t, f: seen.append((bytes(p.head[:p.head_len]),
                                                  bytes(p.payload[:p.payload_len]), p.pid)))
    # head: topic length, topic, packet id; payload: only the 5 bytes asked for
    assert seen == [(b"\x00\x17moteseal/v1/down/mote-1\x00\x09", b"\x86\x06ABC", 9)]


def test_caller_mistakes_raise_local_error() -> None:
    buf = bytearray(200)
    long_topic = b"t" * (TOPIC_MAX_BYTES + 1)
    with pytest.raises(LocalError):
        encode_publish_into(buf, long_topic, b"x", 1, 1, 1)
    with pytest.raises(LocalError):
        encode_subscribe_into(buf, 1, long_topic, 1)
    assert encode_subscribe_into(buf, 1, long_topic[1:], 1) == 2 + 2 + 2 + TOPIC_MAX_BYTES + 1
    # A packet that might not fit the buffer is refused before a byte is
    # written: 5 (largest fixed header) + 2 + 1 + 2 + 190 = 200 fits, 191 not.
    assert encode_publish_into(buf, b"t", bytes(190), 190, 1, 1) == 1 + 2 + (2 + 1 + 2 + 190)
    small = bytearray(199)
    with pytest.raises(LocalError):
        encode_publish_into(small, b"t", bytes(190), 190, 1, 1)
    assert small == bytearray(199)
    p = PacketParser(16)
    with pytest.raises(LocalError):
        p.feed_into(b"\xd0\x00", 0, 3)
    with pytest.raises(LocalError):  # 128 bytes would need a two-byte remaining length
        encode_connect_into(buf, b"c" * 50, 60, b"u" * 30, b"p" * (128 - 10 - 52 - 32 - 2))


def test_encoders_match_the_spec_bytes() -> None:
    buf = bytearray(256)
    # CONNECT, 3.1.1, clean session off, keepalive 30, user "u", password "pw"
    n = encode_connect_into(buf, b"moteseal-m1", 30, b"u", b"pw")
    assert bytes(buf[:n]) == bytes.fromhex(
        "10 1e 0004 4d515454 04 c0 001e 000b") + b"moteseal-m1" + bytes.fromhex("0001") + b"u" + \
        bytes.fromhex("0002") + b"pw"
    n = encode_connect_into(buf, b"c", 0, None, None)
    assert bytes(buf[:n]) == bytes.fromhex("10 0d 0004 4d515454 04 00 0000 0001 63")
    # The largest CONNECT with a one-byte remaining length: 127.
    n = encode_connect_into(buf, b"c" * 50, 60, b"u" * 30, b"p" * (127 - 10 - 52 - 32 - 2))
    assert n == 2 + 127 and buf[1] == 127
    n = encode_subscribe_into(buf, 0x0102, b"a/b", 1)
    assert bytes(buf[:n]) == bytes.fromhex("82 08 0102 0003 612f62 01")
    # PUBLISH QoS 1, pid 5, 200-byte payload: remaining length 205 = 0xCD 0x01
    n = encode_publish_into(buf, b"t", bytes(range(200)), 200, 1, 5)
    assert bytes(buf[:n]) == bytes.fromhex("32 cd 01 0001 74 0005") + bytes(range(200))
    n = encode_publish_into(buf, b"a/b", b"hi", 2, 0, 0)
    assert bytes(buf[:n]) == bytes.fromhex("30 07 0003 612f62 6869")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 7))
def test_fuzz_parser_returns_packets_or_raises_decode_error(data: bytes, step: int) -> None:
    for s in (None, step):
        try:
            _parse(data, s, max_payload=128)
        except DecodeError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=TOPIC_MAX_BYTES), st.binary(max_size=256),
       st.integers(0, 1), st.integers(1, 65535))
def test_every_publish_we_encode_parses_back(topic: bytes, payload: bytes, qos: int, pid: int) -> None:
    buf = bytearray(5 + 2 + len(topic) + 2 + len(payload))
    n = encode_publish_into(buf, topic, payload, len(payload), qos, pid)
    [(t, flags, head, body, got_pid)] = _parse(bytes(buf[:n]), None, 256)
    assert (t, flags >> 1, bytes.fromhex(body)) == (0x30, qos, payload)
    assert got_pid == (pid if qos else 0)


@pytest.mark.micropython
def test_parser_on_micropython_same_results_and_no_allocation() -> None:
    rows = [(w.hex(), exp) for _, w, exp in PACKETS]
    bad = [b for _, b in BAD]
    code = f"""
import json, micropython
from binascii import unhexlify, hexlify
from device.errors import DecodeError
from micropython_port.mqtt_codec import PacketParser, encode_publish_into, encode_subscribe_into
p = PacketParser(1024)
def feed(d, on_packet):
    off = 0
    while off < len(d):
        off = p.feed_into(d, off, len(d))
        if p.packet:
            on_packet(p.packet & 0xF0, p.packet & 0x0F)
got = []
def on_packet(t, f):
    got.append([t, f, hexlify(p.head[:p.head_len]).decode(), hexlify(p.payload[:p.payload_len]).decode(), p.pid])
res = []
for w, _ in {rows!r}:
    got = []
    d = unhexlify(w)
    p.reset()
    feed(d, on_packet)
    res.append(got)
refused = 0
for w in {bad!r}:
    d = unhexlify(w.replace(" ", ""))
    p.reset()
    try:
        feed(d, lambda t, f: None)
    except DecodeError:
        refused += 1
# The parse and encode paths allocate nothing: a 200-byte PUBLISH and a
# PUBACK parsed, a PUBLISH and a SUBSCRIBE encoded, heap locked.
d = bytearray(unhexlify("30cb0100017" + "4" + "00" * 200 + "40020001"))
out = bytearray(300)
n = [0]
def count(t, f):
    n[0] += 1
p.reset()
micropython.heap_lock()
try:
    feed(d, count)
    m = encode_publish_into(out, b"t", d, 200, 1, 7) + encode_subscribe_into(out, 1, b"t", 1)
finally:
    micropython.heap_unlock()
print(json.dumps([res, refused, n[0], m]))
"""
    res, refused, locked, encoded = json.loads(run_mp(code).splitlines()[-1])
    assert [[tuple(x) for x in r] for r in res] == [exp for _, exp in rows]
    assert refused == len(BAD)
    assert locked == 2
    assert encoded == (3 + 3 + 2 + 200) + (2 + 2 + 3 + 1)
