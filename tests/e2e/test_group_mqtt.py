"""Group broadcast through a real Mosquitto: the hub publishes one group
message to ``moteseal/v1/group/<gid>``, ten members subscribed there each
open it with their own keys (delivered over their pairwise sessions), and a
removed member that stays subscribed reads nothing afterwards.

The broker here runs without ACLs, to show the removal is cryptographic;
the shipped ACLs for group topics are in tests/gateway/test_group_acl.py
and the whole path through the hub in tests/e2e/test_group_fleet.py."""

from __future__ import annotations

import pytest

from tests.host.test_group_broadcast import GID, Fleet

pytestmark = pytest.mark.mosquitto

TOPIC = "moteseal/v1/group/" + GID.decode()


def test_one_publish_through_mosquitto_reaches_ten_members(mosquitto, mqtt_client) -> None:
    fleet = Fleet(10)
    for d in fleet.ids:
        fleet.handshake(d)
    fleet.distribute(fleet.hub.create(GID, fleet.ids))
    broker = mosquitto(auth=False)
    subs = {}
    for d in fleet.ids:
        subs[d] = mqtt_client(broker)
        assert subs[d].subscribe(TOPIC) == [1]
    hub = mqtt_client(broker)
    assert hub.publish(TOPIC, fleet.hub.seal(GID, b"valve=closed")) == 0  # one publish
    for d in fleet.ids:
        (topic, payload), = subs[d].collect(1)
        assert topic == TOPIC and fleet.receive(d, payload) == b"valve=closed"
    gone = b"dev-04"
    fleet.distribute({d: m for d, m in fleet.hub.remove(GID, gone).items() if d != gone})
    assert hub.publish(TOPIC, fleet.hub.seal(GID, b"valve=open")) == 0
    for d in fleet.ids:
        (_, payload), = subs[d].collect(1)
        assert fleet.receive(d, payload) == ("DecodeError" if d == gone else b"valve=open")
