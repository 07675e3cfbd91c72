"""``moteseal provision --ca-file / --pin-cert / --server-name``: the TLS
fields of a bundle (device/bundle.py) from PEM or DER files, read back by
the device's own reader; old bundles without them stay readable; bad
input is a specific error with an exit code, never a traceback."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device.bundle import BundleError, decode_bundle
from moteseal.keys.provision import Bundle, encode_bundle, read_bundle
from tests.host.test_cli_keys import Cli, cli  # noqa: F401  (fixture)


def _cert(cn: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


def test_provision_stores_the_ca_as_der_and_the_server_name(cli: Cli) -> None:  # noqa: F811
    ca = _cert("ca")
    der = ca.public_bytes(serialization.Encoding.DER)
    (cli.tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cli("keygen", "--out", "hub1.key", "--peer", "hub1")
    doc = cli.json("provision", "s1", "--peer", "hub1", "--host", "10.0.0.2", "--port", "8883",
                   "--ca-file", "ca.pem", "--server-name", "mqtt.example.org")
    link = read_bundle("s1.bundle").link
    assert link["ca"] == der and link["server_name"] == "mqtt.example.org" and "pin" not in link
    assert doc["link"]["ca_sha256"] == hashlib.sha256(der).hexdigest() and "ca" not in doc["link"]


def test_provision_pins_a_certificate_from_a_der_file(cli: Cli) -> None:  # noqa: F811
    server = _cert("mqtt.example.org")
    der = server.public_bytes(serialization.Encoding.DER)
    (cli.tmp / "server.der").write_bytes(der)
    cli("keygen", "--out", "hub1.key", "--peer", "hub1")
    doc = cli.json("provision", "s1", "--peer", "hub1", "--host", "mqtt.example.org",
                   "--pin-cert", "server.der")
    assert read_bundle("s1.bundle").link["pin"] == hashlib.sha256(der).digest()
    assert doc["link"]["pin_sha256"] == hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("args, words", [
    (["--server-name", "x.example"], "needs --ca-file or --pin-cert"),
    (["--ca-file", "junk.pem"], "not a PEM or DER certificate"),
    (["--ca-file", "two.pem"], "one certificate, not 2"),
    (["--ca-file", "ca.pem", "--link", "serial", "--serial-port", "/dev/ttyS1"], "need --link mqtt"),
])
def test_provision_refuses_bad_tls_input(cli: Cli, args: list[str], words: str) -> None:  # noqa: F811
    pem = _cert("ca").public_bytes(serialization.Encoding.PEM)
    (cli.tmp / "ca.pem").write_bytes(pem)
    (cli.tmp / "two.pem").write_bytes(pem + _cert("b").public_bytes(serialization.Encoding.PEM))
    (cli.tmp / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    cli("keygen", "--out", "hub1.key", "--peer", "hub1")
    r = cli("provision", "s1", "--peer", "hub1", *args, code=2 if "link" in words else 3)
    assert words in r.output
    assert not (cli.tmp / "s1.bundle").exists()


def test_old_bundles_without_tls_fields_stay_readable_and_bad_pins_are_refused() -> None:
    base = Bundle(b"s1", [(b"hub1", [b"\x01" * 32])], b"\x02" * 32, "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                  {"kind": "mqtt", "host": "h", "port": 1883})
    assert decode_bundle(encode_bundle(base)).link == {"kind": "mqtt", "host": "h", "port": 1883}
    for link, words in (({"pin": b"\x00" * 31}, "SHA-256"), ({"server_name": "h"}, "without ca or pin"),
                        ({"ca": "not bytes"}, "malformed")):
        bad = Bundle(base.device_id, base.peers, base.psk, base.suite, {**base.link, **link})
        with pytest.raises(BundleError, match=words):
            encode_bundle(bad)
    # A TLS bundle decodes with every field.
    tls = Bundle(base.device_id, base.peers, base.psk, base.suite,
                 {**base.link, "ca": b"\x30" * 600, "pin": b"\x11" * 32, "server_name": "h.example"})
    assert cbor2.loads(encode_bundle(tls))["link"]["server_name"] == "h.example"
