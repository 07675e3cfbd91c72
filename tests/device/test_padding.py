"""Padding plaintexts to size buckets (device/padding.py, device/session.py
Rule 9, device/peer.py Rule 9): what the envelope length still shows, the
round trip, refusals of malformed padding, and devices that do not pad."""

from __future__ import annotations

import pytest

from device import envelope as E
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import DecodeError, ReplayError
from device.padding import (DEFAULT_BUCKETS, PadPolicy, pad_bytes, pad_into, padded_size,
                            unpad_len)
from device.session import EV_COUNTER_BEHIND, EV_DATA, EV_HANDSHAKE, DeviceSession
from moteseal.crypto.backend_nacl import NaclBackend
from tests.pair import Pair

READINGS = [b"", b"t=1", b"t=21.5C", b'{"t":21.5,"h":40}', bytes(31 - 1), b"\x80" * 20,
            b"x" * 31]  # all below 32 bytes: one bucket (31 bytes + the mark = 32)


def padded_pair(pad=None, **opts):
    p = Pair(**opts)
    pad = pad or PadPolicy()
    p.directory.add(b"sensor-1", p.psk, pad=pad)
    p.device = p.new_device(pad=pad, **opts)
    return p


def test_padded_size_picks_the_smallest_bucket_and_rounds_long_messages_up() -> None:
    assert [padded_size(n, DEFAULT_BUCKETS) for n in (0, 31, 32, 63, 64, 200, 255)] == \
        [32, 32, 64, 64, 128, 256, 256]
    assert padded_size(256, DEFAULT_BUCKETS) == 512  # past the top: multiples of it
    assert padded_size(600, DEFAULT_BUCKETS) == 768


@pytest.mark.parametrize("n", list(range(0, 70)) + [255, 256, 300])
def test_padding_round_trips_every_length_and_content(n: int) -> None:
    for fill in (0x00, 0x80, 0xFF):
        pt = bytes([fill]) * n
        padded = pad_bytes(pt, DEFAULT_BUCKETS)
        assert len(padded) == padded_size(n, DEFAULT_BUCKETS)
        assert unpad_len(padded, 0, len(padded)) == n
        assert padded[:n] == pt


@pytest.mark.parametrize("bad", [b"", bytes(32), b"abc" + bytes(29), b"\x80\x01" + bytes(30),
                                 b"\x7f" + bytes(31)])
def test_malformed_padding_is_a_decode_error(bad: bytes) -> None:
    with pytest.raises(DecodeError, match="malformed padding"):
        unpad_len(bad, 0, len(bad))


def test_pad_into_writes_only_inside_the_callers_range() -> None:
    buf = bytearray(b"\xee" * 48)
    buf[4:7] = b"abc"
    assert pad_into(buf, 4, 3, 32) == 32
    assert buf[:4] == b"\xee" * 4 and buf[36:] == b"\xee" * 12
    assert bytes(buf[4:36]) == b"abc\x80" + bytes(28)


def test_readings_of_different_content_and_length_in_one_bucket_make_envelopes_of_equal_length() -> None:
    p = padded_pair()
    hs1_lens = set()
    for r in READINGS[:3]:
        hs1 = p.device.handshake(r)
        hs1_lens.add(len(hs1))
        got = p.peer.receive(hs1)
        assert got.payload == r
        assert p.device.receive(got.reply)[0] == EV_HANDSHAKE
    assert len(hs1_lens) == 1
    up, down = set(), set()
    for r in READINGS:
        env = p.device.send(r)
        up.add(len(env))
        assert p.peer.receive(env).payload == r
        d = p.peer.send(b"sensor-1", r)
        down.add(len(d))
        assert p.device.receive(d) == (EV_DATA, r)
    assert len(up) == 1 and len(down) == 1
    # The next bucket shows as the next size, nothing finer.
    assert len(p.device.send(b"x" * 32)) == min(up) + 32


def test_per_message_and_per_kind_buckets() -> None:
    p = padded_pair(PadPolicy(up=(16, 48), down=(64,), hs=(8,)))
    hs1 = p.device.handshake(b"")
    plain = Pair()  # the same envelope without padding
    plain_hs1 = plain.device.handshake(b"")
    assert len(hs1) - len(plain_hs1) == 8
    r = p.peer.receive(hs1)
    p.device.receive(r.reply)
    assert len(p.device.send(b"a")) - len(p.device.send(b"a", buckets=(48,))) == 16 - 48
    assert len(p.peer.send(b"sensor-1", b"a")) - len(p.peer.send(b"sensor-1", b"a" * 60)) == 0


def test_message2_accept_and_counter_notice_have_equal_length_when_padded() -> None:
    p = padded_pair()
    accept = p.handshake(b"r").reply
    dev = DeviceSession(p.backend, b"sensor-1", b"hub", p.static[1], p.psk,
                        Msg1Counter(NonpersistingCounterStore()), pad=PadPolicy())  # store wiped
    with pytest.raises(ReplayError) as ei:
        p.peer.receive(dev.handshake(b"r"))
    notice = ei.value.reply
    assert len(notice) == len(accept)
    assert dev.receive(notice)[0] == EV_COUNTER_BEHIND


