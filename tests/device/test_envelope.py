"""The device-side envelope codec against cbor2, both ways, plus fuzzing and
byte tables."""

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from device import envelope as E
from device.errors import DecodeError, LocalError

ids = st.binary(min_size=1, max_size=16)
sids = st.integers(min_value=0, max_value=E.SID_MAX)
nonces = st.integers(min_value=0, max_value=E.NONCE_MAX)
msgs = st.binary(max_size=1100)


@st.composite
def envelopes(draw):
    head = draw(st.sampled_from([E.HEAD_HS1, E.HEAD_HS2, E.HEAD_DATA, E.HEAD_HINT]))
    src, dst, sid = draw(ids), draw(ids), draw(sids)
    if head == E.HEAD_DATA:
        return [head, src, dst, sid, draw(nonces), draw(msgs)]
    if head == E.HEAD_HINT:
        return [head, src, dst, sid, draw(st.integers(min_value=0, max_value=2**32))]
    return [head, src, dst, sid, draw(msgs)]


def ours(fields):
    if fields[0] == E.HEAD_DATA:
        return E.encode(fields[0], fields[1], fields[2], fields[3], fields[5], nonce=fields[4])
    return E.encode(*fields[:5])


def as_list(env):
    f = [env.head, env.src, env.dst, env.sid]
    if env.type == E.DATA:
        f.append(env.nonce)
    f.append(env.reason if env.type == E.HINT else env.msg)
    return f


@settings(max_examples=300, deadline=None)
@given(envelopes())
def test_our_encoding_is_what_cbor2_writes_canonically(fields):
    data = ours(fields)
    assert data == cbor2.dumps(fields, canonical=True)
    assert cbor2.loads(data) == fields


@settings(max_examples=300, deadline=None)
@given(envelopes())
def test_we_decode_what_cbor2_encodes(fields):
    data = cbor2.dumps(fields, canonical=True)
    assert as_list(E.decode(data, limit=2000)) == fields


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    try:
        env = E.decode(data)
    except DecodeError:
        return
    # Whatever we accept, cbor2 reads as the same canonical array.
    assert cbor2.dumps(cbor2.loads(data), canonical=True) == data
    assert as_list(env) == cbor2.loads(data)


@settings(max_examples=200, deadline=None)
@given(envelopes(), st.data())
def test_every_prefix_and_every_extension_is_refused(fields, data):
    enc = ours(fields)
    if len(enc) > E.ENVELOPE_MAX_BYTES:
        return
    cut = data.draw(st.integers(min_value=0, max_value=len(enc) - 1))
    with pytest.raises(DecodeError):
        E.decode(enc[:cut])
    with pytest.raises(DecodeError):
        E.decode(enc + b"\x00")


# Byte table: a data envelope from "s1" to "hub", sid 3, nonce 300, 2-byte ct.
DATA_BYTES = bytes.fromhex(
    "86"      # array(6)
    "06"      # head: version 1 << 2 | type 2 (data)
    "427331"  # bstr(2) "s1"
    "43687562"  # bstr(3) "hub"
    "03"      # sid 3
    "19012c"  # uint16 300 (nonce)
    "42abcd"  # bstr(2) ciphertext
)


def test_data_envelope_byte_table():
    assert E.encode(E.HEAD_DATA, b"s1", b"hub", 3, b"\xab\xcd", nonce=300) == DATA_BYTES
    env = E.decode(DATA_BYTES)
    assert (env.type, env.src, env.dst, env.sid, env.nonce, env.msg) == \
        (E.DATA, b"s1", b"hub", 3, 300, b"\xab\xcd")
    assert env.msg_off == len(DATA_BYTES) - 2  # associated data = the 13 header bytes


@pytest.mark.parametrize("bad,why", [
    (bytes.fromhex("8606427331436875621803190 12c42abcd".replace(" ", "")), "non-canonical"),  # sid 3 as 0x18 03
    (bytes.fromhex("860a427331436875620319012c42abcd"), "version"),  # version 2
    (bytes.fromhex("8506427331436875620342abcd"), "item count"),  # data with 5 items
    (bytes.fromhex("86064073436875620319012c42abcd"), "id"),  # empty src
    (bytes.fromhex("9f06427331436875620319012c42abcdff"), "array"),  # indefinite array
    (DATA_BYTES + b"\x00", "trailing"),
    (DATA_BYTES[:-1], "truncated"),
])
def test_specific_decode_errors(bad, why):
    with pytest.raises(DecodeError, match=why):
        E.decode(bad)


def test_oversized_envelope_is_refused_before_parsing():
    big = E.encode(E.HEAD_DATA, b"a", b"b", 0, bytes(1300), nonce=0)
    with pytest.raises(DecodeError, match="oversized"):
        E.decode(big)


def test_encoder_refuses_bad_ids():
    with pytest.raises(LocalError):
        E.encode(E.HEAD_HS1, b"x" * 17, b"hub", 0, b"")


def test_overhead_meets_the_budget():
    # nonce < 2^16, sid < 24, plaintext < 240 bytes: <= 26 bytes beyond
    # plaintext and ids, 16 of them the tag.
    for pt_len in (0, 1, 23, 64, 239):
        for nonce in (0, 23, 255, 65535):
            env = E.encode(E.HEAD_DATA, b"sensor-1", b"hub", 23, bytes(pt_len + 16), nonce=nonce)
            assert len(env) - pt_len - 8 - 3 <= 26
