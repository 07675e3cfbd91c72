"""``hub.toml``: the hub's configuration (docs/hub.md).

Every key is checked against ``SCHEMA``; an unknown section or key, or a
value of the wrong type, is a ``HubConfigError`` that names the file and the
``[section] key``. Relative paths are relative to the file's directory.
``moteseal hub init`` writes ``TEMPLATE`` with the store and the dashboard
on, bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.errors import LocalError
from gateway.config import CREDENTIALS_PREFIX, credential_path


class HubConfigError(LocalError):
    """hub.toml is missing, unreadable or wrong; the CLI exits 2."""

    exit_code = 2


_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")

# section -> key -> (type, default)
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "hub": {"registry": (str, ""), "store": (str, "readings.sqlite"),
            "max_session_age": (int, 86400), "command_rate": ((int, float), 1.0)},
    "mqtt": {"host": (str, "127.0.0.1"), "port": (int, 1883), "username": (str, ""),
             "password_file": (str, ""), "tls": (bool, False), "ca_file": (str, ""),
             "brokers": (list, []),  # ["host:port", ...]: a sharded worker's failover list
             "protocol": (str, "5")},  # "5" or "3.1.1" (a NATS cluster's MQTT listener)
    # A sharded deployment (docs/scaling.md): the registry, readings and
    # leases in PostgreSQL ($MOTESEAL_REGISTRY_URL overrides url).
    "registry": {"url": (str, ""), "password_file": (str, "")},
    "shards": {"count": (int, 64), "lease_seconds": ((int, float), 5.0),
               "renew_seconds": ((int, float), 1.0),
               "via": (str, "direct")},  # "direct": device up topics; "gateway": the peer's down topic
    "store": {"max_age_days": ((int, float), 365), "max_rows": (int, 10_000_000)},
    "dashboard": {"enabled": (bool, True), "bind": (str, "127.0.0.1"), "port": (int, 8080),
                  "token_file": (str, ""), "gateway_status": (str, "")},
    "metrics": {"port": (int, 0), "bind": (str, "127.0.0.1")},
    "jsonl": {"enabled": (bool, False), "path": (str, "-")},
    "home_assistant": {"enabled": (bool, False), "host": (str, "127.0.0.1"), "port": (int, 1883),
                       "username": (str, ""), "password_file": (str, ""),
                       "discovery_prefix": (str, "homeassistant"), "offline_after": (int, 900),
                       "fields": (dict, {}), "devices": (dict, {})},
}
FIELD_KEYS = {"unit": "unit_of_measurement", "device_class": "device_class",
              "state_class": "state_class", "name": "name"}

TEMPLATE = """# moteseal hub configuration (docs/hub.md). Relative paths are relative to this file.

[hub]
registry = "{registry}"        # the peer's registry (moteseal keygen --registry)
store = "readings.sqlite"      # delivered readings (SQLite, WAL): moteseal readings reads it
max_session_age = 86400        # seconds before a device must handshake again

[mqtt]                         # the broker the gateway relays through
host = "127.0.0.1"
port = 1883
username = "{peer}"
password_file = "{peer}.mqtt"  # the peer's MQTT password, mode 0600
tls = false
ca_file = ""

[store]
max_age_days = 365             # readings older than this are pruned
max_rows = 10000000            # and the oldest beyond this many

[dashboard]
enabled = true
bind = "127.0.0.1"             # anything else requires the token below
port = 8080
token_file = "dashboard.token"
gateway_status = ""            # the gateway's status file (gateway.toml [gateway] status_file), shown on the fleet page

[metrics]
port = 0                       # Prometheus metrics on this port (0: off; also /metrics on the dashboard)

[jsonl]
enabled = false
path = "-"                     # "-" is stdout

[home_assistant]               # MQTT discovery on the broker Home Assistant uses
enabled = false
host = "127.0.0.1"
port = 1883
username = ""
password_file = ""
discovery_prefix = "homeassistant"
offline_after = 900            # seconds without a reading before a device shows unavailable

