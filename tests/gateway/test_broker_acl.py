"""The broker's accounts and ACLs hold against a real Mosquitto: a device can
publish only to its own up topic and read only its own down topic; only the
gateway reads every up topic and writes every down topic."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.mosquitto

ACCOUNTS = {"sensor-a": "device", "sensor-b": "device", "gw": "gateway", "mon": "monitor"}


@pytest.fixture
def broker(mosquitto):
    return mosquitto(accounts=ACCOUNTS)


def test_device_cannot_publish_as_another_device(broker, mqtt_client):
    mon = mqtt_client(broker, "mon")
    assert mon.subscribe("moteseal/#") == [1]
    a = mqtt_client(broker, "sensor-a")
    a.publish("moteseal/v1/up/sensor-b", b"forged")
    a.publish("moteseal/v1/up/sensor-a", b"own")
    got = mon.collect(1)
    assert got == [("moteseal/v1/up/sensor-a", b"own")]
    assert mon.quiet(0.3) == []


def test_device_cannot_publish_to_down_topics(broker, mqtt_client):
    b = mqtt_client(broker, "sensor-b")
    assert b.subscribe("moteseal/v1/down/sensor-b") == [1]
    a = mqtt_client(broker, "sensor-a")
    a.publish("moteseal/v1/down/sensor-b", b"forged reply")
    gw = mqtt_client(broker, "gw")
    gw.publish("moteseal/v1/down/sensor-b", b"from gateway")
    assert b.collect(1) == [("moteseal/v1/down/sensor-b", b"from gateway")]
    assert b.quiet(0.3) == []


def test_device_cannot_subscribe_to_another_devices_down_topic(broker, mqtt_client):
    # Mosquitto 2.0 may grant the SUBACK; what matters is that the read ACL
    # filters every delivery, so only sensor-a's own down topic comes through.
    a = mqtt_client(broker, "sensor-a")
    a.subscribe("moteseal/v1/down/sensor-b")
    a.subscribe("moteseal/v1/down/+")
    a.subscribe("moteseal/#")
    gw = mqtt_client(broker, "gw")
    gw.publish("moteseal/v1/down/sensor-b", b"for b")
    gw.publish("moteseal/v1/down/sensor-a", b"for a")
    got = a.collect(1) + a.quiet(0.3)
    # Overlapping subscriptions may deliver sensor-a's own message more than once.
    assert got and set(got) == {("moteseal/v1/down/sensor-a", b"for a")}


def test_device_cannot_read_up_topics(broker, mqtt_client):
    a = mqtt_client(broker, "sensor-a")
    a.subscribe("moteseal/v1/up/sensor-b")
    a.subscribe("$share/steal/moteseal/v1/up/+")
    mqtt_client(broker, "sensor-b").publish("moteseal/v1/up/sensor-b", b"b")
    assert a.quiet(0.3) == []


def test_gateway_reads_all_up_topics_through_a_shared_subscription(broker, mqtt_client):
    gw = mqtt_client(broker, "gw")
    assert gw.subscribe("$share/relay/moteseal/v1/up/+") == [1]
    mqtt_client(broker, "sensor-a").publish("moteseal/v1/up/sensor-a", b"a")
    mqtt_client(broker, "sensor-b").publish("moteseal/v1/up/sensor-b", b"b")
    assert sorted(gw.collect(2)) == [("moteseal/v1/up/sensor-a", b"a"),
                                     ("moteseal/v1/up/sensor-b", b"b")]


def test_gateway_cannot_publish_to_up_topics(broker, mqtt_client):
    mon = mqtt_client(broker, "mon")
    mon.subscribe("moteseal/#")
    mqtt_client(broker, "gw").publish("moteseal/v1/up/sensor-a", b"impersonation")
    assert mon.quiet(0.3) == []


def test_wrong_password_is_refused(broker, mqtt_client):
    broker.passwords["sensor-a"] = "not-the-password"
    assert mqtt_client(broker, "sensor-a").connect_rc in (134, 135)


def test_unknown_account_is_refused(broker, mqtt_client):
    broker.passwords["intruder"] = "guess"
    assert mqtt_client(broker, "intruder").connect_rc in (134, 135)
