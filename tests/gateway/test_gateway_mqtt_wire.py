"""The lean client's MQTT 5 codec: byte tables, stream splitting, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from gateway import mqtt_wire as W


def test_publish_and_puback_byte_tables():
    # PUBLISH QoS 1, topic "a/b", packet id 7, no properties, payload "hi"
    assert W.encode_publish(b"a/b", 7, b"hi") == bytes.fromhex("32 0a 0003 612f62 0007 00 6869")
    assert W.encode_publish(b"a/b", 7, b"hi", dup=True)[0] == 0x3A
    assert W.encode_puback(7) == bytes.fromhex("40 02 0007")
    topic, pid, payload, qos = W.parse_publish(0x2, bytes.fromhex("0003 612f62 0007 00 6869"))
    assert (topic, pid, payload, qos) == ("a/b", 7, b"hi", 1)


def test_connect_carries_session_and_flow_control_properties():
    pkt = W.encode_connect("gw1", 30, clean_start=False, session_expiry=3600,
                           receive_maximum=100, max_packet=66560, username="u", password="p")
    reader = W.PacketReader(1 << 20)
    [(ptype, _flags, body)] = reader.feed(pkt)
    assert ptype == W.CONNECT
    assert body[:7] == b"\x00\x04MQTT\x05" and body[7] == 0xC0  # username, password; clean start off
    props, off = W.parse_properties(body, 10)
    assert props == {0x11: 3600, 0x21: 100, 0x27: 66560}
    assert body[off:] == b"\x00\x03gw1\x00\x01u\x00\x01p"


def test_connack_with_properties():
    body = bytes([1, 0]) + bytes([3, 0x21, 0, 20])
    assert W.parse_connack(body) == (True, 0, {0x21: 20})


def test_reader_splits_a_stream_fed_one_byte_at_a_time():
    stream = W.encode_publish(b"t", 1, b"x" * 200) + W.encode_puback(1) + W.PINGREQ_PACKET
    reader = W.PacketReader(1024)
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
    assert [g[0] for g in got] == [W.PUBLISH, W.PUBACK, W.PINGREQ]
    assert W.parse_publish(got[0][1], got[0][2])[2] == b"x" * 200


def test_reader_refuses_oversized_and_malformed_lengths():
    with pytest.raises(W.ProtocolError):
        W.PacketReader(100).feed(W.encode_publish(b"t", 1, b"x" * 200))
    with pytest.raises(W.ProtocolError):
        W.PacketReader(1 << 30).feed(b"\x30\xff\xff\xff\xff\x01")


@pytest.mark.parametrize("block", [bytes([1, 0x01]), bytes([2, 0x21, 0]), bytes([3, 0x03, 0, 5]),
                                   bytes([5, 0x11, 0, 0, 0]), bytes([2, 0x0B, 0x80])])
def test_truncated_properties_are_protocol_errors(block):
    with pytest.raises(W.ProtocolError):
        W.parse_properties(block + b"\x00" * 0, 0)


def test_unknown_property_is_an_error_not_a_guess():
    with pytest.raises(W.ProtocolError):
        W.parse_properties(bytes([2, 0x7F, 0]), 0)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_any_stream_gives_packets_or_protocol_error(data):
    reader = W.PacketReader(256)
    try:
        packets = reader.feed(data)
    except W.ProtocolError:
        return
    for ptype, flags, body in packets:
        try:
            if ptype == W.PUBLISH:
                W.parse_publish(flags, body)
            elif ptype == W.CONNACK:
                W.parse_connack(body)
            elif ptype == W.SUBACK:
                W.parse_suback(body)
            elif ptype == W.PUBACK:
                W.parse_puback(body)
        except W.ProtocolError:
            pass
