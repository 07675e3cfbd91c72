"""A clustered broker for moteseal: NATS server (JetStream + its MQTT 3.1.1
listener), its configuration generated from moteseal accounts, and
``NatsCluster``, which runs N nodes on one machine (tests, benchmarks,
a development cluster). CPython only. docs/scaling.md says why NATS.

Invariants:
- The accounts are Mosquitto's (``gateway.broker``: same ids, same roles) and
  so are the rights, expressed as NATS subject permissions (an MQTT topic
  ``a/b/c`` is the NATS subject ``a.b.c``): a device may publish only
  ``moteseal.v1.up.<id>`` and subscribe only ``moteseal.v1.down.<id>``; a
  gateway subscribes to every up subject and publishes every down subject,
  and publishes and subscribes the heartbeat subjects ``moteseal.v1.gw.*``; a
  monitor subscribes to everything under ``moteseal``. Every account may also
  subscribe to ``$MQTT.sub.>``: NATS delivers a QoS 1 subscription's
  JetStream consumer through such an internal subject, and an MQTT client
  cannot subscribe to it by name (the server refuses MQTT topics starting
  with ``$MQTT``; tests/gateway/test_cluster_hostile.py). Nothing else is
  allowed: NATS denies what no ``allow`` names.
- An id with ``.`` is refused here: NATS would turn it into two subject
  tokens of one MQTT topic level, and the permission would not be the one
  meant.
- Files holding passwords (``accounts.conf``) are 0600 from the start and
  replaced atomically. NATS 2.9 reads bcrypt hashes or plain passwords; the
  gateway package holds no crypto, so they are plain, readable only by the
  broker's user (docs/scaling.md).
- ``NatsCluster`` owns its node processes: each runs in its own process
  group with ``PR_SET_PDEATHSIG`` = SIGKILL (Linux), so a node dies with the
  process that started it, and ``stop``/``kill_node`` kill the whole group.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gateway import mqtt_wire as W
from gateway.broker import BrokerError, check_id, free_port
from gateway.shard import shard_of

__all__ = ["ClusterAccount", "NodePorts", "find_nats_server", "nats_permissions",
           "render_accounts", "render_node", "write_cluster", "NatsCluster", "shard_of"]

PROBE_ACCOUNT = "_probe"  # may connect, may publish and subscribe nothing


@dataclass(frozen=True)
class ClusterAccount:
    """One MQTT account: ``name`` (a moteseal id), ``role`` (gateway.broker.ROLES).
    Immutable: may be shared between threads."""

    name: str
    role: str
    password: str


@dataclass(frozen=True)
class NodePorts:
    """The ports of one node. Immutable: may be shared between threads."""

    client: int   # NATS protocol (also what monitoring tools use)
    cluster: int  # routes between nodes
    mqtt: int     # the MQTT 3.1.1 listener our clients use
    http: int     # monitoring: /healthz, /varz


def find_nats_server() -> str:
    """Path of ``nats-server``; raises ``BrokerError`` naming the package."""
    path = shutil.which("nats-server") or ("/usr/sbin/nats-server"
                                           if os.path.exists("/usr/sbin/nats-server") else None)
    if path is None:
        raise BrokerError("nats-server not found: install Debian's nats-server "
                          "(apt-get install nats-server)")
    return path


def _subject(topic: str) -> str:
    return topic.replace("/", ".").replace("+", "*").replace("#", ">")


def nats_permissions(name: str, role: str) -> dict[str, dict[str, list[str]]]:
    """The NATS permissions of one account (module invariants). Raises
    ``BrokerError`` for a bad id or role."""
    check_id(name)
    if "." in name:
        raise BrokerError(f"id {name!r}: NATS maps '.' in an MQTT topic level to a subject "
                          "separator; use ids without '.' on a NATS cluster")
    internal = "$MQTT.sub.>"
    if name == PROBE_ACCOUNT or role == "probe":
        return {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}
    if role == "device":
        pub, sub = [_subject(f"moteseal/v1/up/{name}")], [_subject(f"moteseal/v1/down/{name}")]
    elif role == "gateway":
        # Heartbeats (shard = "auto"): only gateways publish or read them.
        beat = _subject("moteseal/v1/gw/+")
        pub, sub = [_subject("moteseal/v1/down/+"), beat], [_subject("moteseal/v1/up/+"), beat]
    elif role == "monitor":
        pub, sub = [], [_subject("moteseal/#")]
    else:
        raise BrokerError(f"unknown role {role!r}")
    perms: dict[str, dict[str, list[str]]] = {"subscribe": {"allow": sub + [internal]}}
    perms["publish"] = {"allow": pub} if pub else {"deny": [">"]}
    return perms


def render_accounts(accounts: list[ClusterAccount]) -> str:
    """The ``authorization`` block every node includes (JSON is valid NATS config)."""
    users = []
    for acc in accounts:
        users.append({"user": acc.name, "password": acc.password,
                      "permissions": nats_permissions(acc.name, acc.role)})
    names = [u["user"] for u in users]
    if len(set(names)) != len(names):
        raise BrokerError("an account is listed twice")
    return "authorization " + json.dumps({"users": users}, indent=1) + "\n"


def render_node(index: int, ports: list[NodePorts], store_dir: Path, *,
                hosts: list[str] | None = None,
                cluster_name: str = "moteseal", ack_wait: str = "30s",
                max_store: str = "1G", replicas: int = 3,
                memory_consumers: bool = True) -> str:
    """One node's config. Every node lists every node's route (its own is
    skipped by the server). MQTT sessions and QoS 1 messages live in
    JetStream streams replicated on ``min(3, nodes)`` nodes, so a session
    survives the loss of a node (docs/scaling.md). ``ack_wait``: how long a
    delivered, unacknowledged QoS 1 message waits before JetStream sends it
    again (after a node dies under a subscriber, that is the redelivery time)."""
    hosts = hosts or ["127.0.0.1"] * len(ports)
    me, host = ports[index], hosts[index]
    routes = ", ".join(f"nats-route://{h}:{p.cluster}" for h, p in zip(hosts, ports))
    replicas = max(1, min(replicas, len(ports)))
    # Replicated consumers in memory: with file-backed R3 consumers 2.9.10
    # lost more QoS 1 deliveries (docs/scaling.md, "Known losses").
    memory = "  consumer_memory_storage: true\n" if replicas > 1 and memory_consumers else ""
    cluster = (f"cluster {{\n  name: {cluster_name}\n  listen: {host}:{me.cluster}\n"
               f"  routes: [ {routes} ]\n}}\n") if len(ports) > 1 else ""  # one node: none
    return f"""# moteseal cluster node {index + 1} of {len(ports)} (generated by gateway/cluster.py)
