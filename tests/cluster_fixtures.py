"""A real three-node NATS cluster (JetStream, MQTT 3.1.1 listeners) on free
loopback ports, and gateways run against it (``gateway.cluster``).

Every node runs in its own process group and dies with the test process
(``PR_SET_PDEATHSIG``); each fixture kills what it started in its
``finally``. Imported by tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gateway.cluster import NatsCluster
from tests.gateway_proc import GatewaySubprocess


__all__ = ["nats_cluster", "cluster_gateway", "ClusterGateway"]


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
        self.config.write_text(f"""
[gateway]
name = "{name}"
status_file = "status.json"
status_interval = 0.2

[mqtt]
hosts = {json.dumps(hosts)}
protocol = "3.1.1"
shards = {shards or (64 if shard == "auto" else 1)}
shard = {json.dumps(shard)}
username = "{user}"
password_file = "gw.password"
client_id = "{client_id or 'moteseal-gateway-' + name}"
keepalive = 10

[rate_limit]
rate = {rate}
burst = {max(rate, 1.0)}

[policy]
peers = ["hub"]

[log]
file = "gateway.log"
""")


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
