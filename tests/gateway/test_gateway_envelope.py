"""The gateway's envelope reader (cbor2): byte tables, rejections, fuzzing."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from gateway.envelope import (DATA, HINT, HS1, HS2, MALFORMED, OVERSIZE, UNKNOWN_VERSION,
                              Header, Rejected, read_header)

# [6, h'73656e736f722d31' ("sensor-1"), h'687562' ("hub"), 7, 1, h'00112233']
DATA_BYTES = bytes.fromhex(
    "86"                  # array(6)
    "06"                  # head: version 1 << 2 | type 2 (data)
    "48" "73656e736f722d31"  # src: bstr(8) "sensor-1"
    "43" "687562"         # dst: bstr(3) "hub"
    "07"                  # sid 7
    "01"                  # nonce 1
    "44" "00112233"       # ct: bstr(4)
)


def env(*items: object) -> bytes:
    return cbor2.dumps(list(items), canonical=True)


def test_data_envelope_byte_table():
    assert env(6, b"sensor-1", b"hub", 7, 1, bytes.fromhex("00112233")) == DATA_BYTES
    assert read_header(DATA_BYTES) == Header(DATA, "sensor-1", "hub", 7)


@pytest.mark.parametrize("items,kind", [
    ((4, b"s", b"hub", 0, b"\x01" * 48), HS1),
    ((5, b"hub", b"s", 0xFFFFFFFF, b"\x02" * 48), HS2),
    ((6, b"s", b"hub", 1, 0xFFFFFFFFFFFFFFFE, b""), DATA),
    ((7, b"hub", b"s", 1, 0), HINT),
], ids=["hs1", "hs2", "data", "hint"])
def test_each_kind_is_read(items, kind):
    h = read_header(env(*items))
    assert h.kind == kind and h.src == items[1].decode() and h.dst == items[2].decode()


@pytest.mark.parametrize("data", [
    b"",
    b"\x00",
    b"\xa0",                                    # a map
    env(6, b"s", b"hub", 1, 1),                 # data with a missing field
    env(4, b"s", b"hub", 1, b"m", b"extra"),    # hs1 with an extra field
    env(6, "s", b"hub", 1, 1, b""),             # text id
    env(6, b"", b"hub", 1, 1, b""),             # empty id
    env(6, b"x" * 17, b"hub", 1, 1, b""),       # 17-byte id
    env(6, b"a/b", b"hub", 1, 1, b""),          # id with a topic separator
    env(6, b"s", b"h+b", 1, 1, b""),            # id with a wildcard
    env(6, b"s", b"hub", 2**32, 1, b""),        # sid too large
    env(6, b"s", b"hub", -1, 1, b""),           # negative sid
    env(6, b"s", b"hub", 1, 2**64 - 1, b""),    # reserved nonce
    env(6, b"s", b"hub", True, 1, b""),         # bool is not a uint
    env(6, b"s", b"hub", 1, 1, "ct"),           # text ct
    env(7, b"s", b"hub", 1, b"reason"),         # hint reason not a uint
    env(256, b"s", b"hub", 1, b""),             # head wider than a byte
    DATA_BYTES + b"\x00",                       # trailing byte
    bytes.fromhex("9f06") + DATA_BYTES[2:] + b"\xff",  # indefinite-length array
    bytes.fromhex("8618 06") + DATA_BYTES[2:],  # head in long form
    bytes.fromhex("86c24106") + DATA_BYTES[2:],  # head as a bignum tag
    DATA_BYTES[:-1],                            # truncated
    b"\x85" + b"\x81" * 1000,                   # deeply nested
], ids=lambda d: d.hex()[:24])
def test_malformed_envelopes_are_rejected(data):
    with pytest.raises(Rejected) as e:
        read_header(data)
    assert e.value.reason == MALFORMED


class _Cbor2Spy:
    """cbor2 itself, counting the calls the reader makes into it."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        real = getattr(cbor2, name)
        if not callable(real):
            return real

        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return real(*args, **kwargs)
        return counted


@pytest.mark.parametrize("depth", [1, 8, 40])
def test_nested_items_are_malformed_before_cbor2_sees_them(depth, monkeypatch):
    """Maps used as map keys, nested ``depth`` deep, inside an otherwise
    plausible hs1 envelope: cbor2's canonical re-encoding of that is
    exponential in the depth (the fuzzer found a 104-byte envelope that
    stalled the gateway for minutes), so the reader refuses any nested item
    before calling cbor2 at all. No envelope of any version nests."""
    import gateway.envelope as G

    spy = _Cbor2Spy()
    monkeypatch.setattr(G, "cbor2", spy)
    prefix = bytes([0x85, 0x04, 0x41, 0x73, 0x43]) + b"hub"
    nested = (b"\xa1" * depth + b"\x2f" * (depth + 1),  # {{{...-16: -16}...}: -16}
              b"\x81" * depth + b"\x00",  # [[[...0]]]
              b"\xc2" * depth + b"\x40")  # tags
    for item in nested:
        with pytest.raises(Rejected) as e:
            read_header(prefix + item + (b"" if item[0] == 0xA1 else b"\x40"))
        assert e.value.reason == MALFORMED
    assert spy.calls == 0
    read_header(env(4, b"s", b"hub", 1, b"msg"))  # a flat one does reach cbor2
    assert spy.calls == 2  # loads, then the canonical dumps


def test_the_fuzzers_stalling_envelope_is_malformed():
    data = bytes.fromhex(
        "8507436875624873656ea1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1")
    data += bytes.fromhex("a1a1") + b"/" * 62 + b"\xa1"
    with pytest.raises(Rejected) as e:
        read_header(data)
    assert e.value.reason == MALFORMED


def test_other_versions_are_unknown_not_malformed():
    for head in (0, 3, 8, 11, 255):
        with pytest.raises(Rejected) as e:
            read_header(env(head, b"s", b"hub", 1, b""))
        assert e.value.reason == UNKNOWN_VERSION


def test_size_limit_is_configurable():
    big = env(6, b"s", b"hub", 1, 1, b"\x00" * 1200)
    with pytest.raises(Rejected) as e:
        read_header(big)
    assert e.value.reason == OVERSIZE
    assert read_header(big, max_bytes=2000).src == "s"
    limit = len(DATA_BYTES)
    assert read_header(DATA_BYTES, max_bytes=limit).dst == "hub"
    with pytest.raises(Rejected):
        read_header(DATA_BYTES, max_bytes=limit - 1)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_a_header_or_a_rejection(data):
    try:
        h = read_header(data)
    except Rejected as e:
        assert e.reason in (MALFORMED, OVERSIZE, UNKNOWN_VERSION)
    else:
        assert cbor2.dumps(cbor2.loads(data), canonical=True) == data
        assert isinstance(h, Header)


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, len(DATA_BYTES) - 1), st.integers(0, 255))
def test_any_single_byte_change_is_read_or_rejected(pos, value):
    data = bytearray(DATA_BYTES)
    data[pos] = value
    try:
        h = read_header(bytes(data))
    except Rejected:
        return
    assert h.kind in (HS1, HS2, DATA, HINT)
