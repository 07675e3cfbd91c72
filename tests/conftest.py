"""Shared fixtures: real Mosquitto brokers on free loopback ports, MQTT test
clients, and the path of the shared test vectors.

Every process or client a fixture starts is stopped in its ``finally``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from gateway.broker import LocalBroker
from tests.gateway_proc import GatewaySubprocess
from tests.pg_fixtures import pg_database, pg_dsn, pg_server  # noqa: F401 (fixtures)
from tests.cluster_fixtures import cluster_gateway, nats_cluster  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_vectors() -> Path:
    """``$MOTESEAL_SHARED`` or ``<repo>/../shared``: where ``vectors/`` lives."""
    return Path(os.environ.get("MOTESEAL_SHARED") or REPO.parent / "shared")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Callable[..., LocalBroker]]:
    """Factory: ``mosquitto(auth=True, accounts={"gw": "gateway"}, extra=[...])``
    starts a real Mosquitto on a free 127.0.0.1 port with a config rendered
    from ``broker_config/local.conf`` and returns the ``LocalBroker``
    (``.port``, ``.passwords[user]``, ``.add(user, role)``, ``.stop()``)."""
    brokers: list[LocalBroker] = []

    def start(auth: bool = True, accounts: dict[str, str] | None = None,
              extra: list[str] | None = None) -> LocalBroker:
        broker = LocalBroker(tmp_path / f"broker{len(brokers)}", auth=auth, extra=extra)
        brokers.append(broker)
        for user, role in (accounts or {}).items():
            broker.add(user, role)
        return broker.start()

    try:
        yield start
    finally:
        for broker in brokers:
            broker.stop()


class MqttTestClient:
    """A paho MQTT v5 client for tests: records every received message and
    every SUBACK/PUBACK reason, with bounded waits."""

    def __init__(self, broker: LocalBroker, user: str | None = None,
                 client_id: str | None = None, clean_start: bool = True,
                 session_expiry: int = 0) -> None:
        self.messages: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
        self.suback: "queue.Queue[list[int]]" = queue.Queue()
        self.puback: dict[int, int] = {}
        self._acked = threading.Condition()
        self.connected = threading.Event()
        self.connect_rc: int | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"t-{uuid.uuid4().hex[:10]}",
                                  protocol=mqtt.MQTTv5)
        if user is not None:
            self.client.username_pw_set(user, broker.passwords[user])
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.suback.put([int(r.value) for r in rcs])
        self.client.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        self.client.connect("127.0.0.1", broker.port, keepalive=30,
                            clean_start=clean_start, properties=props)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise TimeoutError("test client did not connect")

    def _on_connect(self, client, userdata, flags, rc, props) -> None:  # type: ignore[no-untyped-def]
        self.connect_rc = int(rc.value)
        self.connected.set()

    def _on_publish(self, client, userdata, mid, rc, props) -> None:  # type: ignore[no-untyped-def]
        with self._acked:
            self.puback[mid] = int(rc.value)
            self._acked.notify_all()

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """Subscribe and return the SUBACK reason codes (>= 128 is a refusal)."""
        self.client.subscribe(topic, qos)
        return self.suback.get(timeout=10)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Publish and, for QoS 1, wait for the PUBACK; return its reason code."""
        info = self.client.publish(topic, payload, qos)
        if qos == 0:
            return 0
        deadline = time.monotonic() + 10
        with self._acked:
            while info.mid not in self.puback:
                if not self._acked.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no PUBACK for {topic}")
            return self.puback.pop(info.mid)

    def collect(self, n: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Wait for ``n`` messages (fewer if ``timeout`` passes first)."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            try:
                got.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
        return got

    def quiet(self, seconds: float) -> list[tuple[str, bytes]]:
        """Everything that arrives within ``seconds``."""
        return self.collect(10**9, timeout=seconds)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_client() -> Iterator[Callable[..., MqttTestClient]]:
    """Factory: ``mqtt_client(broker, user="sensor-1")`` returns a connected
    ``MqttTestClient``; all are disconnected at teardown."""
    clients: list[MqttTestClient] = []

    def make(broker: LocalBroker, user: str | None = None, **kw: object) -> MqttTestClient:
        c = MqttTestClient(broker, user, **kw)  # type: ignore[arg-type]
        clients.append(c)
        return c

    try:
        yield make
    finally:
        for c in clients:
            c.close()


class GatewayProcess(GatewaySubprocess):
    """``moteseal gateway run`` as a real subprocess against a test broker.
    Not thread-safe."""

    def __init__(self, broker: LocalBroker, workdir: Path, name: str = "gw",
                 user: str = "gw", rate: float = 1000.0, burst: float = 1000.0,
                 routes: dict[str, list[str]] | None = None, share_group: str = "",
                 metrics_port: int = 0, max_envelope_bytes: int = 1200,
                 max_inflight: int = 100, peers: list[str] | None = None) -> None:
        import json as _json

        super().__init__(workdir, broker.passwords.get(user, ""))
        routes = routes or {"mqtt": ["*"]}
        route_lines = "\n".join(f"{k} = {_json.dumps(v)}" for k, v in routes.items())
        self.config.write_text(f"""
[gateway]
name = "{name}"
max_envelope_bytes = {max_envelope_bytes}
status_file = "status.json"
status_interval = 0.2

[mqtt]
host = "127.0.0.1"
port = {broker.port}
username = "{user}"
password_file = "gw.password"
client_id = "moteseal-gateway-{name}"
share_group = "{share_group}"
share_group_trusted = {"true" if share_group else "false"}
max_inflight = {max_inflight}

[rate_limit]
rate = {rate}
burst = {burst}

[routes]
{route_lines}

[policy]
peers = {_json.dumps(peers or ["hub"])}

[metrics]
port = {metrics_port}

[log]
file = "gateway.log"
""")


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory: ``gateway_process(broker, name="gw", ...)`` writes a
    gateway.toml for ``broker`` and starts ``moteseal gateway run`` on it,
    waiting until it holds its subscription; every one is stopped at teardown."""
    procs: list[GatewayProcess] = []

    def make(broker: LocalBroker, name: str = "gw", start: bool = True,
             **kw: object) -> GatewayProcess:
        gp = GatewayProcess(broker, tmp_path / f"gateway-{name}-{len(procs)}", name=name, **kw)  # type: ignore[arg-type]
        procs.append(gp)
        return gp.start() if start else gp

    try:
        yield make
    finally:
        for gp in procs:
            gp.stop()
