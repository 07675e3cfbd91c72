"""Serial framing (device/framing.py): vectors, a lossy line, and fuzzing.

Frame layout (docs/protocol.md, "Serial framing"):
    00 | COBS(payload || crc16/ccitt-false big-endian) | 00
"""

from __future__ import annotations

import binascii
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.errors import BufferTooSmall, LocalError, MessageTooLarge
from device.framing import (
    DROP_COBS,
    DROP_CRC,
    DROP_OVERSIZE,
    DROP_TRUNCATED,
    FRAME_MAX_BYTES,
    FRAME_PAYLOAD_MAX_BYTES,
    FrameDecoder,
    crc16,
    crc16_py_into,
    encode,
    encode_into,
    encoded_len,
)

H = bytes.fromhex

# (id, payload, crc, wire frame). Layout comments: delim | COBS blocks | delim.
FRAME_VECTORS = [
    # 00 | 03 ff ff (crc of nothing = ffff) | 00
    ("empty", b"", 0xFFFF, H("00 03ffff 00")),
    # 00 | 01 (zero) 03 e1 f0 (crc) | 00
    ("one-zero-byte", H("00"), 0xE1F0, H("00 01 03e1f0 00")),
    # the CRC catalogue's check input: one block of 9 data + 2 crc bytes
    ("check-123456789", b"123456789", 0x29B1, H("00 0c313233343536373839 29b1 00")),
    # zero inside the payload: 03 11 22 | 04 33 07 45 (crc 0745)
    ("zero-in-payload", H("11220033"), 0x0745, H("00 031122 04330745 00")),
    # crc low byte is zero: 02 54 | 01 | 03 4e 92 | 01 (the trailing zero)
    ("zero-in-crc", H("5400004e"), 0x9200, H("00 0254 01 034e92 01 00")),
    # 254 non-zero bytes fill one block (code ff, no implied zero), then crc
    ("full-block-254", bytes(range(1, 255)), 0x5C1D,
     b"\x00\xff" + bytes(range(1, 255)) + H("035c1d 00")),
]

# (id, wire bytes, delivered payloads, drop reason counted or None)
DROP_VECTORS = [
    # crc ffff expected, fffe received
    ("crc-mismatch", H("00 03fffe 00"), [], DROP_CRC),
    # code 05 promises 4 data bytes, the delimiter comes after 2
    ("block-overruns-frame", H("00 053132 00"), [], DROP_COBS),
    # one decoded byte: no room for the 2-byte crc
    ("shorter-than-crc", H("00 0231 00"), [], DROP_TRUNCATED),
    # line noise before a frame is ended by the frame's leading delimiter
    ("noise-then-frame", H("aabbcc 00 03ffff 00"), [b""], DROP_COBS),
    # idle fill between frames is not a drop
    ("idle-zeros", H("00000000 03ffff 000000"), [b""], None),
]


@pytest.mark.parametrize(
    "payload,crc,wire", [v[1:] for v in FRAME_VECTORS], ids=[v[0] for v in FRAME_VECTORS]
)
def test_frame_vector_encodes_and_decodes(payload: bytes, crc: int, wire: bytes) -> None:
    assert crc16(payload) == crc == crc16_py_into(payload, len(payload))
    assert encode(payload) == wire
    dec = FrameDecoder()
    assert dec.feed(wire) == [payload]
    assert dec.dropped() == 0 and dec.delivered == 1


@pytest.mark.parametrize(
    "wire,frames,reason", [v[1:] for v in DROP_VECTORS], ids=[v[0] for v in DROP_VECTORS]
)
def test_bad_frame_vector_is_dropped_and_counted(wire: bytes, frames: list, reason) -> None:
    dec = FrameDecoder()
    assert dec.feed(wire) == frames
    expected = [0, 0, 0, 0]
    if reason is not None:
        expected[reason] = 1
    assert dec.drops == expected


def test_full_block_without_trailing_empty_block_also_decodes() -> None:
    # An encoder that ends with a full ff block and no 01 block means the
    # same bytes; the CRC still decides.
    payload = bytes(range(1, 253))  # 252 bytes + 2 non-zero crc bytes = 254
    crc = crc16(payload)
    assert crc >> 8 and crc & 0xFF
    wire = b"\x00\xff" + payload + bytes([crc >> 8, crc & 0xFF]) + b"\x00"
    assert FrameDecoder().feed(wire) == [payload]
    assert encode(payload) == wire[:-1] + b"\x01\x00"