server_name: moteseal-n{index + 1}
listen: {host}:{me.client}
http: {host}:{me.http}
max_payload: 2048
jetstream {{
  store_dir: {json.dumps(str(store_dir))}
  max_memory_store: 64MB
  max_file_store: {max_store}
}}
{cluster}mqtt {{
  listen: {host}:{me.mqtt}
  stream_replicas: {replicas}
  consumer_replicas: {replicas}
{memory}  ack_wait: {json.dumps(ack_wait)}
  max_ack_pending: 1000
}}
include "accounts.conf"
"""


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_cluster(directory: Path, accounts: list[ClusterAccount], ports: list[NodePorts], *,
                  hosts: list[str] | None = None, ack_wait: str = "30s",
                  replicas: int = 3, memory_consumers: bool = True) -> list[Path]:
    """Write ``accounts.conf`` and ``node<i>.conf`` (one per node, its store in
    ``node<i>/``) into ``directory``; return the node config paths. ``hosts``:
    each node's address (default: loopback for all)."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(directory / "accounts.conf", render_accounts(accounts))
    paths = []
    for i in range(len(ports)):
        store = directory / f"node{i + 1}"
        store.mkdir(exist_ok=True)
        path = directory / f"node{i + 1}.conf"
        _write_private(path, render_node(i, ports, store.resolve(), hosts=hosts, ack_wait=ack_wait,
                                         replicas=replicas,
                                         memory_consumers=memory_consumers))
        paths.append(path)
    return paths


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class NatsCluster:
    """Runs a NATS cluster of ``nodes`` on free loopback ports in
    ``directory`` with ``accounts`` (``name -> role``; passwords generated,
    in ``.passwords``). ``start()`` waits (bounded) until every node answers
    MQTT; ``kill_node(i)`` SIGKILLs one; ``start_node(i)`` brings it back;
    ``stop()`` kills all. Not thread-safe: one thread at a time (a test may
    hand ``kill_node`` to a timer thread while it does not touch the cluster)."""

    def __init__(self, directory: Path, accounts: dict[str, str], nodes: int = 3,
                 ack_wait: str = "5s", replicas: int = 3, memory_consumers: bool = True) -> None:
        import secrets

        self.directory = Path(directory)
        self.passwords = {name: secrets.token_urlsafe(12) for name in accounts}
        self.passwords[PROBE_ACCOUNT] = secrets.token_urlsafe(12)
        self.roles = dict(accounts, **{PROBE_ACCOUNT: "probe"})
        self._nodes = nodes
        self._write = lambda ports: write_cluster(
            self.directory, [ClusterAccount(n, r, self.passwords[n]) for n, r in self.roles.items()],
            ports, ack_wait=ack_wait, replicas=replicas, memory_consumers=memory_consumers)
        self._pick_ports()
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * nodes
        self._exe = find_nats_server()

    def _pick_ports(self) -> None:
        self.ports = [NodePorts(free_port(), free_port(), free_port(), free_port())
                      for _ in range(self._nodes)]
        self.configs = self._write(self.ports)

    @property
    def mqtt_hosts(self) -> list[str]:
        """``host:port`` of every node's MQTT listener, node order."""
        return [f"127.0.0.1:{p.mqtt}" for p in self.ports]

    # A port free_port() saw free can be taken before the node binds it (by
    # any process's outgoing connection: ephemeral ports share the range);
    # the node then exits with this in its log, and start() tries again on
    # fresh ports, at most START_ATTEMPTS times in all.
    START_ATTEMPTS = 3
    _PORT_TAKEN = "address already in use"

    def start(self, timeout: float = 30.0) -> "NatsCluster":
        for attempt in range(self.START_ATTEMPTS):
            for i in range(len(self.ports)):
                self._spawn(i)
            try:
                self.wait_ready(range(len(self.ports)), timeout)
                return self
            except BrokerError as e:
                self.stop()
                if self._PORT_TAKEN not in str(e) or attempt == self.START_ATTEMPTS - 1:
                    raise
                for i in range(self._nodes):  # a fresh start: no half-made store, log kept aside
                    shutil.rmtree(self.directory / f"node{i + 1}", ignore_errors=True)
                    log = self.directory / f"node{i + 1}.log"
                    if log.exists():
                        log.rename(self.directory / f"node{i + 1}.attempt{attempt + 1}.log")
                self._pick_ports()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self, i: int) -> None:
        log = open(self.directory / f"node{i + 1}.log", "ab")
        try:
            self.procs[i] = subprocess.Popen(
                [self._exe, "-c", str(self.configs[i])], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent)
        finally:
            log.close()

    def start_node(self, i: int, timeout: float = 30.0) -> None:
        if self.procs[i] is not None and self.procs[i].poll() is None:  # type: ignore[union-attr]
            return
        self._spawn(i)
        self.wait_ready([i], timeout)

    def wait_ready(self, nodes: "range | list[int]", timeout: float) -> None:
        """Until each node in ``nodes`` says JetStream is healthy and accepts
        an MQTT CONNECT (which needs the account's MQTT streams); raises
        ``BrokerError`` with the node's log tail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for i in nodes:
            while True:
                proc = self.procs[i]
                if proc is None or proc.poll() is not None:
                    raise BrokerError(f"NATS node {i + 1} exited: {self.log_tail(i)}")
                if self._healthy(i) and self._mqtt_ok(i):
                    break
                if time.monotonic() > deadline:
                    raise BrokerError(f"NATS node {i + 1} not ready after {timeout:.0f} s: "
                                      f"{self.log_tail(i)}")
                time.sleep(0.2)

    def _healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[i].http}/healthz",
                                        timeout=2) as r:
                return bool(json.loads(r.read()).get("status") == "ok")
        except (OSError, ValueError):
            return False

    def _mqtt_ok(self, i: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.ports[i].mqtt), timeout=5) as s:
                s.settimeout(8)
                s.sendall(W.encode_connect(f"probe-{i}", 10, clean_start=True, session_expiry=0,
                                           receive_maximum=1, max_packet=4096,
                                           username=PROBE_ACCOUNT,
                                           password=self.passwords[PROBE_ACCOUNT], version=4))
                reader = W.PacketReader(4096)
                while True:
                    data = s.recv(4096)
                    if not data:
                        return False
                    for ptype, _f, body in reader.feed(data):
                        if ptype == W.CONNACK:
                            ok = W.parse_connack(body, version=4)[1] == 0
                            s.sendall(W.DISCONNECT_PACKET)
                            return ok
        except (OSError, W.ProtocolError):
            return False

    def log_tail(self, i: int, lines: int = 15) -> str:
        try:
            text = (self.directory / f"node{i + 1}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i``'s process group: no goodbye to its clients."""
        proc, self.procs[i] = self.procs[i], None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill_node(i)
