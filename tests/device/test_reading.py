"""``device.reading.ReadingWriter`` on CPython: every field type decodes
with cbor2 to what was written, limits raise ``LocalError`` without
sending a truncated map, and ``moteseal.sim.simulate.decode_reading``
shows any CBOR map whole (the peer's display)."""

from __future__ import annotations

import cbor2
import pytest

from device.errors import LocalError
from device.reading import KEY_MAX_BYTES, MAX_FIELDS, ReadingWriter
from moteseal.peer.listen import format_report
from moteseal.sim.simulate import decode_reading, describe_payload


def _write(fill, size: int = 96) -> bytes:
    buf = bytearray(size)
    w = ReadingWriter(buf)
    w.begin(0)
    fill(w)
    return bytes(buf[:w.end()])


def test_every_field_type_round_trips_through_cbor2() -> None:
    def fill(w: ReadingWriter) -> None:
        w.int("t_cC", 2150)
        w.int("neg", -40)
        w.int(b"big", 2**40)
        w.float("rh", 41.5)
        w.bool("door", True)
        w.bool("ok", False)
        w.text("fw", "1.2.3")
        w.text("city", "Zürich")
        w.bytes("id", b"\x00\xff\x10")
    data = _write(fill)
    assert cbor2.loads(data) == {"t_cC": 2150, "neg": -40, "big": 2**40, "rh": 41.5, "door": True,
                                 "ok": False, "fw": "1.2.3", "city": "Zürich", "id": b"\x00\xff\x10"}
    assert data[0] == 0xA9  # map(9): the head reserved by begin()


def test_integers_use_the_shortest_head_and_floats_64_bits() -> None:
    assert _write(lambda w: w.int("a", 23)) == bytes([0xA1, 0x61, 0x61, 0x17])
    assert _write(lambda w: w.int("a", 24)) == bytes([0xA1, 0x61, 0x61, 0x18, 24])
    assert _write(lambda w: w.int("a", -1)) == bytes([0xA1, 0x61, 0x61, 0x20])
    assert _write(lambda w: w.int("a", 2**64 - 1))[3:] == b"\x1b" + b"\xff" * 8
    assert cbor2.loads(_write(lambda w: w.int("a", -2**64))) == {"a": -2**64}
    assert _write(lambda w: w.float("a", 1.5)) == bytes([0xA1, 0x61, 0x61, 0xFB]) + cbor2.dumps(1.5)[1:]


def test_a_field_that_does_not_fit_poisons_the_reading() -> None:
    buf = bytearray(16)
    w = ReadingWriter(buf)
    w.begin(0)
    w.int("a", 1)
    before = bytes(buf)
    with pytest.raises(LocalError, match="bad field"):
        w.bytes("b", b"x" * 12)
    assert bytes(buf) == before  # Rule 2: nothing of the failed field written
    with pytest.raises(LocalError):
        w.end()
    w.begin(0)  # the next reading starts clean
    w.int("a", 2)
    assert cbor2.loads(bytes(buf[:w.end()])) == {"a": 2}


@pytest.mark.parametrize("fill", [
    pytest.param(lambda w: w.int("k" * (KEY_MAX_BYTES + 1), 1), id="long-key"),
    pytest.param(lambda w: w.int("clé", 1), id="non-ascii-key"),
    pytest.param(lambda w: [w.bool(str(i), True) for i in range(MAX_FIELDS + 1)], id="24-fields"),
    pytest.param(lambda w: w.int("a", 2**64), id="int-too-large"),
    pytest.param(lambda w: w.int("a", -2**64 - 1), id="int-too-small"),
    pytest.param(lambda w: (w.int("a", 1), w.raw(b"xy")), id="raw-after-field"),
    pytest.param(lambda w: (w.raw(b"xy"), w.int("a", 1)), id="field-after-raw"),
])
def test_limits_raise_local_error(fill) -> None:
    with pytest.raises(LocalError):
        _write(fill, 128)


def test_raw_payload_is_sent_as_is_and_shown_as_text_or_hex() -> None:
    assert _write(lambda w: w.raw(b"t=21.5C")) == b"t=21.5C"
    assert decode_reading(b"t=21.5C") is None
    assert describe_payload(b"t=21.5C") == {"text": "t=21.5C"}
    assert describe_payload(b"\x01\x02\xff") == {"hex": "0102ff"}
    line = format_report({"event": "telemetry", "device": "mote-1", "via": "data",
                          "payload": describe_payload(b"\x01\x02\xff")})
    assert "hex=0102ff" in line and "bytes" not in line


def test_the_peer_decodes_any_map_and_shows_every_field() -> None:
    data = _write(lambda w: (w.int("up", 3), w.int("seq", 0), w.int("t_cC", 2150),
                             w.float("rh", 41.5), w.bytes("raw", b"\xab"), w.bool("door", False)))
    reading = decode_reading(data)
    assert reading == {"up": 3, "seq": 0, "t_cC": 2150, "rh": 41.5, "raw": "ab", "door": False}
    line = format_report({"event": "telemetry", "device": "mote-1", "via": "hs1", "reading": reading})
    for part in ("up=3", "seq=0", "t_cC=2150", "rh=41.5", "raw=ab", "door=False"):
        assert part in line
    assert decode_reading(cbor2.dumps({1: "x"})) == {"1": "x"}  # any map, not only ours
    assert decode_reading(cbor2.dumps([1, 2])) is None
    assert decode_reading(data + b"\x00") is None  # trailing bytes: not one map