def test_frame_max_bytes_is_the_largest_encoding() -> None:
    # Worst case: no zero bytes, so every 254 bytes need a code byte.
    payload = b"\x01" * FRAME_PAYLOAD_MAX_BYTES
    wire = encode(payload)
    assert len(wire) <= FRAME_MAX_BYTES == encoded_len(FRAME_PAYLOAD_MAX_BYTES) == 1209
    assert FrameDecoder().feed(wire) == [payload]


def test_a_frame_holds_exactly_the_largest_envelope() -> None:
    from device.envelope import ENVELOPE_MAX_BYTES
    from gateway.envelope import DEFAULT_MAX_ENVELOPE_BYTES

    assert FRAME_PAYLOAD_MAX_BYTES == ENVELOPE_MAX_BYTES == DEFAULT_MAX_ENVELOPE_BYTES


def test_payload_over_the_limit_is_a_local_error_and_leaves_out_untouched() -> None:
    out = bytearray(b"\xaa" * (FRAME_MAX_BYTES + 10))
    with pytest.raises(MessageTooLarge):
        encode_into(bytes(FRAME_PAYLOAD_MAX_BYTES + 1), FRAME_PAYLOAD_MAX_BYTES + 1, out)
    small = bytearray(b"\xaa" * 5)
    with pytest.raises(BufferTooSmall):
        encode_into(b"abcd", 4, small)
    with pytest.raises(LocalError):
        encode_into(b"ab", 3, out)
    assert out == b"\xaa" * (FRAME_MAX_BYTES + 10) and small == b"\xaa" * 5


def test_encode_into_frames_a_prefix_of_a_reused_buffer() -> None:
    buf = bytearray(b"telemetry-and-leftovers")
    out = bytearray(FRAME_MAX_BYTES)
    n = encode_into(buf, 9, out)
    assert bytes(out[:n]) == encode(b"telemetry")


def test_oversized_frame_is_dropped_and_the_next_is_delivered() -> None:
    dec = FrameDecoder(max_payload=16)
    wire = encode(bytes(range(1, 18))) + encode(b"ok")
    assert dec.feed(wire) == [b"ok"]
    assert dec.drops[DROP_OVERSIZE] == 1
    with pytest.raises(LocalError):
        FrameDecoder(max_payload=FRAME_PAYLOAD_MAX_BYTES + 1)


def test_feed_into_hands_out_the_reused_buffer_without_copying() -> None:
    dec = FrameDecoder()
    seen: list[tuple[bytes, int]] = []
    wire = encode(b"abc") + encode(b"de")
    dec.feed_into(wire, len(wire), lambda buf, n: seen.append((bytes(buf[:n]), n)))
    assert seen == [(b"abc", 3), (b"de", 2)]
    with pytest.raises(LocalError):
        dec.feed_into(wire, len(wire) + 1, lambda buf, n: None)


def test_exception_in_callback_propagates_and_decoder_recovers() -> None:
    dec = FrameDecoder()

    def boom(buf: memoryview, n: int) -> None:
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError):
        dec.feed_into(encode(b"x"), len(encode(b"x")), boom)
    assert dec.feed(encode(b"y")) == [b"y"]


# --- a lossy line --------------------------------------------------------


def _telemetry(rng: random.Random, i: int) -> bytes:
    n = rng.choice([0, 1, 16, 64, 64, 64, 200, 300, FRAME_PAYLOAD_MAX_BYTES])
    body = bytes(rng.getrandbits(8) for _ in range(n))
    return (i.to_bytes(4, "big") + body)[: max(n, 4)]


def _check_line(seed: int, corrupt) -> None:
    """Send frames through ``corrupt(rng, wire) -> (wire, intact)``; every
    intact frame and nothing else arrives, in order, fed whole and byte by
    byte alike."""
    rng = random.Random(seed)
    stream = bytearray()
    intact: list[bytes] = []
    corrupted = 0
    for i in range(300):
        payload = _telemetry(rng, i)
        wire, ok = corrupt(rng, encode(payload))
        stream += wire
        if ok:
            intact.append(payload)
        else:
            corrupted += 1
    whole = FrameDecoder()
    assert whole.feed(bytes(stream)) == intact
    bytewise = FrameDecoder()
    got = []
    for b in stream:
        got.extend(bytewise.feed(bytes([b])))
    assert got == intact
    assert whole.drops == bytewise.drops
    assert whole.dropped() >= corrupted
    assert whole.delivered == len(intact)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_line_noise_between_frames_costs_no_intact_frame(seed: int) -> None:
    def noise(rng: random.Random, wire: bytes):
        garbage = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        return garbage + wire, True

    _check_line(seed, noise)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_bit_flips_inside_frames_are_dropped(seed: int) -> None:
    def flip(rng: random.Random, wire: bytes):
        if rng.random() < 0.5:
            return wire, True
        w = bytearray(wire)
        for _ in range(rng.randrange(1, 4)):
            # Inside the frame, delimiters included: a flipped delimiter
            # merges two frames, which the next frame's own leading
            # delimiter survives.
            i = rng.randrange(len(w))
            w[i] ^= 1 << rng.randrange(8)
        return bytes(w), bytes(w) == wire

    _check_line(seed, flip)


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_dropped_bytes_inside_frames_are_dropped(seed: int) -> None:
    def drop(rng: random.Random, wire: bytes):
        if rng.random() < 0.5:
            return wire, True
        w = bytearray(wire)
        for _ in range(rng.randrange(1, 3)):
            # Between the delimiters: a lost trailing delimiter alone is
            # harmless, the next frame's leading one ends the frame.
            del w[rng.randrange(1, len(w) - 1)]
        return bytes(w), False

    _check_line(seed, drop)


