"""``gateway.toml``: the gateway's configuration (tomllib).

Every error names the file and the key (``gateway.toml: [mqtt] port: expected
an integer from 1 to 65535``). Unknown keys are errors too, so that a typo
does not silently fall back to a default.

Removed keys: ``[mqtt] client`` (the gateway had a paho and a "lean" MQTT
client; it has one now, ``gateway/mqtt.py``). ``client = "paho"`` or
``"lean"`` is still accepted, ignored, and reported in
``GatewayConfig.warnings`` (the gateway logs a ``config_deprecated`` warning
at start); any other value is an error.

Example (every key optional except where noted)::

    [gateway]
    name = "gw1"                  # log field and default MQTT client id suffix
    max_envelope_bytes = 1200     # larger envelopes are dropped as "oversize"
    status_file = "gateway-status.json"   # written every status_interval s
    status_interval = 2.0

    [mqtt]
    host = "127.0.0.1"
    port = 1883
    hosts = []                       # ["10.0.0.1:1883", ...]: a cluster; replaces host/port,
                                     # tried in order, the next one on a failure
    protocol = "5"                   # or "3.1.1" (NATS's MQTT listener; docs/scaling.md)
    shards = 1                       # >1: forward only devices of shard `shard`
    shard = 0                        #   (SHA-256 of the device id, docs/scaling.md)
                                     # "auto": gateways share `shards` (default 64)
                                     #   by heartbeats and take a dead one's over
    heartbeat_s = 1.0                # auto: heartbeat period
    peer_timeout_s = 3.0             # auto: a gateway not heard for this long is dead
    takeover_replay_s = 2.0          # auto: look-back before a dead one's last heartbeat
    takeover_buffer = 20000          # auto: others' envelopes kept for a takeover
    username = "gw1"
    password_file = "gw1.password"   # or: password = "..."
    tls = false                      # true: CA in ca_file (system CAs if empty)
    ca_file = ""
    client_id = "moteseal-gateway-gw1"
    share_group = ""                 # "moteseal": $share among several gateways
    session_expiry = 3600            # s the broker keeps our queue while we are down
    keepalive = 30
    max_inflight = 100               # forwards awaiting PUBACK (capped by the broker)

    [rate_limit]
    rate = 20.0                      # envelopes/s per device (0: unlimited)
    burst = 40

    [routes]                         # link name -> device ids or patterns
    mqtt = ["hub1", "sensor-*"]

    [policy]                         # who may address whom (gateway.relay.RoutePolicy)
    peers = ["hub"]                  # peer ids or patterns; every other id is a device
    any_to_any = false               # true: any id may address any id (no policy)
    max_labelled = 4096              # ids labelled in last_seen / Prometheus; more are counted

    [metrics]
    host = "127.0.0.1"
    port = 9108                      # 0: no Prometheus endpoint

    [log]
    file = ""                        # JSON lines; stderr when empty
    level = "info"                   # "debug" also logs each relayed envelope's size

    [[serial]]                       # serial links (gateway.serial_bridge)
    name = "serial0"
    devices = ["mote-1"]             # added to [routes] for this link
    # port, baudrate, ...: read by the serial bridge
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.envelope import DEFAULT_MAX_ENVELOPE_BYTES
from gateway.membership import valid_member_name

__all__ = ["CREDENTIALS_PREFIX", "ConfigError", "GatewayConfig", "MqttConfig", "credential_path",
           "load_config", "parse_config"]

# A path value starting with this names a systemd credential: the unit's
# LoadCredential=NAME:SOURCE puts SOURCE's bytes in $CREDENTIALS_DIRECTORY/NAME
# (`moteseal service install` writes such units).
CREDENTIALS_PREFIX = "$CREDENTIALS_DIRECTORY/"


def credential_path(value: str) -> str | None:
    """``value`` with a leading ``$CREDENTIALS_DIRECTORY/`` replaced by that
    variable's value (any other value as it is); None if the variable is
    unset, i.e. not run by systemd with LoadCredential=."""
    if not value.startswith(CREDENTIALS_PREFIX):
        return value
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return os.path.join(directory, value[len(CREDENTIALS_PREFIX):]) if directory else None


# The values ``[mqtt] client`` could take before it was removed: still
# accepted (with a warning) so that an upgraded gateway starts with its old
# file; the link and its guarantees are the same for both.
REMOVED_MQTT_CLIENTS = ("paho", "lean")


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names file and key."""


@dataclass
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    # Broker nodes tried in order (host, port); from ``hosts`` or host/port.
    hosts: list[tuple[str, int]] = field(default_factory=list)
    protocol: int = 5  # MQTT protocol level: 5, or 4 (3.1.1)
    shards: int = 1
    shard: int = 0
    # shard = "auto" (gateway.membership): ownership by heartbeats among the
    # gateways; the buffer keeps others' envelopes for max(...) seconds.
    auto: bool = False
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 3.0
    takeover_replay_s: float = 2.0
    takeover_buffer: int = 20000
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""
    client_id: str = ""
    share_group: str = ""  # one gateway: a plain subscription survives broker restarts
    # A shared subscription lets any account that may SUBSCRIBE join the group
    # and take a share of the uplink (Mosquitto 2.0 never checks SUBSCRIBE):
    # refused unless the operator says the broker or its accounts are trusted.
    share_group_trusted: bool = False
    session_expiry: int = 3600
    keepalive: int = 30
    max_inflight: int = 100


