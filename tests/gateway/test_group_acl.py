"""Group topics under the shipped ACLs, against a real Mosquitto
(gateway/broker.py): a member reads the topics of its groups and no other,
only a hub account writes group topics, and ``moteseal broker set-groups``
changes what a device reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.broker import BrokerError, acl_block, acl_groups

pytestmark = pytest.mark.mosquitto

ACCOUNTS = {"valve-1": "device", "valve-2": "device", "hub1": "hub", "gw": "gateway",
            "mon": "monitor"}
VALVES = "moteseal/v1/group/valves"


@pytest.fixture
def broker(mosquitto):
    b = mosquitto(accounts=ACCOUNTS)
    b.set_groups("valve-1", ["valves"])
    return b


def test_only_members_read_a_group_topic(broker, mqtt_client) -> None:
    v1 = mqtt_client(broker, "valve-1")
    v2 = mqtt_client(broker, "valve-2")
    v1.subscribe(VALVES)
    v2.subscribe(VALVES)
    v2.subscribe("moteseal/v1/group/+")
    v1.subscribe("moteseal/v1/group/pumps")
    hub = mqtt_client(broker, "hub1")
    assert hub.publish(VALVES, b"group message") == 0
    assert hub.publish("moteseal/v1/group/pumps", b"other group") == 0
    assert v1.collect(1) == [(VALVES, b"group message")]
    assert v1.quiet(0.3) == []  # not the pumps group's topic
    assert v2.quiet(0.3) == []  # not a member


def test_only_the_hub_writes_group_topics(broker, mqtt_client) -> None:
    mon = mqtt_client(broker, "mon")
    assert mon.subscribe("moteseal/v1/group/#") == [1]
    for user in ("valve-1", "valve-2", "gw"):
        mqtt_client(broker, user).publish(VALVES, b"forged by " + user.encode())
    mqtt_client(broker, "hub1").publish(VALVES, b"from the hub")
    assert mon.collect(1) == [(VALVES, b"from the hub")]
    assert mon.quiet(0.3) == []


def test_a_removed_member_loses_the_topic_and_the_hub_keeps_its_own_topics(
        broker, mqtt_client) -> None:
    broker.set_groups("valve-1", [])
    v1 = mqtt_client(broker, "valve-1")
    v1.subscribe(VALVES)
    hub = mqtt_client(broker, "hub1")
    hub.publish(VALVES, b"after removal")
    assert v1.quiet(0.3) == []
    # The hub is a device of its gateway otherwise: its own up and down topics.
    assert hub.subscribe("moteseal/v1/down/hub1") == [1]
    mqtt_client(broker, "gw").publish("moteseal/v1/down/hub1", b"down")
    assert hub.collect(1) == [("moteseal/v1/down/hub1", b"down")]


def test_acl_blocks_for_groups_refuse_bad_ids_and_other_roles(tmp_path) -> None:
    assert "topic write moteseal/v1/group/+" in acl_block("hub1", "hub")
    assert "topic read moteseal/v1/group/a.b" in acl_block("d", "device", ["a.b"])
    with pytest.raises(BrokerError):
        acl_block("d", "device", ["#"])
    with pytest.raises(BrokerError):
        acl_block("gw", "gateway", ["valves"])


def test_broker_set_groups_command(tmp_path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moteseal.cli.main", "broker", *args,
                               "--dir", str(tmp_path), "--no-reload", "--json"],
                              capture_output=True, text=True, timeout=60)

    assert cli("add-device", "valve-1", "--password", "pw-not-secret").returncode == 0
    r = cli("set-groups", "valve-1", "valves", "pumps")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["groups"] == ["pumps", "valves"]
    assert acl_groups(tmp_path / "acl", "valve-1") == ("device", ["pumps", "valves"])
    bad = cli("set-groups", "valve-1", "val/+")
    assert bad.returncode == 1 and "invalid id" in bad.stderr + bad.stdout
    assert cli("set-groups", "nobody", "valves").returncode == 1
