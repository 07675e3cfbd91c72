"""`moteseal broker certs` makes a CA and a server certificate that a real
Mosquitto serves; `broker add-device --password-file` hands the password to
its consumer. Clients that verify against the CA connect; others do not."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import broker as broker_mod
from gateway.broker import LocalBroker
from moteseal.links.mqtt_link import LinkError, MqttLink

pytestmark = pytest.mark.mosquitto
ROOT = Path(__file__).resolve().parents[2]


def moteseal(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "moteseal.cli.main", *args], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    return r


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_certs_are_served_by_mosquitto_and_verified_against_the_ca(tmp_path: Path) -> None:
    certs, accounts = tmp_path / "certs", tmp_path / "broker"
    certs.mkdir()
    accounts.mkdir()
    doc = json.loads(moteseal("broker", "certs", "--out-dir", str(certs), "--dns", "localhost",
                              "--ip", "127.0.0.1", "--owner", "", "--json").stdout)
    assert doc["dns"] == ["localhost"] and doc["ip"] == ["127.0.0.1"]
    assert mode(certs / "ca.key") == 0o600 and mode(certs / "server.key") == 0o600
    assert mode(certs / "ca.crt") == 0o644 and mode(certs / "server.crt") == 0o644

    pw_file = tmp_path / "hub1.mqtt"
    r = moteseal("broker", "add-device", "hub1", "--dir", str(accounts), "--no-reload",
                 "--password-file", str(pw_file), "--owner", "")
    password = pw_file.read_text().strip()
    assert mode(pw_file) == 0o600 and len(password) >= 20
    assert password not in r.stdout + r.stderr  # written for its consumer, never printed

    tls_port = broker_mod.free_port()
    extra = [f"listener {tls_port} 127.0.0.1", f"certfile {certs / 'server.crt'}",
             f"keyfile {certs / 'server.key'}"]
    with LocalBroker(accounts, extra=extra) as b:
        # The peer's own link, verifying the broker against the new CA by name and by address.
        for host in ("localhost", "127.0.0.1"):
            link = MqttLink("hub1", host, tls_port, username="hub1", password=password,
                            tls=True, ca_file=str(certs / "ca.crt"))
            try:
                link.start(timeout=15)
            finally:
                link.close()
        # A client trusting another CA refuses this broker.
        other = tmp_path / "other"
        other.mkdir()
        moteseal("broker", "certs", "--out-dir", str(other), "--dns", "localhost", "--owner", "")
        link = MqttLink("hub1", "127.0.0.1", tls_port, username="hub1", password=password,
                        tls=True, ca_file=str(other / "ca.crt"))
        with pytest.raises(LinkError):
            link.start(timeout=5)
        link.close()
        # A wrong password is refused on the TLS listener too (the ACL set-up applies).
        link = MqttLink("hub1", "127.0.0.1", tls_port, username="hub1", password="wrong",
                        tls=True, ca_file=str(certs / "ca.crt"))
        with pytest.raises(LinkError):
            link.start(timeout=5)
        link.close()
        assert b.proc is not None and b.proc.poll() is None


def test_the_server_certificate_names_the_hosts_and_chains_to_the_ca(tmp_path: Path) -> None:
    moteseal("broker", "certs", "--out-dir", str(tmp_path), "--dns", "pi.local", "--ip", "192.0.2.7",
             "--days", "30", "--owner", "")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert len(ctx.get_ca_certs()) == 1
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pi.local"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 29 <= days <= 31
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_certs_refuses_to_overwrite_and_renew_keeps_the_ca(tmp_path: Path) -> None:
    moteseal("broker", "certs", "--out-dir", str(tmp_path), "--dns", "localhost", "--owner", "")
    ca_before = (tmp_path / "ca.crt").read_bytes()
    key_before = (tmp_path / "server.key").read_bytes()
    r = moteseal("broker", "certs", "--out-dir", str(tmp_path), "--dns", "localhost", "--json", code=2)
    assert "already exist" in json.loads(r.stdout)["error"]
    assert (tmp_path / "server.key").read_bytes() == key_before
    moteseal("broker", "certs", "--out-dir", str(tmp_path), "--dns", "localhost", "--renew", "--owner", "")
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "server.key").read_bytes() != key_before
    assert mode(tmp_path / "server.key") == 0o600
    moteseal("broker", "certs", "--out-dir", str(tmp_path), "--dns", "localhost", "--force", "--owner", "")
    assert (tmp_path / "ca.crt").read_bytes() != ca_before


@pytest.mark.parametrize("args, message", [
    (["--dns", "bad name"], "not a DNS name"),
    (["--ip", "300.1.1.1"], "not an IP address"),
    (["--renew", "--force"], "not both"),
    (["--renew"], "needs the CA"),
])
def test_certs_bad_input_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    r = moteseal("broker", "certs", "--out-dir", str(tmp_path), *args, code=2)
    assert message in r.stderr
    assert not (tmp_path / "server.key").exists()


def test_certs_and_add_device_refuse_a_missing_directory(tmp_path: Path) -> None:
    r = moteseal("broker", "certs", "--out-dir", str(tmp_path / "nosuch"), "--dns", "localhost", code=2)
    assert "does not exist" in r.stderr
    r = moteseal("broker", "add-device", "s1", "--dir", str(tmp_path / "nosuch"), "--no-reload", code=2)
    assert "does not exist" in r.stderr and not (tmp_path / "nosuch").exists()
    r = moteseal("broker", "add-device", "s1", "--dir", str(tmp_path), "--no-reload",
                 "--password-file", str(tmp_path / "nosuch" / "s1.mqtt"), code=2)
    assert not (tmp_path / "passwd").exists()
