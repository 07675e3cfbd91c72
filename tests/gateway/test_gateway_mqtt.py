"""The gateway process on a real Mosquitto with ACLs: relaying, drops by
reason while good traffic continues, observability, restarts without loss,
and two gateways sharing one subscription."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import cbor2
import pytest

from gateway.broker import free_port

pytestmark = pytest.mark.mosquitto

ACCOUNTS = {"gw": "gateway", "hub": "device", "sensor-1": "device", "sensor-2": "device",
            "bad": "device", "mon": "monitor"}
REPO_CLI = [sys.executable, "-m", "moteseal.cli.main"]


def data(src: str, dst: str, nonce: int, ct: bytes = b"\x5a" * 40) -> bytes:
    return cbor2.dumps([6, src.encode(), dst.encode(), 1, nonce, ct])


def nonces(messages) -> list[int]:
    return [cbor2.loads(payload)[4] for _topic, payload in messages]


@pytest.fixture
def broker(mosquitto):
    return mosquitto(accounts=ACCOUNTS)


def test_envelopes_are_relayed_both_ways_byte_for_byte(broker, mqtt_client, gateway_process):
    gateway_process(broker)
    hub = mqtt_client(broker, "hub")
    hub.subscribe("moteseal/v1/down/hub")
    s1 = mqtt_client(broker, "sensor-1")
    s1.subscribe("moteseal/v1/down/sensor-1")
    up = data("sensor-1", "hub", 1)
    s1.publish("moteseal/v1/up/sensor-1", up)
    assert hub.collect(1) == [("moteseal/v1/down/hub", up)]
    down = cbor2.dumps([5, b"hub", b"sensor-1", 1, b"\x01" * 48])
    hub.publish("moteseal/v1/up/hub", down)
    assert s1.collect(1) == [("moteseal/v1/down/sensor-1", down)]


def test_bad_envelopes_are_dropped_and_counted_while_good_traffic_continues(
        broker, mqtt_client, gateway_process):
    metrics_port = free_port()
    # max_envelope_bytes below the broker's message_size_limit (1200), which
    # would drop a larger envelope before the gateway saw it.
    gw = gateway_process(broker, rate=100, burst=100, metrics_port=metrics_port,
                         routes={"mqtt": ["hub", "sensor-*", "bad"]}, max_envelope_bytes=1000)
    hub = mqtt_client(broker, "hub")
    hub.subscribe("moteseal/v1/down/hub")
    good = mqtt_client(broker, "sensor-1")
    bad = mqtt_client(broker, "bad")
    secret = b"PAYLOAD-MARKER-" * 3
    bad_envelopes = [
        b"\xff not cbor",                                         # malformed
        data("bad", "hub", 1, ct=secret * 24),                    # oversize (> 1000)
        cbor2.dumps([9, b"bad", b"hub", 1, b"x"]),                # unknown version
        data("bad", "nowhere", 1, ct=secret),                     # unknown destination
        data("sensor-2", "hub", 1, ct=secret),                    # src mismatch
    ]
    for i in range(40):
        assert good.publish("moteseal/v1/up/sensor-1", data("sensor-1", "hub", i)) == 0
        bad.publish("moteseal/v1/up/bad", bad_envelopes[i % len(bad_envelopes)], qos=1)
    for i in range(300):  # a flood: well past the 100-message burst
        bad.client.publish("moteseal/v1/up/bad", data("bad", "hub", 1000 + i), qos=0)
    got = hub.collect(40 + 100, timeout=15)
    from_good = [n for n in nonces(got) if n < 1000]
    assert from_good == list(range(40)), "good traffic arrives complete and in order"
    time.sleep(0.5)
    status = gw.status()
    dropped = status["dropped"]
    for reason in ("malformed", "oversize", "unknown_version", "unknown_destination",
                   "src_mismatch"):
        assert dropped[reason] == 8, (reason, dropped)
    assert dropped["rate_limited"] >= 150
    assert status["relayed_by_link"]["mqtt"] == 40 + (300 - dropped["rate_limited"])
    assert "sensor-1" in status["last_seen"]

    # The same numbers over Prometheus and `moteseal gateway status`.
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert 'moteseal_gateway_dropped_total{reason="malformed"} 8.0' in text
    assert 'moteseal_gateway_device_last_seen_timestamp_seconds{device="sensor-1"}' in text
    assert 'moteseal_gateway_link_up{link="mqtt"} 1.0' in text
    out = subprocess.run(REPO_CLI + ["gateway", "status", "--url",
                                     f"http://127.0.0.1:{metrics_port}/metrics", "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout)["dropped"]["oversize"] == 8
    out = subprocess.run(REPO_CLI + ["gateway", "status", "--config", str(gw.config)],
                         capture_output=True, text=True, timeout=60, check=True)
    assert "malformed=8" in out.stdout and "link mqtt" in out.stdout

    # Each drop is logged as a JSON line with its reason, never with payload bytes.
    log = gw.log_text()
    lines = [json.loads(line) for line in log.splitlines()]
    reasons = {rec["reason"] for rec in lines if rec["event"] == "drop"}
    assert {"malformed", "oversize", "unknown_version", "unknown_destination",
            "src_mismatch", "rate_limited"} <= reasons
    assert "PAYLOAD-MARKER" not in log and secret.hex() not in log


def test_gateway_killed_mid_stream_loses_no_qos1_message(broker, mqtt_client, gateway_process):
    # A small in-flight window makes the gateway hold a backlog when it dies:
    # a relay that acknowledged before forwarding would lose that backlog.
    gw = gateway_process(broker, max_inflight=2)
    hub = mqtt_client(broker, "hub", client_id="hub", clean_start=False, session_expiry=600)
    hub.subscribe("moteseal/v1/down/hub")
    s1 = mqtt_client(broker, "sensor-1")
    total = 600
    for i in range(total):
        s1.client.publish("moteseal/v1/up/sensor-1", data("sensor-1", "hub", i), qos=1)
        if i == 300:
            deadline = time.monotonic() + 10
            while hub.messages.qsize() < 20 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert hub.messages.qsize() >= 20, "the gateway relayed nothing before the kill"
            gw.kill()  # SIGKILL mid-stream
    time.sleep(0.5)
    gw.start()
    got = hub.collect(total, timeout=30)
    got += hub.quiet(0.5)  # and any duplicates
    assert set(nonces(got)) == set(range(total))


def test_two_gateways_on_a_shared_subscription_deliver_each_message_once(
        broker, mqtt_client, gateway_process):
    broker.add("gw2", "gateway")
    g1 = gateway_process(broker, name="g1", share_group="moteseal")
    g2 = gateway_process(broker, name="g2", user="gw2", share_group="moteseal")
    hub = mqtt_client(broker, "hub")
    hub.subscribe("moteseal/v1/down/hub")
    s1, s2 = mqtt_client(broker, "sensor-1"), mqtt_client(broker, "sensor-2")
    for i in range(100):
        s1.publish("moteseal/v1/up/sensor-1", data("sensor-1", "hub", i))
        s2.publish("moteseal/v1/up/sensor-2", data("sensor-2", "hub", 100 + i))
    got = hub.collect(200, timeout=15) + hub.quiet(0.5)
    assert sorted(nonces(got)) == list(range(200))  # each exactly once
    time.sleep(0.5)
    r1, r2 = g1.status()["relayed"], g2.status()["relayed"]
    assert r1 + r2 == 200 and r1 > 0 and r2 > 0, (r1, r2)


def test_forwards_beyond_the_in_flight_window_wait_their_turn_and_all_arrive(broker, mqtt_client):
    """The MQTT link's own window: sends from another thread (as a serial link
    would) beyond ``max_inflight`` are held in order, published as PUBACKs
    free slots, and each ``done`` runs once."""
    from gateway.config import MqttConfig
    from gateway.logs import JsonLog
    from gateway.mqtt import MqttLink
    from gateway.relay import RateLimiter, Relay, RouteTable

    hub = mqtt_client(broker, "hub")
    hub.subscribe("moteseal/v1/down/hub")
    cfg = MqttConfig(port=broker.port, username="gw", password=broker.passwords["gw"],
                     client_id="window-test", max_inflight=2, session_expiry=0)
    relay = Relay(RouteTable({"mqtt": ["*"]}), RateLimiter(0, 1))
    link = MqttLink(cfg, relay, JsonLog(open("/dev/null", "w")))
    link.start()
    try:
        assert link.connected.wait(10)
        import socket as _socket
        sock = link._sock
        assert sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY) != 0
        done: list[int] = []
        for i in range(60):
            link.send("hub", data("sensor-1", "hub", i), lambda i=i: done.append(i))
        assert link.queue_depth() > 2  # the rest waits in the link's own FIFO
        got = hub.collect(60, timeout=15)
        assert nonces(got) == list(range(60))  # in order
        deadline = time.monotonic() + 10
        while len(done) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(done) == list(range(60)) and link.queue_depth() == 0
    finally:
        link.stop()


def test_a_plain_subscription_survives_a_broker_restart_while_the_gateway_is_down(
        broker, mqtt_client, gateway_process):
    """Mosquitto restores persistent MQTT 5 sessions and their plain
    subscriptions from its persistence file, but not $share subscriptions
    (2.0.x). With share_group = "" the broker queues for the stopped gateway
    across its own restart, so nothing acknowledged to a device is lost."""
    gw = gateway_process(broker, share_group="")
    gw.stop()  # the gateway's session and subscription stay with the broker
    broker.stop()
    broker.start()  # same port, state restored from the persistence file
    hub = mqtt_client(broker, "hub", client_id="hub-restart", clean_start=False, session_expiry=600)
    hub.subscribe("moteseal/v1/down/hub")
    s1 = mqtt_client(broker, "sensor-1")
    for i in range(20):
        assert s1.publish("moteseal/v1/up/sensor-1", data("sensor-1", "hub", i)) == 0
    gw.start()
    got = hub.collect(20, timeout=15) + hub.quiet(0.3)
    assert set(nonces(got)) == set(range(20))