def test_a_malformed_padding_in_data_is_refused_and_changes_nothing() -> None:
    p = padded_pair()
    p.handshake(b"")
    pad = p.device.pad
    p.device.pad = None  # a sender that seals without padding: authentic, malformed
    bad = p.device.send(b"t=21.5C")
    p.device.pad = pad
    tr = p.peer.sessions(b"sensor-1")[0][1]
    hi = tr.window.hi
    with pytest.raises(DecodeError, match="malformed padding"):
        p.peer.receive(bad)
    assert tr.window.hi == hi  # the nonce was not committed (padding.py Rule 2)
    good = p.device.send(b"t=21.6C")
    assert p.peer.receive(good).payload == b"t=21.6C"
    # Downlink the same way round.
    tr = p.peer.sessions(b"sensor-1")[0][1]
    plain = bytearray(E.HEADER_MAX_BYTES + 32)
    off = E.encode_header_into(plain, E.HEAD_DATA, b"hub", b"sensor-1", p.device.sid,
                               tr.send_nonce, 7 + 16)
    n = off + tr.encrypt_into(plain, off, b"cmd=off", 0, 7, plain, off)
    with pytest.raises(DecodeError, match="malformed padding"):
        p.device.receive(bytes(plain[:n]))
    assert p.device.receive(p.peer.send(b"sensor-1", b"cmd=on")) == (EV_DATA, b"cmd=on")


def test_a_message1_with_malformed_padding_is_refused_as_malformed() -> None:
    p = Pair()
    p.directory.add(b"sensor-1", p.psk, pad=PadPolicy())  # the hub pads; this device does not
    with pytest.raises(DecodeError) as ei:
        p.peer.receive(p.device.handshake(b"t=21.5C"))
    assert ei.value.reason == "malformed"
    assert p.directory.refusals == {"malformed": 1}
    assert p.directory.counter_get(b"sensor-1") == -1  # nothing stored


def test_a_device_without_padding_keeps_working_beside_padded_ones() -> None:
    p = Pair()  # sensor-1: provisioned before padding; no pad anywhere
    p.directory.add(b"sensor-2", p.psk, pad=PadPolicy())
    d2 = DeviceSession(p.backend, b"sensor-2", b"hub", p.static[1], p.psk,
                       Msg1Counter(NonpersistingCounterStore()), pad=PadPolicy())
    r1 = p.handshake(b"old")
    assert r1.payload == b"old"
    r2 = p.peer.receive(d2.handshake(b"new"))
    assert r2.payload == b"new" and d2.receive(r2.reply)[0] == EV_HANDSHAKE
    e1, e2 = p.device.send(b"abc"), d2.send(b"abc")
    # Ids of one length: 29 padding bytes, and the ciphertext bstr head takes
    # two bytes from 24 bytes of ciphertext on (docs/protocol.md).
    assert len(e2) - len(e1) == 32 - 3 + 1
    assert p.peer.receive(e1).payload == b"abc" and p.peer.receive(e2).payload == b"abc"
    assert p.device.receive(p.peer.send(b"sensor-1", b"x")) == (EV_DATA, b"x")
    assert d2.receive(p.peer.send(b"sensor-2", b"x")) == (EV_DATA, b"x")


def test_the_bundle_says_whether_a_device_pads_and_old_bundles_do_not() -> None:
    import cbor2

    from device.bundle import BundleError
    from moteseal.keys.provision import Bundle, decode_bundle, device_session, encode_bundle

    peers = [(b"hub", [bytes(range(32))])]
    link = {"kind": "none"}
    suite = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
    old = decode_bundle(encode_bundle(Bundle(b"sensor-1", peers, bytes(32), suite, link)))
    assert old.pad is None
    assert b"pad" not in encode_bundle(old)  # unchanged bytes for devices that do not pad
    pol = PadPolicy(up=(32, 64), down=(128,), hs=(16,))
    data = encode_bundle(Bundle(b"sensor-1", peers, bytes(32), suite, link, pad=pol))
    b = decode_bundle(data)
    assert (b.pad.hs, b.pad.up, b.pad.down) == ((16,), (32, 64), (128,))
    dev = device_session(NaclBackend(), b, Msg1Counter(NonpersistingCounterStore()))
    assert dev.pad is b.pad
    # A malformed pad field is refused like any other malformed field.
    from device.bundle import CHECK_BYTES
    import hashlib
    for bad in ({"up": [64, 32]}, {"sideways": [32]}, {"up": []}, [32]):
        body = cbor2.loads(data)
        del body["check"]
        body["pad"] = bad
        body["check"] = hashlib.sha256(cbor2.dumps(body, canonical=True)).digest()[:CHECK_BYTES]
        with pytest.raises(BundleError):
            decode_bundle(cbor2.dumps(body, canonical=True))
