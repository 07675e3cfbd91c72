"""Two gateways with ``shard = "auto"`` (gateway/membership.py) on a real
Mosquitto and on a real three-node NATS cluster: they split 64 shards by
heartbeat; one is SIGKILLed while devices publish, the survivor takes
every shard over and forwards the dead one's devices (and what it had not
forwarded, from its takeover buffer); the killed one comes back and takes
its shards back. Every reading reaches the hub's down topic: none lost.
Duplicates (overlap, replay) are counted and printed; the real hub's
replay window and readings store drop them
(e2e/test_scale_out.py stores each reading exactly once through such a
takeover)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import cbor2
import pytest
from click.testing import CliRunner

from gateway.cli import gateway_group
from gateway.membership import HEARTBEAT_PREFIX
from gateway.shard import shard_of
from moteseal.links.mqtt_link import MqttLink
from tests.cluster_fixtures import HubSink, gateway_toml
from tests.gateway_proc import GatewaySubprocess

SHARDS = 64
DEVICES = [f"t{i}" for i in range(12)]
ACCOUNTS = {"gw1": "gateway", "gw2": "gateway", "hub": "device", **{d: "device" for d in DEVICES}}
ROUND_S = 0.1  # every device publishes one reading per round


def data(src: str, nonce: int) -> bytes:
    return cbor2.dumps([6, src.encode(), b"hub", 1, nonce, b"\x5a" * 40])


class AutoGateway(GatewaySubprocess):
    """``moteseal gateway run`` with ``shard = "auto"`` on a Mosquitto test
    broker (defaults: heartbeat 1 s, peer timeout 3 s). Not thread-safe."""

    def __init__(self, broker, workdir: Path, name: str) -> None:
        super().__init__(workdir, broker.passwords[name])
        self.config.write_text(gateway_toml(name, host="127.0.0.1", port=broker.port,
                                            shard="auto", username=name,
                                            password_file="gw.password"))


class Publisher:
    """Every device publishes reading n in round n, one round every
    ROUND_S, on its own thread; ``sent`` is the rounds begun."""

    def __init__(self, links: dict[str, MqttLink]) -> None:
        self.links, self.sent, self.infos = links, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            n = self.sent
            self.sent += 1
            self.infos += [lk.send(data(d, n)) for d, lk in self.links.items()]
            self._stop.wait(ROUND_S)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.sent


def wait_for(check, timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def mqtt_of(gw) -> dict:
    s = gw.status()
    return s["links"]["mqtt"] if s else {}


def split(a, b) -> bool:
    """Both see each other and own complementary halves of the shards."""
    sa, sb = mqtt_of(a), mqtt_of(b)
    if not sa.get("peers") or not sb.get("peers"):
        return False
    owned_a, owned_b = set(sa["owned_shards"]), set(sb["owned_shards"])
    return not owned_a & owned_b and owned_a | owned_b == set(range(SHARDS))


def takeover_round(gw_a, gw_b, restart_b, links: dict[str, MqttLink], sink: HubSink,
                   freeze: bool = False) -> dict:
    """The scenario shared by both brokers: split, kill B, A takes over,
    B comes back, split again, nothing lost. Returns the measurements.
    ``freeze``: B is stopped (SIGSTOP) instead, as a hung gateway: its
    connection stays open, so no will is published and A must notice the
    silence (peer_timeout_s); what reached A meanwhile comes from its
    buffer. B is SIGKILLed before it comes back."""
    assert wait_for(lambda: split(gw_a, gw_b), 20), (gw_a.status(), gw_b.status())
    b_shards = set(mqtt_of(gw_b)["owned_shards"])
    b_devices = {d for d in DEVICES if shard_of(d, SHARDS) in b_shards}
    assert b_devices and b_devices != set(DEVICES)  # both gateways have devices
    pub = Publisher(links)
    try:
        time.sleep(2.0)
        takeovers_before = mqtt_of(gw_a)["takeovers"]
        if freeze:
            os.kill(gw_b.proc.pid, signal.SIGSTOP)
        else:
            gw_b.kill()
        t_kill, n_kill = time.monotonic(), pub.sent + 1  # round n_kill starts after the kill
        owns_all = wait_for(lambda: len(mqtt_of(gw_a).get("owned_shards", [])) == SHARDS, 20)
        t_owned = time.monotonic() - t_kill
        assert owns_all, mqtt_of(gw_a)
        forwarded = wait_for(lambda: sink.first_after(b_devices, dict.fromkeys(b_devices, n_kill)),
                             20)
        assert forwarded, "the survivor never forwarded the dead gateway's devices"
        status_a = mqtt_of(gw_a)
        assert status_a["takeovers"] - takeovers_before == len(b_shards)
        assert status_a["peers"] == []
        time.sleep(2.0)
        # Before B comes back (its session would bring what it had not
        # forwarded): A alone delivered every reading so far. Those that
        # reached A before it knew B was dead come from its buffer.
        so_far = {(d, n) for d in DEVICES for n in range(pub.sent - 1)}
        gap = wait_for(lambda: not (so_far - set(sink.keys())), 20, 0.2)
        assert gap, ("lost at the takeover", sorted(so_far - set(sink.keys()))[:20])
        gw_b.kill()
        restart_b()
        t_back = time.monotonic()
        assert wait_for(lambda: split(gw_a, gw_b), 20), (gw_a.status(), gw_b.status())
        t_split = time.monotonic() - t_back
        assert set(mqtt_of(gw_b)["owned_shards"]) == b_shards  # took its own back
        # Back with a backlog of every device's readings in its session, it
        # settled first (heard A) and relayed only its own devices.
        assert set(gw_b.status()["last_seen"]) <= b_devices, gw_b.status()["last_seen"]
        time.sleep(2.0)
    finally:
        rounds = pub.stop()
    expected = {(d, n) for d in DEVICES for n in range(rounds)}
    missing = wait_for(lambda: not (expected - set(sink.keys())), 45, 0.2)
    got = sink.keys()
    assert missing, sorted(expected - set(got))[:20]
    return {"kill->owns all": round(t_owned, 2), "kill->forwarding": round(forwarded - t_kill, 2),
            "restart->split": round(t_split, 2), "readings": len(expected),
            "duplicates": len(got) - len(set(got)), "replayed": status_a["replayed"]}


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_two_auto_gateways_on_mosquitto_take_over_a_dead_one(tmp_path, mosquitto, how):
    broker = mosquitto(accounts=ACCOUNTS)
    gw_a = AutoGateway(broker, tmp_path / "gw1", "gw1").start()
    gw_b = AutoGateway(broker, tmp_path / "gw2", "gw2").start()
    sink = HubSink(MqttLink("hub", port=broker.port, username="hub",
                         password=broker.passwords["hub"]).start(10))
    links = {d: MqttLink(d, port=broker.port, username=d, password=broker.passwords[d]).start(10)
             for d in DEVICES}
    try:
        result = takeover_round(gw_a, gw_b, gw_b.start, links, sink, freeze=how == "frozen")
        print(f"\nmosquitto takeover, {how}: {json.dumps(result)}")
        # `moteseal gateway status` shows the split and the takeovers.
        out = CliRunner().invoke(gateway_group, ["status", "--status-file",
                                                 str(gw_a.status_file)]).output
        s = mqtt_of(gw_a)
        assert (f"shards      {len(s['owned_shards'])} of {SHARDS} owned, peers "
                f"moteseal-gateway-gw2, takeovers {s['takeovers']}") in out, out
    finally:
        for lk in links.values():
            lk.close()
        sink.close()
        gw_a.stop()
        gw_b.stop()


@pytest.mark.timeout(300)
def test_two_auto_gateways_on_a_nats_cluster_take_over_a_killed_one(nats_cluster,
                                                                    cluster_gateway):
    # replicas=1: two subscribers of every up topic, as with static shards
    # (docs/scaling.md, "Known losses").
    cluster = nats_cluster(ACCOUNTS)
    hosts = [(h, int(p)) for h, p in (x.split(":") for x in cluster.mqtt_hosts)]

    def link(user: str, first: int) -> MqttLink:
        return MqttLink(user, username=user, password=cluster.passwords[user],
                        hosts=hosts[first:] + hosts[:first], protocol=4, keepalive=10).start(20)

    gw_a = cluster_gateway(cluster, "gw1", "gw1", first=0, shard="auto")
    gw_b = cluster_gateway(cluster, "gw2", "gw2", first=1, shard="auto")
    sink = HubSink(link("hub", 2))
    links = {d: link(d, i % 3) for i, d in enumerate(DEVICES)}
    try:
        result = takeover_round(gw_a, gw_b, gw_b.start, links, sink)
        print(f"\nnats takeover: {json.dumps(result)}")
    finally:
        for lk in links.values():
            lk.close()
        sink.close()



def fake_heartbeats(publish, seconds: float = 2.0) -> None:
    """``up 64`` from a would-be gateway ``fake``, QoS 0 and 1, five a second:
    heard, it would take about half the shards and black-hole them."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for qos in (0, 1):
            publish(HEARTBEAT_PREFIX + "fake", b"up 64", qos)
        time.sleep(0.2)


