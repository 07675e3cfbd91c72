"""A real three-node NATS cluster (JetStream, MQTT 3.1.1 listeners) on free
loopback ports, and gateways run against it (``gateway.cluster``); with
what the cluster and takeover tests (tests/gateway/test_cluster.py,
test_gateway_takeover.py) share on NATS and on Mosquitto alike: the
gateway config ``gateway_toml`` and the hub-side collector ``HubSink``.

Every node runs in its own process group and dies with the test process
(``PR_SET_PDEATHSIG``); each fixture kills what it started in its
``finally``. Imported by tests/conftest.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import cbor2
import pytest

from gateway.cluster import NatsCluster
from moteseal.links.mqtt_link import MqttLink
from tests.gateway_proc import GatewaySubprocess


__all__ = ["nats_cluster", "cluster_gateway", "ClusterGateway", "gateway_toml", "HubSink"]


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[Callable[..., NatsCluster]]:
    """Factory: ``nats_cluster({"gw": "gateway", "s1": "device"}, nodes=3)``
    (``replicas=1``: streams and consumers on one node, the setting under
    which nats-server 2.9.10 lost no QoS 1 message here but which does not
    survive that node; ``replicas=3`` survives a node. docs/scaling.md)
    starts the cluster (waiting at most 45 s until every node answers MQTT)
    and returns the ``NatsCluster`` (``.mqtt_hosts``, ``.passwords``,
    ``.kill_node(i)``, ``.start_node(i)``)."""
    clusters: list[NatsCluster] = []

    def start(accounts: dict[str, str], nodes: int = 3, ack_wait: str = "5s",
              replicas: int = 1) -> NatsCluster:
        cluster = NatsCluster(tmp_path / f"nats{len(clusters)}", accounts, nodes, ack_wait,
                              replicas)
        clusters.append(cluster)
        return cluster.start(timeout=45)

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.stop()


def gateway_toml(name: str, rate: float = 1000.0, **mqtt: object) -> str:
    """A gateway.toml: status to status.json every 0.2 s, log to
    gateway.log, the peer "hub", ``rate`` (burst the same, at least 1) and
    ``mqtt`` as the ``[mqtt]`` table, each value written as JSON (which
    TOML reads alike for strings, numbers and lists of them)."""
    mqtt_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in mqtt.items())
    return f"""
[gateway]
name = "{name}"
status_file = "status.json"
status_interval = 0.2

[mqtt]
{mqtt_lines}

[rate_limit]
rate = {rate}
burst = {max(rate, 1.0)}

[policy]
peers = ["hub"]

[log]
file = "gateway.log"
"""


class ClusterGateway(GatewaySubprocess):
    """``moteseal gateway run`` as a subprocess on a NATS cluster: MQTT
    3.1.1, the cluster's nodes as ``hosts`` (``first`` is tried first), an
    optional shard (``shard="auto"``: by heartbeats, ``shards`` 64 unless
    given). Not thread-safe."""

    def __init__(self, cluster: NatsCluster, workdir: Path, name: str, user: str,
                 first: int = 0, shards: int | None = None, shard: int | str = 0,
                 client_id: str = "", rate: float = 1000.0) -> None:
        super().__init__(workdir, cluster.passwords[user])
        hosts = cluster.mqtt_hosts[first:] + cluster.mqtt_hosts[:first]
        self.config.write_text(gateway_toml(
            name, rate, hosts=hosts, protocol="3.1.1",
            shards=shards or (64 if shard == "auto" else 1), shard=shard, username=user,
            password_file="gw.password", client_id=client_id or "moteseal-gateway-" + name,
            keepalive=10))


class HubSink:
    """Collects what reaches ``moteseal/v1/down/hub`` on ``link``: ``got``
    is (src, nonce, arrival time) in arrival order, appended on its own
    reader thread; ``keys``, ``wait_for`` and ``first_after`` may be called
    from any thread, ``close`` from the one that made it."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.got: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            env = self.link.recv(0.2)
            if env is not None:
                msg = cbor2.loads(env)
                with self._lock:
                    self.got.append((msg[1].decode(), msg[4], time.monotonic()))

    def keys(self) -> list[tuple[str, int]]:
        """(src, nonce) of every reading so far, in arrival order."""
        with self._lock:
            return [(d, n) for d, n, _t in self.got]

    def wait_for(self, expected: set[tuple[str, int]], timeout: float) -> set[tuple[str, int]]:
        """Waits until every expected reading arrived; returns the missing ones."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = expected - set(self.keys())
            if not missing:
                return missing
            time.sleep(0.1)
        return missing

    def first_after(self, devices: set[str], nonce_from: dict[str, int]) -> float | None:
        """Arrival time of the first reading of ``devices`` numbered at or
        above ``nonce_from[device]``."""
        with self._lock:
            times = [t for d, n, t in self.got if d in devices and n >= nonce_from[d]]
        return min(times) if times else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.link.close()


@pytest.fixture
def cluster_gateway(tmp_path: Path) -> Iterator[Callable[..., ClusterGateway]]:
    """Factory: ``cluster_gateway(cluster, name="gw1", user="gw1", first=1,
    shards=2, shard=0)`` starts a gateway and waits until it holds its
    subscription; every one is stopped at teardown."""
    gateways: list[ClusterGateway] = []

    def make(cluster: NatsCluster, name: str = "gw", user: str = "gw", start: bool = True,
             **kw: object) -> ClusterGateway:
        gw = ClusterGateway(cluster, tmp_path / f"cgw-{name}-{len(gateways)}", name, user, **kw)  # type: ignore[arg-type]
        gateways.append(gw)
        return gw.start() if start else gw

    try:
        yield make
    finally:
        for gw in gateways:
            gw.stop()
