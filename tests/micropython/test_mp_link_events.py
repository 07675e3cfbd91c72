"""The device names what went wrong with its broker (micropython_port/mqtt.py,
Rule 7; micropython_port/mqtt_tls.py): the whole device (``main.py`` from
the ``.mpy`` build, real MicroPython unix port) against a real Mosquitto,
its TLS listener with a CA made here, a closed port and an unresolvable
name. Each case shows one specific event and never a telemetry message;
TLS failures never fall back to plain TCP (no other connection result
appears).
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import broker as broker_mod
from moteseal.keys.provision import Bundle, write_bundle
from tests.micropython.test_mp_device import (  # noqa: F401  (fixtures)
    DEVICE, PEER, Fleet, Peer, fleet, mqtt_setup, run_device)
from tests.serial_fixtures import wait_for

pytestmark = [pytest.mark.micropython, pytest.mark.mosquitto, pytest.mark.timeout(300)]

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
RUN = ("--count", "3", "--interval-ms", "200", "--run-ms", "4000")


def _bundle(fleet: Fleet, path: Path, **link: Any) -> Path:
    write_bundle(path, Bundle(DEVICE.encode(), [(PEER.encode(), [fleet.pub])], fleet.psk, SUITE,
                              {"kind": "mqtt", "host": "127.0.0.1", **link}))
    return path


def _events(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(e["event"], e["detail"]) for e in events
            if e["event"] not in ("handshake_sent",)]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    """A CA and server certificates for ``localhost`` (EC P-256, small)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_key, self.ca = self._ca("moteseal test CA")
        self.other_key, self.other_ca = self._ca("another CA")

    def _ca(self, cn: str) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(self.now - datetime.timedelta(days=1))
                .not_valid_after(self.now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def server(self, name: str, days: tuple[int, int] = (-1, 30)) -> tuple[Path, Path, bytes]:
        """(cert file, key file, DER) for ``name``, valid ``days`` from now."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(self.now + datetime.timedelta(days=days[0]))
                .not_valid_after(self.now + datetime.timedelta(days=days[1]))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        tag = f"{name}{days[0]}{days[1]}"
        crt, kf = self.root / f"{tag}.crt", self.root / f"{tag}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption()))
        kf.chmod(0o600)
        return crt, kf, cert.public_bytes(serialization.Encoding.DER)

    def ca_der(self, other: bool = False) -> bytes:
        return (self.other_ca if other else self.ca).public_bytes(serialization.Encoding.DER)


def _tls_broker(mosquitto, tmp_path: Path, pki: Pki, days: tuple[int, int] = (-1, 30)):
    crt, key, der = pki.server("localhost", days)
    port = broker_mod.free_port()
    b = mosquitto(auth=True, accounts={"gw": "gateway", PEER: "device", DEVICE: "device"},
                  extra=[f"listener {port} 127.0.0.1", f"certfile {crt}", f"keyfile {key}"])
    assert wait_for(lambda: _listening(port), timeout=10)
    return b, port, der


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_wrong_password_is_named_by_its_connack_code(mqtt_setup, fleet, tmp_path) -> None:  # noqa: F811
    broker, peer = mqtt_setup
    bundle = _bundle(fleet, tmp_path / "b", port=broker.port, username=DEVICE, password="wrong")
    summary, events = run_device(fleet, bundle, tmp_path / "ctr", *RUN)
    assert ("mqtt_refused", "not_authorized") in _events(events), events
    assert summary["data"] == 0 and peer.telemetry() == []


def test_unknown_user_without_password_is_named(mqtt_setup, fleet, tmp_path) -> None:  # noqa: F811
    broker, peer = mqtt_setup
    bundle = _bundle(fleet, tmp_path / "b", port=broker.port)
    _, events = run_device(fleet, bundle, tmp_path / "ctr", *RUN)
    assert _events(events)[0][0] == "mqtt_refused", events
    assert _events(events)[0][1] in ("not_authorized", "bad_credentials")


def test_closed_port_is_connection_refused_at_once(fleet, tmp_path) -> None:  # noqa: F811
    port = broker_mod.free_port()
    bundle = _bundle(fleet, tmp_path / "b", port=port, username=DEVICE, password="x")
    _, events = run_device(fleet, bundle, tmp_path / "ctr", *RUN)
    assert _events(events)[0] == ("connection_refused", None), events
    # Named once, not once per retry (Rule 7).
    assert _events(events).count(("connection_refused", None)) == 1


def test_unresolvable_host_is_a_dns_failure(fleet, tmp_path) -> None:  # noqa: F811
    bundle = _bundle(fleet, tmp_path / "b", port=1883, username=DEVICE, password="x")
    _, events = run_device(fleet, bundle, tmp_path / "ctr", *RUN, "--host", "no-such-host.invalid")
    assert _events(events)[0][0] == "dns_failed", events


def test_tls_delivers_with_the_ca_and_with_a_pin(mosquitto, gateway_process, fleet, pki,  # noqa: F811
                                                  tmp_path) -> None:
    broker, port, der = _tls_broker(mosquitto, tmp_path, pki)
    gateway_process(broker)
    peer = Peer(fleet, broker)
    try:
        creds = {"username": DEVICE, "password": broker.passwords[DEVICE]}
        ca = _bundle(fleet, tmp_path / "ca", port=port, ca=pki.ca_der(), server_name="localhost",
                     **creds)
        summary, events = run_device(fleet, ca, tmp_path / "ctr", "--count", "3",
                                     "--interval-ms", "50", "--linger-ms", "200", heap="256k")
        assert summary["data"] == 2 and summary["handshakes"] == 1, events
        assert wait_for(lambda: len(peer.telemetry()) == 3, timeout=20)
        pin = _bundle(fleet, tmp_path / "pin", port=port, pin=hashlib.sha256(der).digest(),
                      **creds)
        summary, events = run_device(fleet, pin, tmp_path / "ctr", "--count", "2",
                                     "--interval-ms", "50", "--linger-ms", "200", heap="256k")
        assert summary["data"] == 1, events
        assert wait_for(lambda: len(peer.telemetry()) == 5, timeout=20)
    finally:
        peer.close()


@pytest.mark.parametrize("case, detail", [
    ("wrong_ca", "untrusted"),
    ("expired", "expired"),
    ("wrong_name", "name_mismatch"),
    ("wrong_pin", "pin_mismatch"),
])
def test_tls_failures_are_named_and_never_fall_back_to_tcp(mosquitto, fleet, pki, tmp_path,  # noqa: F811
                                                           case: str, detail: str) -> None:
    days = (-10, -1) if case == "expired" else (-1, 30)
    broker, port, der = _tls_broker(mosquitto, tmp_path, pki, days)
    link: dict[str, Any] = {"port": port, "username": DEVICE, "password": broker.passwords[DEVICE],
                            "ca": pki.ca_der(other=case == "wrong_ca"), "server_name": "localhost"}
    if case == "wrong_name":
        link["server_name"] = "broker.example"
    if case == "wrong_pin":
        del link["ca"]
        link["pin"] = hashlib.sha256(der + b"x").digest()
    bundle = _bundle(fleet, tmp_path / case, **link)
    summary, events = run_device(fleet, bundle, tmp_path / "ctr", *RUN, heap="256k")
    assert _events(events)[0] == ("tls_failed", detail), events
    assert summary["data"] == 0
    # Every attempt failed the same way: no other connection result (a
    # plain-TCP fallback would show as not_mqtt or a CONNACK refusal).
    assert {e for e in _events(events) if e[0] != "read_failed"} == {("tls_failed", detail)}


def test_plain_tcp_to_the_tls_port_is_not_mqtt(mosquitto, fleet, pki, tmp_path) -> None:  # noqa: F811
    broker, port, _ = _tls_broker(mosquitto, tmp_path, pki)
    bundle = _bundle(fleet, tmp_path / "b", port=port, username=DEVICE,
                     password=broker.passwords[DEVICE])
    _, events = run_device(fleet, bundle, tmp_path / "ctr", *RUN)
    assert _events(events)[0] in (("not_mqtt", "connack"), ("connection_closed", "connack")), events


def test_a_broker_that_never_answers_is_a_connack_timeout(fleet, tmp_path) -> None:  # noqa: F811
    """A listener that accepts the TCP connection and stays silent (a hung
    broker): the device names the missing CONNACK, not a bare timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    try:
        bundle = _bundle(fleet, tmp_path / "b", port=srv.getsockname()[1], username=DEVICE,
                         password="x")
        _, events = run_device(fleet, bundle, tmp_path / "ctr", "--count", "3",
                               "--interval-ms", "200", "--run-ms", "7000")
        assert _events(events)[0] == ("timeout", "connack"), events
    finally:
        srv.close()
