"""``MqttLink.start`` names what went wrong, at once: a closed port, an
unresolvable host, a wrong password (CONNACK refusal) and a TLS listener
whose certificate is not trusted, each against the real thing (a free
loopback port, a ``.invalid`` name, Mosquitto with and without TLS), and
each well within the 10 s the start would otherwise wait."""

from __future__ import annotations

import time

import pytest

from gateway import broker as broker_mod
from moteseal.links.mqtt_link import LinkError, MqttLink
from tests.micropython.test_mp_link_events import Pki, _listening
from tests.serial_fixtures import wait_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]

FAST_S = 5.0  # well under the 10 s timeout: the failure was named, not waited out


def _start_fails(link: MqttLink) -> tuple[str, float]:
    t = time.monotonic()
    with pytest.raises(LinkError) as exc:
        link.start(timeout=10.0)
    return str(exc.value), time.monotonic() - t


def test_closed_port_is_connection_refused_at_once() -> None:
    msg, took = _start_fails(MqttLink("s1", "127.0.0.1", broker_mod.free_port()))
    assert "connection refused" in msg and took < FAST_S


def test_unresolvable_host_is_named() -> None:
    msg, took = _start_fails(MqttLink("s1", "no-such-host.invalid", 1883))
    assert "cannot resolve" in msg and took < FAST_S


def test_wrong_password_is_a_refusal_not_a_timeout(mosquitto) -> None:
    broker = mosquitto(auth=True, accounts={"s1": "device"})
    msg, took = _start_fails(MqttLink("s1", "127.0.0.1", broker.port, username="s1", password="wrong"))
    assert "refused by the broker" in msg and "timed out" not in msg and took < FAST_S


def test_untrusted_tls_certificate_is_named(mosquitto, tmp_path) -> None:
    pki = Pki(tmp_path)
    crt, key, _ = pki.server("localhost")
    port = broker_mod.free_port()
    mosquitto(auth=True, accounts={"s1": "device"},
              extra=[f"listener {port} 127.0.0.1", f"certfile {crt}", f"keyfile {key}"])
    assert wait_for(lambda: _listening(port), timeout=10)
    other = tmp_path / "other.pem"
    from cryptography.hazmat.primitives import serialization
    other.write_bytes(pki.other_ca.public_bytes(serialization.Encoding.PEM))
    msg, took = _start_fails(MqttLink("s1", "localhost", port, username="s1", password="x", tls=True,
                                      ca_file=str(other)))
    assert "TLS" in msg and "certificate" in msg and took < FAST_S