@dataclass
class GatewayConfig:
    name: str = "gateway"
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    status_file: str = ""
    status_interval: float = 2.0
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    rate: float = 20.0
    burst: float = 40.0
    routes: dict[str, list[str]] = field(default_factory=lambda: {"mqtt": ["*"]})
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    log_file: str = ""
    log_level: str = "info"
    serial: list[dict[str, Any]] = field(default_factory=list)
    # A device may address only a peer, a peer only devices ("hub": the peer
    # id of `moteseal keygen --peer hub` and the demo).
    peers: list[str] = field(default_factory=lambda: ["hub"])
    any_to_any: bool = False
    max_labelled: int = 4096
    source: str = "<defaults>"
    warnings: list[str] = field(default_factory=list)  # deprecated keys; the runner logs them


class _Table:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, source: str, name: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{name}]: expected a table")
        self.source, self.name, self.data = source, name, data
        self.seen: set[str] = set()

    def _err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: [{self.name}] {key}: {msg}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self._err(key, f"expected a number, got {value!r}")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "number"
            raise self._err(key, f"expected {want}, got {value!r}")
        return value

    def int_in(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.get(key, int, default)
        if not lo <= value <= hi:
            raise self._err(key, f"expected an integer from {lo} to {hi}, got {value}")
        return int(value)

    def number(self, key: str, default: float, lo: float = 0.0) -> float:
        value = float(self.get(key, (int, float), default))
        if value < lo:
            raise self._err(key, f"expected a number >= {lo}, got {value}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self._err(unknown[0], "unknown key")


def _host_port(table: _Table, key: str, value: object) -> tuple[str, int]:
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not (host and sep and port.isdigit() and 1 <= int(port) <= 65535):
        raise table._err(key, f"expected \"host:port\" strings, got {value!r}")
    return host.strip("[]"), int(port)


def _id_list(table: _Table, key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise table._err(key, "expected a list of device ids or patterns")
    return list(value)


def parse_config(data: dict[str, Any], source: str = "<config>",
                 base_dir: Path | None = None) -> GatewayConfig:
    """Build a ``GatewayConfig`` from parsed TOML. Relative paths are taken
    from ``base_dir`` (the config file's directory). Raises ``ConfigError``."""
    base = base_dir or Path.cwd()
    cfg = GatewayConfig(source=source)
    known = {"gateway", "mqtt", "rate_limit", "routes", "metrics", "log", "serial", "policy"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: [{key}]: unknown table")

    t = _Table(source, "gateway", data.get("gateway", {}))
    cfg.name = t.get("name", str, cfg.name)
    cfg.max_envelope_bytes = t.int_in("max_envelope_bytes", cfg.max_envelope_bytes, 64, 65536)
    status = t.get("status_file", str, "")
    cfg.status_file = str(base / status) if status else ""
    cfg.status_interval = t.number("status_interval", cfg.status_interval, lo=0.1)
    t.done()

    t = _Table(source, "mqtt", data.get("mqtt", {}))
    m = cfg.mqtt
    m.host = t.get("host", str, m.host)
    m.port = t.int_in("port", m.port, 1, 65535)
    m.hosts = [_host_port(t, "hosts", v) for v in t.get("hosts", list, [])] or [(m.host, m.port)]
    protocol = t.get("protocol", str, "5")
    if protocol not in ("5", "3.1.1"):
        raise t._err("protocol", f"expected \"5\" or \"3.1.1\", got {protocol!r}")
    m.protocol = 5 if protocol == "5" else 4
    m.auto = t.data.get("shard") == "auto"
    if isinstance(t.data.get("shard"), str) and not m.auto:
        raise t._err("shard", f"expected an integer or \"auto\", got {t.data['shard']!r}")
    m.shards = t.int_in("shards", 64 if m.auto else 1, 1, 1024)
    m.shard = 0 if m.auto else t.int_in("shard", 0, 0, m.shards - 1)
    t.seen.add("shard")
    m.heartbeat_s = t.number("heartbeat_s", m.heartbeat_s, lo=0.05)
    m.peer_timeout_s = t.number("peer_timeout_s", max(m.peer_timeout_s, 2 * m.heartbeat_s),
                                lo=2 * m.heartbeat_s)
    m.takeover_replay_s = t.number("takeover_replay_s", m.takeover_replay_s)
    m.takeover_buffer = t.int_in("takeover_buffer", m.takeover_buffer, 0, 10_000_000)
    m.username = t.get("username", str, "")
    m.password = t.get("password", str, "")
    pw_file = t.get("password_file", str, "")
    if pw_file:
        if m.password:
            raise t._err("password_file", "set either password or password_file, not both")
        expanded = credential_path(pw_file)
        if expanded is None:
            raise t._err("password_file", f"{pw_file}: $CREDENTIALS_DIRECTORY is not set (systemd "
                                          "sets it for a unit with LoadCredential=)")
        try:
            m.password = (base / expanded).read_text().strip()
        except OSError as exc:
            raise t._err("password_file", f"cannot read {base / expanded}: {exc.strerror}") from None
    m.tls = t.get("tls", bool, False)
    ca = t.get("ca_file", str, "")
    m.ca_file = str(base / ca) if ca else ""
    m.client_id = t.get("client_id", str, "") or f"moteseal-gateway-{cfg.name}"
    if m.auto and not valid_member_name(m.client_id):
        raise t._err("client_id", "with shard = \"auto\" it names the gateway's heartbeat "
                     "topic: 1 to 64 of A-Z a-z 0-9 _ -")
    m.share_group = t.get("share_group", str, m.share_group)
    if any(ch in m.share_group for ch in "/+#"):
        raise t._err("share_group", "must not contain / + or #")
    m.share_group_trusted = t.get("share_group_trusted", bool, False)
    if m.share_group and not m.share_group_trusted:
        raise t._err("share_group", "a shared subscription lets any device account join the "
                     "group and take a share of the uplink (Mosquitto 2.0 does not check "
                     "SUBSCRIBE): run one gateway (share_group = \"\"), or set "
                     "share_group_trusted = true for a broker that checks subscriptions or "
                     "whose accounts you all trust (docs/gateway.md)")
    if m.share_group and m.protocol == 4:
        raise t._err("share_group", "shared subscriptions need MQTT 5 here (NATS's 3.1.1 "
                     "listener has none): split gateways with shards/shard instead")
    if m.share_group and (m.shards > 1 or m.auto):
        raise t._err("shards", "set either share_group or shards, not both")
    m.session_expiry = t.int_in("session_expiry", m.session_expiry, 0, 0xFFFFFFFF)
    m.keepalive = t.int_in("keepalive", m.keepalive, 5, 65535)
    m.max_inflight = t.int_in("max_inflight", m.max_inflight, 1, 65535)
    if "client" in t.data:
        client = t.get("client", str, "")
        if client not in REMOVED_MQTT_CLIENTS:
            raise t._err("client", f"this key was removed (the gateway has one MQTT client); "
                                   f"delete the line (got {client!r})")
        cfg.warnings.append(f"{source}: [mqtt] client = {client!r} is ignored: the gateway has "
                            f"one MQTT client now (gateway/mqtt.py); delete the line")
    t.done()

    t = _Table(source, "rate_limit", data.get("rate_limit", {}))
    cfg.rate = t.number("rate", cfg.rate)
    cfg.burst = t.number("burst", max(cfg.burst, cfg.rate), lo=1.0)
    t.done()

    if "routes" in data:
        t = _Table(source, "routes", data["routes"])
        cfg.routes = {link: _id_list(t, link, ids) for link, ids in t.data.items()}

    t = _Table(source, "policy", data.get("policy", {}))
    if "peers" in t.data:
        cfg.peers = _id_list(t, "peers", t.get("peers", list, []))
    cfg.any_to_any = t.get("any_to_any", bool, cfg.any_to_any)
    cfg.max_labelled = t.int_in("max_labelled", cfg.max_labelled, 0, 1_000_000)
    t.done()

    t = _Table(source, "metrics", data.get("metrics", {}))
    cfg.metrics_host = t.get("host", str, cfg.metrics_host)
    cfg.metrics_port = t.int_in("port", cfg.metrics_port, 0, 65535)
    t.done()

    t = _Table(source, "log", data.get("log", {}))
    log_file = t.get("file", str, "")
    cfg.log_file = str(base / log_file) if log_file else ""
    cfg.log_level = t.get("level", str, cfg.log_level)
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        raise t._err("level", f"expected debug, info, warning or error, got {cfg.log_level!r}")
    t.done()

    serial = data.get("serial", [])
    if not isinstance(serial, list):
        raise ConfigError(f"{source}: [[serial]]: expected an array of tables")
    for i, spec in enumerate(serial):
        t = _Table(source, f"serial {i}", spec)
        name = t.get("name", str, f"serial{i}")
        devices = _id_list(t, "devices", spec.get("devices", []))
        if name == "mqtt":
            raise t._err("name", "'mqtt' is the MQTT link's name")
        cfg.routes.setdefault(name, [])
        cfg.routes[name] = cfg.routes[name] + [d for d in devices if d not in cfg.routes[name]]
        # config_dir: the serial bridge resolves its relative queue path from it.
        cfg.serial.append(dict(spec, name=name, config_dir=str(base)))
    return cfg


def load_config(path: str | Path) -> GatewayConfig:
    """Read and check ``path``. Raises ``ConfigError`` naming the file and key."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, str(path), path.resolve().parent)