[home_assistant.fields]        # per field name, for every device (per device: [home_assistant.devices.ID])
t = {{ unit = "°C", device_class = "temperature", state_class = "measurement" }}
rh = {{ unit = "%", device_class = "humidity", state_class = "measurement" }}
bat = {{ unit = "mV", device_class = "voltage", state_class = "measurement" }}
"""


@dataclass
class HubConfig:
    path: Path
    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    def path_of(self, section: str, key: str) -> Path | None:
        """A path value resolved against the file's directory; None if empty.
        ``$CREDENTIALS_DIRECTORY/NAME`` is a systemd credential; raises
        ``HubConfigError`` if that variable is not set."""
        v = self.values[section][key]
        if not v:
            return None
        if v.startswith(CREDENTIALS_PREFIX):  # a systemd credential (moteseal service install)
            expanded = credential_path(v)
            if expanded is None:
                raise HubConfigError(f"{self.path}: [{section}] {key} = {v!r}: $CREDENTIALS_DIRECTORY "
                                     "is not set (systemd sets it for a unit with LoadCredential=)")
            return Path(expanded)
        p = Path(v)
        return p if p.is_absolute() else self.path.parent / p

    def field_map(self, device: str, name: str) -> dict[str, str]:
        """Home Assistant attributes for ``device``'s field ``name``."""
        ha = self.values["home_assistant"]
        out = dict(ha["fields"].get(name, {}))
        out.update(ha["devices"].get(device, {}).get(name, {}))
        return out


def load(path: str | Path) -> HubConfig:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise HubConfigError(f"{p}: no such file (moteseal hub init writes one)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HubConfigError(f"{p}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise HubConfigError(f"{p}: not valid TOML: {e}") from None
    values: dict[str, dict[str, Any]] = {}
    for section in doc:
        if section not in SCHEMA:
            raise HubConfigError(f"{p}: unknown section [{section}]")
    for section, keys in SCHEMA.items():
        given = doc.get(section, {})
        if not isinstance(given, dict):
            raise HubConfigError(f"{p}: [{section}] must be a table")
        for key in given:
            if key not in keys:
                raise HubConfigError(f"{p}: unknown key [{section}] {key}")
        values[section] = {}
        for key, (typ, default) in keys.items():
            v = given.get(key, default)
            if v is None:
                raise HubConfigError(f"{p}: [{section}] {key} is required")
            if (typ is int and (isinstance(v, bool) or not isinstance(v, int))) or \
                    (typ is not int and not isinstance(v, typ)) or \
                    (typ == (int, float) and isinstance(v, bool)):
                raise HubConfigError(f"{p}: [{section}] {key} must be {_name(typ)}, not {v!r}")
            values[section][key] = v
    if not values["hub"]["registry"] and not values["registry"]["url"] and \
            not os.environ.get("MOTESEAL_REGISTRY_URL"):
        raise HubConfigError(f"{p}: [hub] registry is required")
    for b in values["mqtt"]["brokers"]:
        if not isinstance(b, str) or not _HOST_PORT.match(b):
            raise HubConfigError(f"{p}: [mqtt] brokers: each a \"host:port\" string, not {b!r}")
    for where, table in [("fields", values["home_assistant"]["fields"])] + [
            (f"devices.{d}", t) for d, t in values["home_assistant"]["devices"].items()]:
        _check_fields(p, where, table, nested=where == "fields")
    if values["mqtt"]["protocol"] not in ("5", "3.1.1"):
        raise HubConfigError(f"{p}: [mqtt] protocol must be \"5\" or \"3.1.1\"")
    if values["shards"]["via"] not in ("direct", "gateway"):
        raise HubConfigError(f"{p}: [shards] via must be \"direct\" or \"gateway\"")
    for key in ("port",):
        for section in ("mqtt", "dashboard", "home_assistant"):
            if not 0 <= values[section][key] <= 65535:
                raise HubConfigError(f"{p}: [{section}] {key} must be 1..65535")
    return HubConfig(p, values)


def _check_fields(p: Path, where: str, table: Any, nested: bool) -> None:
    if not isinstance(table, dict):
        raise HubConfigError(f"{p}: [home_assistant.{where}] must be a table")
    for name, attrs in table.items():
        if not isinstance(attrs, dict) or any(k not in FIELD_KEYS or not isinstance(v, str)
                                              for k, v in attrs.items()):
            raise HubConfigError(f"{p}: [home_assistant.{where}] {name}: a table of "
                                 f"{', '.join(FIELD_KEYS)} (strings)")


def _name(typ: Any) -> str:
    if isinstance(typ, tuple):
        return "a number"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "a table", list: "a list"}[typ]
