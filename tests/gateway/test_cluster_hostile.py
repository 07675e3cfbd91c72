"""Hostile MQTT accounts on the NATS cluster (gateway/cluster.py's generated
permissions): a device account publishes only its own up topic and reads
only its own down topic, on every node; the JetStream delivery subjects a
QoS 1 subscription needs cannot be subscribed to by an MQTT client; and a
device that logs in under the gateway's client id gets none of the
gateway's uplink. Each check starts from a positive control, so a broker
that delivered nothing at all would fail it."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker import BrokerError
from gateway.cluster import nats_permissions

ACCOUNTS = {"gw": "gateway", "s1": "device", "evil": "device", "mon": "monitor"}


class Client:
    """A paho MQTT 3.1.1 client on one node: records messages and SUBACK codes
    (from paho's thread). Not thread-safe beyond that: one test thread."""

    def __init__(self, cluster, user: str, node: int, client_id: str = "",
                 clean: bool = True) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: list[int] = []
        self._ev = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{user}-{node}",
                        clean_session=clean, protocol=mqtt.MQTTv311)
        c.username_pw_set(user, cluster.passwords[user])
        c.on_connect = lambda *a: self._ev.set()
        c.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        c.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.extend(r.value for r in rcs)
        host, port = cluster.mqtt_hosts[node].split(":")
        c.connect(host, int(port), keepalive=10)
        c.loop_start()
        assert self._ev.wait(15), "no CONNACK"
        self.c = c

    def subscribe(self, topic: str) -> int:
        n = len(self.subacks)
        self.c.subscribe(topic, 1)
        deadline = time.monotonic() + 15
        while len(self.subacks) == n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.subacks[-1]

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def wait(self, n: int, timeout: float = 15.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def cluster(nats_cluster):
    return nats_cluster(ACCOUNTS)


@pytest.fixture
def clients():
    made: list[Client] = []

    def make(*a, **kw) -> Client:
        made.append(Client(*a, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_device_cannot_publish_another_devices_uplink_on_any_node(cluster, clients):
    mon = clients(cluster, "mon", 2)
    assert mon.subscribe("moteseal/v1/#") == 1
    for node in range(3):
        evil = clients(cluster, "evil", node)
        evil.publish("moteseal/v1/up/s1", b"forged")       # refused by the node
        evil.publish("moteseal/v1/down/s1", b"forged")     # not a device's to write
        evil.publish("moteseal/v1/up/evil", b"own %d" % node)  # the control
    got = mon.wait(3)
    time.sleep(1.0)  # a forged message would come with or right after the controls
    assert sorted(mon.messages) == [("moteseal/v1/up/evil", b"own %d" % n) for n in range(3)]
    assert got


def test_device_cannot_read_another_devices_downlink_or_the_uplink(cluster, clients):
    s1 = clients(cluster, "s1", 0)
    evil = clients(cluster, "evil", 1)
    assert s1.subscribe("moteseal/v1/down/s1") == 1
    for topic in ("moteseal/v1/down/s1", "moteseal/v1/down/+", "moteseal/v1/up/+", "#",
                  "$MQTT/sub/#", "$MQTT/#"):
        assert evil.subscribe(topic) == 0x80, topic
    gw = clients(cluster, "gw", 2)
    gw.publish("moteseal/v1/down/s1", b"for s1 only")
    assert s1.wait(1) == [("moteseal/v1/down/s1", b"for s1 only")]
    time.sleep(0.5)
    assert evil.messages == []


def test_device_under_the_gateways_client_id_gets_no_uplink(cluster, clients):
    gw = clients(cluster, "gw", 0, client_id="moteseal-gateway-gw", clean=False)
    assert gw.subscribe("moteseal/v1/up/+") == 1
    gw.close()  # the session (with its subscription) stays on the cluster
    evil = clients(cluster, "evil", 1, client_id="moteseal-gateway-gw", clean=False)
    s1 = clients(cluster, "s1", 2)
    s1.publish("moteseal/v1/up/s1", b"reading")
    time.sleep(1.5)
    assert evil.messages == []  # the resumed subscription is checked against evil's rights
    # The control: the gateway itself gets the reading back through its session.
    evil.close()
    gw2 = clients(cluster, "gw", 0, client_id="moteseal-gateway-gw", clean=False)
    assert gw2.subscribe("moteseal/v1/up/+") == 1
    assert ("moteseal/v1/up/s1", b"reading") in gw2.wait(1)


def test_generator_refuses_ids_nats_would_split():
    with pytest.raises(BrokerError, match="'.'"):
        nats_permissions("a.b", "device")
    assert nats_permissions("s1", "device")["publish"] == {"allow": ["moteseal.v1.up.s1"]}


def test_nats_2_9_delivers_a_publish_over_its_payload_limit_as_documented(cluster, clients):
    """A known gap (docs/scaling.md): the MQTT listener of nats-server 2.9.10
    does not apply ``max_payload`` (2048) to MQTT publishes, unlike
    Mosquitto's ``max_packet_size``; only the gateway's 1200-byte envelope
    limit stands. This fails once the engine enforces it: update the docs."""
    mon = clients(cluster, "mon", 2)
    assert mon.subscribe("moteseal/v1/#") == 1
    evil = clients(cluster, "evil", 0)
    evil.c.publish("moteseal/v1/up/evil", b"\x00" * 4000, qos=1)
    assert [(t, len(p)) for t, p in mon.wait(1)] == [("moteseal/v1/up/evil", 4000)]
