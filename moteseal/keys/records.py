"""Device ids, the registry's schema and its device rows (CPython only).

Split from ``moteseal.keys.registry`` (which re-exports every name here) so
that the registry file holds the registry's behaviour and this one its data.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from device.errors import LocalError

SCHEMA_VERSION = 1
PSK_BYTES = 32
ID_MAX_BYTES = 16
UNKNOWN_DEVICE = b""  # refusal row for ids the registry does not know
_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_REFUSAL_FLUSH_SECONDS = 1.0
_REFUSAL_LOG_SECONDS = 10.0


class RegistryError(LocalError):
    """A registry operation cannot be done as asked (unknown device, bad id,
    already provisioned, no peer key yet). The CLI exits 2."""

    exit_code = 2


class RegistryRefusal(RegistryError):
    """A registry operation refused for safety (e.g. retiring a key that
    devices still depend on, a second rotation during an overlap, a key file
    that changed). The CLI exits 3."""

    exit_code = 3


def parse_id(text: str | bytes, what: str = "device id") -> bytes:
    """A device or peer id: 1..16 bytes of ASCII ``[A-Za-z0-9._-]``
    (``docs/protocol.md``). Raises ``RegistryError``."""
    b = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if not 1 <= len(b) <= ID_MAX_BYTES or any(c not in _ID_CHARS for c in b):
        raise RegistryError(f"{what} {text!r}: must be 1..{ID_MAX_BYTES} characters of A-Z a-z 0-9 . _ -")
    return b


def show_id(b: bytes) -> str:
    """An id for logs and tables; bytes outside the id alphabet escaped as
    ``\\xNN`` so a forged id cannot inject log lines."""
    if b == UNKNOWN_DEVICE:
        return "(unknown)"
    return "".join(chr(c) if c in _ID_CHARS else "\\x%02x" % c for c in b)


_DDL = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peer_keys (
    pub BLOB PRIMARY KEY,
    key_path TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('current', 'previous', 'retired')),
    created_at REAL NOT NULL,
    retired_at REAL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id BLOB PRIMARY KEY,
    psk BLOB NOT NULL,
    suite TEXT NOT NULL,
    generation INTEGER NOT NULL,
    provisioned_at REAL NOT NULL,
    revoked_at REAL,
    revoke_reason TEXT,
    counter INTEGER NOT NULL DEFAULT -1,
    last_static BLOB,
    last_seen REAL
);
CREATE TABLE IF NOT EXISTS device_pins (
    device_id BLOB NOT NULL,
    pub BLOB NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (device_id, pub)
);
CREATE TABLE IF NOT EXISTS restored (
    -- devices whose counter came from a backup: their message-1 payloads
    -- wait for a confirmed session (docs/keys.md, "Backup and restore")
    device_id BLOB PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS refusals (
    device_id BLOB NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    PRIMARY KEY (device_id, reason)
);
"""


# Added after schema 1 shipped; created on open, so older files gain it.
RESTORED_DDL = "CREATE TABLE IF NOT EXISTS restored (device_id BLOB PRIMARY KEY)"
# Padding per device (device/padding.py): a device without a row does not
# pad. Added after schema 1 too; the buckets of each kind as "32,64,...".
PADDING_DDL = ("CREATE TABLE IF NOT EXISTS padding (device_id BLOB PRIMARY KEY, "
               "hs TEXT NOT NULL, up TEXT NOT NULL, down TEXT NOT NULL)")


def parse_buckets(text: str, what: str = "--pad") -> tuple[int, ...]:
    """``"32,64,128,256"`` -> ``(32, 64, 128, 256)``: 1..8 strictly rising
    sizes of 1..65535 bytes (``device.padding.check_buckets``). Raises
    ``RegistryError``."""
    from device.padding import check_buckets

    try:
        buckets = tuple(int(x) for x in text.split(","))
        check_buckets(buckets)
    except (ValueError, LocalError) as e:
        raise RegistryError(f"{what} {text!r}: 1..8 rising sizes of 1..65535 bytes, "
                            f"e.g. 32,64,128,256 ({e})") from None
    return buckets


def pad_policy(buckets: str, hs: str | None = None, up: str | None = None,
               down: str | None = None) -> Any:
    """A ``device.padding.PadPolicy`` from bucket lists (per kind, each
    defaulting to ``buckets``). Raises ``RegistryError``."""
    from device.padding import PadPolicy

    b = parse_buckets(buckets)
    return PadPolicy(b, hs=hs and parse_buckets(hs, "--pad-hs"), up=up and parse_buckets(up, "--pad-up"),
                     down=down and parse_buckets(down, "--pad-down"))


def read_padding(db: sqlite3.Connection, device_id: bytes) -> Any:
    """The device's ``PadPolicy``, or None if it does not pad."""
    from device.padding import PadPolicy

    row = db.execute("SELECT hs, up, down FROM padding WHERE device_id = ?", (device_id,)).fetchone()
    if row is None:
        return None
    # By name: sqlite3.Row and PostgreSQL's rows (registry_pg._Row) both
    # take row["hs"], but the latter iterate over their keys.
    hs, up, down = (tuple(int(x) for x in str(row[k]).split(",")) for k in ("hs", "up", "down"))
    return PadPolicy(hs, hs=hs, up=up, down=down)


def write_padding(db: sqlite3.Connection, device_id: bytes, policy: Any) -> None:
    """Sets (``policy`` a ``PadPolicy``) or clears (None) a device's padding."""
    db.execute("DELETE FROM padding WHERE device_id = ?", (device_id,))
    if policy is not None:
        db.execute("INSERT INTO padding (device_id, hs, up, down) VALUES (?, ?, ?, ?)",
                   (device_id, *(",".join(map(str, k)) for k in (policy.hs, policy.up, policy.down))))


class DeviceRecord:
    """One row of the registry, without its PSK."""

    def __init__(self, row: sqlite3.Row, pins: list[bytes], key_states: dict[bytes, str]):
        self.device_id: bytes = row["device_id"]
        self.suite: str = row["suite"]
        self.generation: int = row["generation"]
        self.provisioned_at: float = row["provisioned_at"]
        self.revoked_at: float | None = row["revoked_at"]
        self.revoke_reason: str | None = row["revoke_reason"]
        self.counter: int = row["counter"]
        self.last_static: bytes | None = row["last_static"]
        self.last_seen: float | None = row["last_seen"]
        self.pins = pins
        self._states = key_states

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def pin_states(self) -> list[str]:
        return [self._states.get(p, "unknown") for p in self.pins]

    @property
    def last_key_state(self) -> str | None:
        """State of the peer key the device last handshook with (None: never)."""
        return None if self.last_static is None else self._states.get(self.last_static, "unknown")

    @property
    def needs_reprovision(self) -> bool:
        """True if the device pins no current key: retiring would lock it out."""
        return "current" not in self.pin_states()

    @property
    def on_old_key(self) -> bool:
        """True if the device pins only old keys or last used an old key."""
        last = self.last_key_state
        return self.needs_reprovision or (last is not None and last != "current")

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": show_id(self.device_id),
            "suite": self.suite,
            "generation": self.generation,
            "provisioned_at": self.provisioned_at,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
            "revoke_reason": self.revoke_reason,
            "counter": self.counter,
            "pinned_keys": [{"public_key": p.hex(), "state": s} for p, s in zip(self.pins, self.pin_states())],
            "last_key": None if self.last_static is None else self.last_static.hex(),
            "last_key_state": self.last_key_state,
            "last_seen": self.last_seen,
            "on_old_key": self.on_old_key,
            "needs_reprovision": self.needs_reprovision,
        }
