"""The device-side bundle reader (``device.bundle``): it agrees with cbor2,
accepts only canonical CBOR, and runs unchanged under real MicroPython."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from device import bundle as core
from device.bundle import BundleError
from moteseal.keys.provision import Bundle, encode_bundle, write_bundle
from tests.mp_helpers import run_mp

ID = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=16)
ASCII = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
KEY = st.binary(min_size=32, max_size=32)
LINK = st.one_of(
    st.fixed_dictionaries({"kind": st.just("mqtt")}, optional={"host": ASCII, "port": st.integers(1, 65535),
                                                               "username": ASCII, "password": ASCII}),
    st.fixed_dictionaries({"kind": st.just("serial")}, optional={"port": ASCII, "baud": st.integers(1, 10**7)}),
    st.just({"kind": "none"}),
)
BUNDLES = st.builds(
    lambda dev, peers, psk, suite, link, gen: Bundle(dev.encode(), peers, psk, suite, link, gen),
    ID,
    st.lists(st.tuples(ID.map(str.encode), st.lists(KEY, min_size=1, max_size=3, unique=True)),
             min_size=1, max_size=3, unique_by=lambda p: p[0]),
    st.binary(min_size=32, max_size=32),
    st.sampled_from(core.SUITES),
    LINK,
    st.integers(1, 2**40),
)


def fields(b: Bundle) -> tuple:
    return (b.device_id, [(p, list(k)) for p, k in b.peers], b.psk, b.suite, b.link, b.generation)


@settings(max_examples=200, deadline=None)
@given(BUNDLES)
def test_reader_decodes_what_cbor2_encodes(b: Bundle) -> None:
    data = encode_bundle(b)
    assert fields(core.decode_bundle(data)) == fields(b)
    assert cbor2.dumps(cbor2.loads(data), canonical=True) == data


@settings(max_examples=200, deadline=None)
@given(BUNDLES, st.data())
def test_a_mutation_the_reader_accepts_is_canonical_cbor_with_the_same_fields(b: Bundle, data: st.DataObject) -> None:
    good = bytearray(encode_bundle(b))
    i = data.draw(st.integers(0, len(good) - 1))
    good[i] = data.draw(st.integers(0, 255))
    try:
        got = core.decode_bundle(bytes(good))
    except BundleError:
        return
    # Only a change the checksum cannot see (none, in practice) gets here;
    # then cbor2 must read exactly the same thing.
    doc = cbor2.loads(bytes(good))
    assert cbor2.dumps(doc, canonical=True) == bytes(good)
    assert got.psk == doc["psk"] and got.device_id == doc["device"]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_arbitrary_bytes_raise_only_bundle_error(data: bytes) -> None:
    try:
        core.decode_bundle(data)
    except BundleError:
        pass


def _sample() -> Bundle:
    return Bundle(b"sensor-7", [(b"hub1", [os.urandom(32), os.urandom(32)])], os.urandom(32),
                  "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                  {"kind": "mqtt", "host": "broker.local", "port": 8883, "username": "s7", "password": "pw"}, 2)


def test_non_canonical_encodings_are_refused() -> None:
    b = _sample()
    good = encode_bundle(b)
    doc = cbor2.loads(good)
    # Same content, keys in insertion order instead of canonical order.
    shuffled = cbor2.dumps(dict(reversed(list(doc.items()))))
    assert cbor2.loads(shuffled) == doc
    with pytest.raises(BundleError, match="canonical order"):
        core.decode_bundle(shuffled)
    # A generation of 2 written in two bytes (0x18 0x02) instead of one.
    i = good.index(b"jgeneration") + len(b"jgeneration")
    assert good[i] == 0x02
    long_form = good[:i] + b"\x18\x02" + good[i + 1 :]
    with pytest.raises(BundleError, match="non-canonical"):
        core.decode_bundle(long_form)
    with pytest.raises(BundleError, match="trailing"):
        core.decode_bundle(good + b"\x00")


def test_non_ascii_text_is_refused_when_encoding() -> None:
    with pytest.raises(BundleError, match="ASCII"):
        encode_bundle(Bundle(b"s1", [(b"hub1", [os.urandom(32)])], os.urandom(32),
                             "Noise_NKpsk0_25519_ChaChaPoly_SHA256", {"kind": "mqtt", "password": "p\u00e4ss"}))


def test_unknown_fields_types_and_suites_are_refused() -> None:
    b = _sample()
    with pytest.raises(BundleError, match="suite"):
        encode_bundle(Bundle(b.device_id, b.peers, b.psk, "Noise_XX_25519_AESGCM_SHA256", b.link))
    with pytest.raises(BundleError, match="link"):
        encode_bundle(Bundle(b.device_id, b.peers, b.psk, b.suite, {"kind": "mqtt", "port": "8883"}))
    with pytest.raises(BundleError, match="peers"):
        encode_bundle(Bundle(b.device_id, [(b"hub1", [b"short"])], b.psk, b.suite, b.link))
    with pytest.raises(BundleError, match="device"):
        encode_bundle(Bundle(b"bad id", b.peers, b.psk, b.suite, b.link))


@pytest.mark.micropython
def test_micropython_reads_the_bundle_and_refuses_damage(tmp_path: Path) -> None:
    b = _sample()
    path = tmp_path / "s7.bundle"
    write_bundle(path, b)
    data = path.read_bytes()
    (tmp_path / "cut.bundle").write_bytes(data[:-9])
    flipped = bytearray(data)
    flipped[data.index(b.psk) + 3] ^= 0x04
    (tmp_path / "flip.bundle").write_bytes(bytes(flipped))
    out = run_mp(
        "import json\n"
        "from device.bundle import load_bundle, BundleError\n"
        "from binascii import hexlify\n"
        f"b = load_bundle({str(path)!r})\n"
        "res = {'device': b.device_id.decode(), 'peer': b.peer_id.decode(),\n"
        "       'keys': [hexlify(k).decode() for k in b.peer_keys], 'psk': hexlify(b.psk).decode(),\n"
        "       'suite': b.suite, 'link': b.link, 'gen': b.generation, 'errors': []}\n"
        f"for p in ({str(tmp_path / 'cut.bundle')!r}, {str(tmp_path / 'flip.bundle')!r}):\n"
        "    try:\n"
        "        load_bundle(p)\n"
        "        res['errors'].append(None)\n"
        "    except BundleError as e:\n"
        "        res['errors'].append(str(e))\n"
        "print(json.dumps(res))\n"
    )
    res = json.loads(out.strip().splitlines()[-1])
    assert res["device"] == "sensor-7" and res["peer"] == "hub1" and res["gen"] == 2
    assert res["keys"] == [k.hex() for k in b.peer_keys] and res["psk"] == b.psk.hex()
    assert res["suite"] == b.suite and res["link"] == b.link
    assert "truncated" in res["errors"][0] and "checksum" in res["errors"][1]