def peers_after_fakes(gw, publish) -> list[str]:
    fake_heartbeats(publish)
    time.sleep(0.5)  # a status file is written every 0.2 s
    return mqtt_of(gw)["peers"]


def test_a_device_account_cannot_fake_a_gateway_heartbeat_on_mosquitto(tmp_path, mosquitto,
                                                                       mqtt_client):
    broker = mosquitto(accounts={**ACCOUNTS, "mon": "monitor"})
    gw = AutoGateway(broker, tmp_path / "gw1", "gw1").start()
    try:
        evil = mqtt_client(broker, "t0")
        refused = evil.publish(HEARTBEAT_PREFIX + "fake", b"up 64", 1)
        assert refused >= 0x80  # "not authorized" PUBACK (MQTT 5)
        assert peers_after_fakes(gw, lambda t, p, q: evil.publish(t, p, q)) == []
        assert len(mqtt_of(gw)["owned_shards"]) == SHARDS
        # A monitor may read heartbeats but not write one.
        mon = mqtt_client(broker, "mon")
        assert peers_after_fakes(gw, lambda t, p, q: mon.publish(t, p, q)) == []
        # Control: the same heartbeats from a gateway account are heard, so
        # the checks above would see a fake that got through.
        other = mqtt_client(broker, "gw2")
        assert peers_after_fakes(gw, lambda t, p, q: other.publish(t, p, q)) == ["fake"]
        assert len(mqtt_of(gw)["owned_shards"]) < SHARDS
    finally:
        gw.stop()


@pytest.mark.timeout(300)
def test_a_device_account_cannot_fake_a_gateway_heartbeat_on_nats(nats_cluster, cluster_gateway):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    cluster = nats_cluster({**ACCOUNTS, "mon": "monitor"})
    gw = cluster_gateway(cluster, "gw1", "gw1", first=0, shard="auto")
    clients = []

    def client(user: str, node: int):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hb-{user}", protocol=mqtt.MQTTv311)
        c.username_pw_set(user, cluster.passwords[user])
        host, port = cluster.mqtt_hosts[node].split(":")
        c.connect(host, int(port), keepalive=10)
        c.loop_start()
        clients.append(c)
        return lambda t, p, q: c.publish(t, p, q)

    try:
        assert peers_after_fakes(gw, client("t0", 1)) == []
        assert peers_after_fakes(gw, client("mon", 2)) == []
        assert len(mqtt_of(gw)["owned_shards"]) == SHARDS
        assert peers_after_fakes(gw, client("gw2", 1)) == ["fake"]  # control
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
