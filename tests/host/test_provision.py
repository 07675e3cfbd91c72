"""Device bundles: round trips, permissions, truncation and tampering."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from moteseal.keys.keyfile import KeyPermissionError, generate_keypair, write_key_file
from moteseal.keys.provision import (
    Bundle,
    BundleError,
    decode_bundle,
    describe_bundle,
    encode_bundle,
    provision_device,
    read_bundle,
    write_bundle,
)
from moteseal.keys.registry import Registry

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"


def sample(**kw) -> Bundle:
    args = dict(
        device_id=b"sensor-7",
        peers=[(b"hub1", [os.urandom(32), os.urandom(32)])],
        psk=os.urandom(32),
        suite=SUITE,
        link={"kind": "mqtt", "host": "broker.local", "port": 8883, "username": "sensor-7", "password": "pw"},
        generation=3,
    )
    args.update(kw)
    return Bundle(**args)


def test_bundle_round_trip_keeps_every_field() -> None:
    b = sample()
    back = decode_bundle(encode_bundle(b))
    assert (back.device_id, back.peers, back.psk, back.suite, back.link, back.generation) == (
        b.device_id, b.peers, b.psk, b.suite, b.link, b.generation)
    assert back.peer_id == b"hub1" and back.peer_keys == b.peers[0][1]
    assert back.pinned_keys(b"hub1") == b.peers[0][1]
    with pytest.raises(KeyError):
        back.pinned_keys(b"other")


def test_bundle_is_versioned_cbor() -> None:
    doc = cbor2.loads(encode_bundle(sample()))
    assert doc["format"] == "moteseal-bundle" and doc["v"] == 1
    assert set(doc) == {"format", "v", "device", "generation", "peers", "psk", "suite", "link", "check"}


def test_serial_link_and_no_link_round_trip() -> None:
    for link in ({"kind": "serial", "port": "/dev/ttyUSB0", "baud": 115200}, {"kind": "none"}):
        assert decode_bundle(encode_bundle(sample(link=link))).link == link


def test_repr_and_describe_hide_secrets() -> None:
    b = sample()
    assert b.psk.hex() not in repr(b) and "pw" not in repr(b)
    d = describe_bundle(b)
    assert d["link"]["password"] == "(set)" and b.psk.hex() not in str(d)


def test_every_truncation_is_refused() -> None:
    data = encode_bundle(sample())
    for n in range(len(data)):
        with pytest.raises(BundleError):
            decode_bundle(data[:n], f"cut at {n}")


def test_every_bit_flip_is_refused() -> None:
    data = encode_bundle(sample())
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            with pytest.raises(BundleError):
                decode_bundle(bytes(bad), f"byte {i}")


def test_edited_fields_are_refused_even_with_a_recomputed_layout() -> None:
    doc = cbor2.loads(encode_bundle(sample()))
    for field, value in [("psk", os.urandom(32)), ("device", b"other"), ("suite", "Noise_NK_25519_ChaChaPoly_SHA256")]:
        edited = dict(doc, **{field: value})
        with pytest.raises(BundleError, match="checksum"):
            decode_bundle(cbor2.dumps(edited, canonical=True))
    with pytest.raises(BundleError, match="version"):
        decode_bundle(cbor2.dumps(dict(doc, v=2), canonical=True))
    with pytest.raises(BundleError, match="not a moteseal bundle"):
        decode_bundle(cbor2.dumps([1, 2, 3]))
    with pytest.raises(BundleError, match="larger"):
        decode_bundle(b"\xa0" * 5000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_bundle_error(data: bytes) -> None:
    try:
        decode_bundle(data)
    except BundleError:
        pass


def test_bundle_file_is_0600_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "s.bundle"
    old = os.umask(0)
    try:
        write_bundle(path, sample())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_bundle(path).device_id == b"sensor-7"
    os.chmod(path, 0o644)
    with pytest.raises(KeyPermissionError):
        read_bundle(path)


def test_truncated_bundle_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.bundle"
    write_bundle(path, sample())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated"):
        read_bundle(path)


def test_provision_device_pins_the_peer_keys_and_reprovisioning_changes_the_psk(tmp_path: Path) -> None:
    kp = generate_keypair()
    write_key_file(tmp_path / "h.key", kp)
    with Registry(tmp_path / "h.sqlite", create_for_peer=b"hub1") as reg:
        reg.add_peer_key(kp.pub, tmp_path / "h.key")
        rec, b = provision_device(reg, b"s1", SUITE, {"kind": "none"})
        assert b.peers == [(b"hub1", [kp.pub])] and reg.psk_for(b"s1") == b.psk
        rec2, b2 = provision_device(reg, b"s1", SUITE, {"kind": "none"}, replace=True)
        assert b2.psk != b.psk and reg.psk_for(b"s1") == b2.psk and b2.generation == 2
