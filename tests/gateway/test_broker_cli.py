"""`moteseal broker add-device / remove-device` edit the password and ACL
files and reload a running Mosquitto, and the production config runs."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway import broker as broker_mod
from gateway.broker_cli import broker_group

pytestmark = pytest.mark.mosquitto


def _run(*args: str) -> dict:
    result = CliRunner().invoke(broker_group, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _files(b) -> list[str]:
    return ["--dir", str(b.workdir), "--pid-file", str(b.pid_file)]


def test_add_device_lets_it_connect_and_publish_only_its_own_topic(mosquitto, mqtt_client):
    b = mosquitto(accounts={"mon": "monitor"})
    out = _run("add-device", "new-sensor", *_files(b))
    assert out["reload"].startswith("reloaded")
    assert "user new-sensor" in b.acl_file.read_text()
    b.passwords["new-sensor"] = out["password"]
    mon = mqtt_client(b, "mon")
    mon.subscribe("moteseal/#")
    dev = mqtt_client(b, "new-sensor")
    assert dev.connect_rc == 0
    dev.publish("moteseal/v1/up/new-sensor", b"hello")
    dev.publish("moteseal/v1/up/other", b"forged")
    assert mon.collect(1) == [("moteseal/v1/up/new-sensor", b"hello")]
    assert mon.quiet(0.3) == []


def test_remove_device_refuses_its_next_connection(mosquitto, mqtt_client):
    b = mosquitto(accounts={"old-sensor": "device", "keep": "device"})
    assert mqtt_client(b, "old-sensor").connect_rc == 0
    out = _run("remove-device", "old-sensor", *_files(b))
    assert out["removed"] and out["reload"].startswith("reloaded")
    assert "old-sensor" not in b.passwd_file.read_text()
    assert "user old-sensor" not in b.acl_file.read_text()
    assert "user keep" in b.acl_file.read_text()
    time.sleep(0.2)  # SIGHUP is handled on the broker's next loop turn
    assert mqtt_client(b, "old-sensor").connect_rc in (134, 135)
    assert mqtt_client(b, "keep").connect_rc == 0


def test_add_device_rejects_ids_that_could_be_topic_wildcards(tmp_path):
    for bad in ("a/b", "+", "#", "", "x" * 17, "caf\u00e9"):
        result = CliRunner().invoke(broker_group, ["add-device", bad, "--dir", str(tmp_path),
                                                   "--no-reload"])
        assert result.exit_code == 2, (bad, result.output)
    assert not (tmp_path / "acl").exists()


def test_remove_unknown_device_fails(tmp_path):
    result = CliRunner().invoke(broker_group, ["remove-device", "ghost", "--dir", str(tmp_path),
                                               "--no-reload"])
    assert result.exit_code == 1
    assert "ghost" in result.output


def test_acl_blocks_keep_hand_written_entries(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("# site rules\npattern read $SYS/#\n\n# ops team\nuser ops\ntopic read ops/#\n")
    broker_mod.set_acl_account(acl, "s1", "device")
    broker_mod.set_acl_account(acl, "s1", "device")  # idempotent
    assert broker_mod.remove_acl_account(acl, "s1")
    assert acl.read_text() == "# site rules\npattern read $SYS/#\n\n# ops team\nuser ops\ntopic read ops/#\n"


def _self_signed(dir_: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    crt, k = dir_ / "server.crt", dir_ / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return crt, k


def test_production_config_serves_tls_and_loopback_with_acls(tmp_path):
    """broker_config/mosquitto.conf, with only its paths and ports moved into a
    scratch directory, runs: TLS clients authenticate and the ACL applies."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    crt, key = _self_signed(tmp_path)
    broker_mod.set_password(tmp_path / "passwd", "s1", "pw1")
    broker_mod.set_acl_account(tmp_path / "acl", "s1", "device")
    broker_mod.set_password(tmp_path / "passwd", "mon", "pw2")
    broker_mod.set_acl_account(tmp_path / "acl", "mon", "monitor")
    broker_mod.set_password(tmp_path / "passwd", "gw", "pw3")
    broker_mod.set_acl_account(tmp_path / "acl", "gw", "gateway")
    tls_port, local_port = broker_mod.free_port(), broker_mod.free_port()
    text = broker_mod.config_template("mosquitto.conf")
    for old, new in [("/etc/mosquitto/moteseal/", f"{tmp_path}/"),
                     ("/etc/mosquitto/certs/server.crt", str(crt)),
                     ("/etc/mosquitto/certs/server.key", str(key)),
                     ("/etc/mosquitto/certs/ca.crt", str(crt)),
                     ("/var/lib/mosquitto/", f"{tmp_path}/"),
                     ("/run/mosquitto/", f"{tmp_path}/"),
                     ("log_dest syslog", "log_dest stderr"),
                     ("listener 8883\n", f"listener {tls_port} 127.0.0.1\n"),
                     ("listener 1883 127.0.0.1", f"listener {local_port} 127.0.0.1")]:
        assert old in text, old
        text = text.replace(old, new)
    if os.geteuid() == 0:
        text = text.replace("user mosquitto", "user root")
    assert "set_tcp_nodelay true" in text and "persistence true" in text
    conf = tmp_path / "prod.conf"
    conf.write_text(text)
    proc = subprocess.Popen([broker_mod.find_mosquitto(), "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        got: list[bytes] = []

        def client(user: str, pw: str, port: int, tls: bool) -> mqtt.Client:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"c-{user}-{port}",
                            protocol=mqtt.MQTTv5)
            c.username_pw_set(user, pw)
            if tls:
                c.tls_set(ca_certs=str(crt), tls_version=ssl.PROTOCOL_TLS_CLIENT)
            for _ in range(100):
                try:
                    c.connect("127.0.0.1", port)
                    break
                except OSError:
                    time.sleep(0.05)
            c.loop_start()
            return c

        mon = client("mon", "pw2", local_port, tls=False)
        mon.on_message = lambda c, u, m: got.append(m.payload)
        mon.subscribe("moteseal/#", 1)
        time.sleep(0.3)
        dev = client("s1", "pw1", tls_port, tls=True)
        dev.publish("moteseal/v1/up/s2", b"forged", 1).wait_for_publish(10)
        dev.publish("moteseal/v1/up/s1", b"over tls", 1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert got == [b"over tls"]

        # The gateway's MQTT link relays over the TLS listener.
        import cbor2

        from gateway.config import MqttConfig
        from gateway.logs import JsonLog
        from gateway.mqtt import MqttLink
        from gateway.relay import RateLimiter, Relay, RouteTable

        mon.on_message = lambda c, u, m: got.append((m.topic, m.payload))
        cfg = MqttConfig(host="127.0.0.1", port=tls_port, tls=True, ca_file=str(crt),
                         username="gw", password="pw3", client_id="gw-tls", session_expiry=0)
        relay = Relay(RouteTable({"mqtt": ["*"]}), RateLimiter(0, 1))
        link = MqttLink(cfg, relay, JsonLog(open(os.devnull, "w")))
        relay.add_link("mqtt", link)
        link.start()
        try:
            assert link.connected.wait(10)
            got.clear()
            env = cbor2.dumps([6, b"s1", b"s2", 1, 0, b"tls"])
            dev.publish("moteseal/v1/up/s1", env, 1).wait_for_publish(10)
            deadline = time.monotonic() + 10
            while ("moteseal/v1/down/s2", env) not in got and time.monotonic() < deadline:
                time.sleep(0.02)
            assert ("moteseal/v1/down/s2", env) in got
        finally:
            link.stop()
        for c in (dev, mon):
            c.disconnect()
            c.loop_stop()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        print(out.decode(errors="replace"))  # shown by pytest only on failure


def test_config_prints_the_shipped_configs():
    prod = CliRunner().invoke(broker_group, ["config"])
    local = CliRunner().invoke(broker_group, ["config", "--local"])
    assert prod.exit_code == 0 and "listener 8883" in prod.output and "acl_file" in prod.output
    assert local.exit_code == 0 and "listener 1883 127.0.0.1" in local.output
    assert "certfile" not in local.output


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_files_are_handed_to_the_broker_user(tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    result = CliRunner().invoke(broker_group, ["add-device", "s1", "--dir", str(tmp_path),
                                               "--no-reload", "--owner", "nobody"])
    assert result.exit_code == 0, result.output
    for name in ("passwd", "acl"):
        st = (tmp_path / name).stat()
        assert st.st_uid == nobody.pw_uid and st.st_mode & 0o077 == 0
