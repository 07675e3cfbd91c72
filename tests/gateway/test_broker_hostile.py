"""Hostile MQTT accounts against the shipped broker config on a real
Mosquitto: a client id belongs to its account (no session takeover, wipe or
disconnect), no device reads uplink through any shared subscription, the
size limits stop oversize publishes at the broker, and no password passes
through a process's argv."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import cbor2
import pytest
from click.testing import CliRunner

from gateway import broker as broker_mod
from gateway.broker_cli import broker_group
from moteseal.links.mqtt_link import MqttLink

pytestmark = pytest.mark.mosquitto

ACCOUNTS = {"gw": "gateway", "hub": "device", "sensor-1": "device", "sensor-b": "device",
            "evil": "device", "mon": "monitor"}

def data(src: str, dst: str, nonce: int, ct: bytes = b"\x5a" * 40) -> bytes:
    return cbor2.dumps([6, src.encode(), dst.encode(), 1, nonce, ct])


def nonces(messages) -> list[int]:
    return [cbor2.loads(payload)[4] for _topic, payload in messages]


@pytest.fixture
def broker(mosquitto):
    return mosquitto(accounts=ACCOUNTS)


def _link(broker, user: str) -> MqttLink:
    return MqttLink(user, "127.0.0.1", broker.port, username=user,
                    password=broker.passwords[user], session_expiry=600).start(10)


# -- client ids belong to their account ----------------------------------------

def test_another_accounts_client_id_cannot_wipe_a_sleeping_devices_queue(broker, mqtt_client):
    link = _link(broker, "sensor-b")
    link.close()  # asleep: the broker keeps its session and queues for it
    gw = mqtt_client(broker, "gw")
    assert gw.publish("moteseal/v1/down/sensor-b", b"queued command") == 0
    # The hostile account logs in with its own password under every id
    # sensor-b could have, asking for a clean start each time.
    for cid in ("moteseal-sensor-b", "sensor-b"):
        evil = mqtt_client(broker, "evil", client_id=cid, clean_start=True)
        evil.close()
    link = _link(broker, "sensor-b")
    try:
        assert link.recv(10) == b"queued command"
    finally:
        link.close()


def test_another_accounts_client_id_cannot_disconnect_a_device(broker, mqtt_client):
    link = _link(broker, "sensor-b")
    drops: list[object] = []
    link.client.on_disconnect = lambda *a: drops.append(a)
    gw = mqtt_client(broker, "gw")
    try:
        for i in range(5):
            evil = mqtt_client(broker, "evil", client_id="moteseal-sensor-b", clean_start=True)
            evil.close()
            assert gw.publish("moteseal/v1/down/sensor-b", b"cmd %d" % i) == 0
        got = [link.recv(10) for _ in range(5)]
        assert got == [b"cmd %d" % i for i in range(5)]
        assert drops == [] and link.connected.is_set()
    finally:
        link.close()


def test_hostile_logins_under_the_gateways_client_id_lose_no_uplink(
        broker, mqtt_client, gateway_process):
    gw = gateway_process(broker, share_group="")
    hub = mqtt_client(broker, "hub")
    assert hub.subscribe("moteseal/v1/down/hub") == [1]
    s1 = mqtt_client(broker, "sensor-1")
    total = 200
    for i in range(total):
        assert s1.publish("moteseal/v1/up/sensor-1", data("sensor-1", "hub", i)) == 0
        if i % 40 == 20:
            for cid in ("moteseal-gateway-gw", "gw"):
                evil = mqtt_client(broker, "evil", client_id=cid, clean_start=True)
                evil.close()
    got = hub.collect(total, timeout=30) + hub.quiet(0.5)
    # Every acknowledged uplink arrives, exactly once.
    assert sorted(nonces(got)) == list(range(total))
    assert gw.proc is not None and gw.proc.poll() is None


def test_no_device_takes_uplink_through_any_shared_subscription(
        broker, mqtt_client, gateway_process):
    """The shipped gateway subscribes without a share group (share_group = "",
    docs/gateway.md): Mosquitto 2.0's ACL file grants every SUBSCRIBE, so a
    device in any share group gets its own round-robin, denied at delivery,
    and the gateway still gets every message."""
    gateway_process(broker, share_group="")
    evil = mqtt_client(broker, "evil")
    for topic in ("$share/moteseal/moteseal/v1/up/+", "$share/gw/moteseal/v1/up/+",
                  "$share//moteseal/v1/up/+", "$share/moteseal/#", "moteseal/v1/up/+", "#"):
        evil.subscribe(topic)
    hub = mqtt_client(broker, "hub")
    assert hub.subscribe("moteseal/v1/down/hub") == [1]
    s1 = mqtt_client(broker, "sensor-1")
    total = 100
    for i in range(total):
        assert s1.publish("moteseal/v1/up/sensor-1", data("sensor-1", "hub", i)) == 0
    got = hub.collect(total, timeout=20) + hub.quiet(0.3)
    assert sorted(nonces(got)) == list(range(total))
    assert evil.quiet(0.3) == []


def test_a_gateway_share_group_is_joinable_by_devices_as_documented(
        broker, mqtt_client, gateway_process):
    """The limit docs/gateway.md states: with a share_group, a device that
    joins the group takes its round-robin share (denied at delivery, so
    lost); the gateway warns about it when it starts."""
    gw = gateway_process(broker, share_group="moteseal")
    deadline = time.monotonic() + 10
    while "share_group_trusted" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "share_group_trusted" in gw.log_text()
    evil = mqtt_client(broker, "evil")
    evil.subscribe("$share/moteseal/moteseal/v1/up/+")
    hub = mqtt_client(broker, "hub")
    assert hub.subscribe("moteseal/v1/down/hub") == [1]
    s1 = mqtt_client(broker, "sensor-1")
    for i in range(20):
        assert s1.publish("moteseal/v1/up/sensor-1", data("sensor-1", "hub", i)) == 0
    got = hub.collect(20, timeout=3)
    assert 0 < len(got) < 20 and evil.quiet(0.2) == []


@pytest.mark.parametrize("name", ["mosquitto.conf", "local.conf"])
def test_every_shipped_listener_binds_client_ids_and_every_limit_is_set(name):
    # use_username_as_clientid is a per-listener option in Mosquitto 2.0: a
    # listener without it lets any account claim any client id.
    text = broker_mod.config_template(name)
    blocks = text.split("\nlistener ")[1:]
    assert blocks
    for block in blocks:
        assert "\nuse_username_as_clientid true\n" in block + "\n", block.splitlines()[0]
    settings = dict(line.split(None, 1) for line in text.splitlines()
                    if line and not line.startswith("#") and " " in line)
    assert settings["max_packet_size"] == "2048"
    assert settings["message_size_limit"] == "1200"
    assert settings["max_queued_messages"] == "10000"
    assert settings["max_queued_bytes"] == "12000000"
    # An anonymous scratch broker (tests) cannot use it: no username to take.
    anon = broker_mod.render_config(text, port=1883, workdir=Path("/tmp/x"), auth=False)
    assert "\nuse_username_as_clientid" not in anon


# -- size limits ---------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    return len(s).to_bytes(2, "big") + s.encode()


class RawMqtt:
    """A bare MQTT 3.1.1 client on a socket: it sends whatever it is told
    (paho refuses to send a packet over the broker's announced maximum)."""

    def __init__(self, broker, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
        body = (_utf8("MQTT") + b"\x04\xc2\x00\x3c" + _utf8("raw-" + user) + _utf8(user)
                + _utf8(broker.passwords[user]))
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        assert self._read(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return buf
            buf += chunk
        return buf

    def publish_header(self, topic: str, payload_len: int, mid: int = 1) -> None:
        """Send a QoS 1 PUBLISH's fixed and variable header only."""
        var = _utf8(topic) + mid.to_bytes(2, "big")
        self.sock.sendall(b"\x32" + _varint(len(var) + payload_len) + var)

    def closed_by_broker(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def test_an_oversize_packet_is_cut_off_before_the_broker_buffers_it(broker, mqtt_client):
    gw = mqtt_client(broker, "gw")
    assert gw.subscribe("moteseal/v1/up/+") == [1]
    evil = RawMqtt(broker, "evil")
    try:
        # Announce a 16 MiB PUBLISH: the broker hangs up on the length alone,
        # before a byte of the payload is sent (max_packet_size).
        evil.publish_header("moteseal/v1/up/evil", 16 << 20)
        assert evil.closed_by_broker(10)
    finally:
        evil.close()
    s1 = mqtt_client(broker, "sensor-1")
    assert s1.publish("moteseal/v1/up/sensor-1", b"small") == 0
    assert gw.collect(1) == [("moteseal/v1/up/sensor-1", b"small")]
    assert gw.quiet(0.3) == []


def test_a_publish_over_the_message_limit_is_never_forwarded(broker, mqtt_client):
    gw = mqtt_client(broker, "gw")
    assert gw.subscribe("moteseal/v1/up/+") == [1]
    evil = RawMqtt(broker, "evil")
    try:
        # Fits max_packet_size (2048) but exceeds message_size_limit (1200):
        # acknowledged and dropped (an MQTT 5 client gets PUBACK 149).
        evil.publish_header("moteseal/v1/up/evil", 1500, mid=7)
        evil.sock.sendall(b"\x00" * 1500)
        assert evil._read(4) == b"\x40\x02\x00\x07"
        evil.publish_header("moteseal/v1/up/evil", 1200, mid=8)
        evil.sock.sendall(b"\x01" * 1200)
        assert evil._read(4) == b"\x40\x02\x00\x08"
    finally:
        evil.close()
    assert gw.collect(1) == [("moteseal/v1/up/evil", b"\x01" * 1200)]
    assert gw.quiet(0.3) == []


def test_the_mqtt_link_announces_its_maximum_packet_size(tmp_path, mqtt_client):
    # A broker without its own size limits: the link's CONNECT property alone
    # keeps a packet larger than it can take from reaching it.
    b = broker_mod.LocalBroker(tmp_path / "b", overrides={
        "max_packet_size": "1000000", "message_size_limit": "0"})
    b.add("hub")
    b.add("gw", "gateway")
    b.start()
    link = _link(b, "hub")
    try:
        gw = mqtt_client(b, "gw")
        assert gw.publish("moteseal/v1/down/hub", b"\x00" * 100_000) == 0
        assert gw.publish("moteseal/v1/down/hub", b"fits") == 0
        assert link.recv(10) == b"fits"
        assert link.recv(0.3) is None
        assert link.connected.is_set()
    finally:
        link.close()
        b.stop()


# -- passwords never pass through argv ------------------------------------------

def test_no_password_reaches_any_process_argv(tmp_path, monkeypatch, mqtt_client):
    spawned: list[list[str]] = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args, *a, **kw):  # type: ignore[no-untyped-def]
            spawned.append([str(x) for x in (args if isinstance(args, (list, tuple)) else [args])])
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    secrets_used = ["pw-device-Zq81", "pw-gateway-Xk22", "pw-cli-Lr93"]
    b = broker_mod.LocalBroker(tmp_path / "b")
    b.add("sensor-1", password=secrets_used[0])
    try:
        b.start()
        b.add("gw", "gateway", password=secrets_used[1])  # on a running broker
        result = CliRunner().invoke(broker_group, [
            "add-device", "hub", "--password", secrets_used[2], "--dir", str(b.workdir),
            "--pid-file", str(b.pid_file)])
        assert result.exit_code == 0, result.output
        b.passwords["hub"] = secrets_used[2]
        generated = CliRunner().invoke(broker_group, [
            "add-device", "mon", "--role", "monitor", "--dir", str(b.workdir), "--json",
            "--pid-file", str(b.pid_file)])
        assert generated.exit_code == 0, generated.output
        import json
        secrets_used.append(json.loads(generated.output)["password"])
        b.passwords["mon"] = secrets_used[3]
        # The real Mosquitto accepts what was written, after a reload too.
        for user in ("sensor-1", "gw", "hub", "mon"):
            assert mqtt_client(b, user).connect_rc == 0, user
        b.passwords["hub"] = "wrong"
        assert mqtt_client(b, "hub").connect_rc in (134, 135)
        assert broker_mod.remove_password(b.passwd_file, "hub")
        assert not broker_mod.remove_password(b.passwd_file, "hub")
        with pytest.raises(broker_mod.BrokerError):
            broker_mod.set_password(b.passwd_file, "hub", "two\nlines")
    finally:
        b.stop()
    assert spawned, "expected at least the broker process"
    for argv in spawned:
        for secret in secrets_used:
            assert not any(secret in arg for arg in argv), argv
    assert any("mosquitto_passwd" in argv[0] for argv in spawned)  # it ran, secret on stdin
