"""A real three-node NATS cluster (JetStream, MQTT 3.1.1 listeners) on free
loopback ports, and gateways run against it (``gateway.cluster``).

Every node runs in its own process group and dies with the test process
(``PR_SET_PDEATHSIG``); each fixture kills what it started in its
``finally``. Imported by tests/conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gateway.cluster import NatsCluster

REPO = Path(__file__).resolve().parent.parent

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


class ClusterGateway:
    """``moteseal gateway run`` as a subprocess on a NATS cluster: MQTT
    3.1.1, the cluster's nodes as ``hosts`` (``first`` is tried first), an
    optional shard. Not thread-safe."""

    def __init__(self, cluster: NatsCluster, workdir: Path, name: str, user: str,
                 first: int = 0, shards: int = 1, shard: int = 0,
                 client_id: str = "", rate: float = 1000.0) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.status_file = workdir / "status.json"
        self.log_file = workdir / "gateway.log"
        self.config = workdir / "gateway.toml"
        (workdir / "gw.password").write_text(cluster.passwords[user])
        hosts = cluster.mqtt_hosts[first:] + cluster.mqtt_hosts[:first]
        self.config.write_text(f"""
[gateway]
name = "{name}"
status_file = "status.json"
status_interval = 0.2

[mqtt]
hosts = {json.dumps(hosts)}
protocol = "3.1.1"
shards = {shards}
shard = {shard}
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
        self.proc: "subprocess.Popen[bytes] | None" = None

    def start(self, timeout: float = 30.0) -> "ClusterGateway":
        self.status_file.unlink(missing_ok=True)
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moteseal.cli.main", "gateway", "run", "--config",
                 str(self.config)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: "
                                   + (self.workdir / "stdout.log").read_text(errors="replace"))
            s = self.status()
            if s and s["links"]["mqtt"]["connected"]:
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("gateway did not connect; log:\n" + self.log_text())

    def status(self) -> dict | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text()
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no goodbye, in-flight work lost (the broker keeps it)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


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