def test_lost_trailing_delimiter_is_harmless() -> None:
    # The next frame's leading delimiter ends the frame just as well.
    wire = encode(b"first")[:-1] + encode(b"second")
    dec = FrameDecoder()
    assert dec.feed(wire) == [b"first", b"second"]
    assert dec.dropped() == 0


def test_truncated_frame_at_the_end_of_the_stream_is_held_not_delivered() -> None:
    dec = FrameDecoder()
    wire = encode(b"complete") + encode(b"half")[:-3]
    assert dec.feed(wire) == [b"complete"]
    assert dec.pending() > 0
    # The sender restarts: its next frame's leading delimiter ends the stub.
    assert dec.feed(encode(b"next")) == [b"next"]
    assert dec.dropped() == 1


# --- property tests and fuzzing -------------------------------------------


def _reference_cobs_decode(seg: bytes) -> bytes | None:
    """Textbook COBS decoding of one zero-free segment (None if invalid)."""
    out = bytearray()
    i = 0
    while i < len(seg):
        code = seg[i]
        if i + code > len(seg):
            return None
        out += seg[i + 1 : i + code]
        i += code
        if code != 0xFF and i < len(seg):
            out.append(0)
    return bytes(out)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=FRAME_PAYLOAD_MAX_BYTES))
def test_any_payload_round_trips(payload: bytes) -> None:
    wire = encode(payload)
    assert len(wire) == encoded_len(len(payload)) or len(wire) < encoded_len(len(payload))
    assert 0 not in wire[1:-1]
    assert FrameDecoder().feed(wire) == [payload]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_crc_matches_binascii_crc_hqx(data: bytes) -> None:
    # The pure-Python table (MicroPython's path) against CPython's C code.
    assert crc16_py_into(data, len(data)) == binascii.crc_hqx(data, 0xFFFF) == crc16(data)
    half = len(data) // 2
    assert crc16_py_into(data[half:], len(data) - half, crc16_py_into(data, half)) == crc16(data)


_streams = st.one_of(
    st.binary(max_size=3000),
    # Mostly-valid streams: frames with damage, so the decoder's deeper
    # states are reached, not only garbage.
    st.lists(
        st.tuples(st.binary(max_size=300), st.binary(max_size=8), st.integers(0, 400)),
        max_size=12,
    ).map(
        lambda parts: b"".join(
            (lambda w: w[:cut] + noise + w[cut:])(encode(p)) for p, noise, cut in parts
        )
    ),
)


@settings(max_examples=500, deadline=None)
@given(_streams, st.integers(1, 64))
def test_any_byte_stream_yields_only_valid_frames_or_counted_drops(data: bytes, chunk: int) -> None:
    whole = FrameDecoder(max_payload=256)
    frames = whole.feed(data)
    # Fed one byte at a time and in arbitrary chunks: the same result.
    for step in (1, chunk):
        dec = FrameDecoder(max_payload=256)
        got: list[bytes] = []
        for i in range(0, len(data), step):
            got.extend(dec.feed(data[i : i + step]))
        assert got == frames and dec.drops == whole.drops
    # Every complete non-empty segment is exactly one delivery or one drop,
    # and every delivery is that segment's valid COBS with a matching CRC.
    segments = [s for s in data.split(b"\x00")[:-1] if s]
    assert whole.delivered + whole.dropped() == len(segments)
    valid = []
    for seg in segments:
        raw = _reference_cobs_decode(seg)
        if raw is None or len(raw) < 2 or len(raw) > 258:
            continue
        if crc16(raw[:-2]) == int.from_bytes(raw[-2:], "big"):
            valid.append(raw[:-2])
    assert frames == valid
