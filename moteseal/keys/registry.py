"""The peer's device registry: an embedded SQLite file (CPython only).

One registry per peer. It holds the peer's static keys (by reference to
their key files), every provisioned device with its PSK and pinned peer
keys, the highest accepted handshake-message-1 counter per device, and
refusal counts. The peer's responder reads it at handshake time through the
*directory* methods ``psk_for``, ``is_revoked``, ``counter_get``,
``counter_set``, ``note_static_used``, ``statics`` and ``count_refusal``
(the duck type ``device.session.PeerSessions`` takes), and the CLI writes
it. Both may run at once: the file is in WAL mode and every directory read
goes to the database, so a revocation or a re-provisioning takes effect at
the device's next handshake message 1 without restarting the peer, and
ends the sessions it already holds (``revision()`` below).

Invariants:
- The file holds PSKs: it is created 0600 (directory 0700 when we create
  it) and refused when group or others may access it.
- ``counter_set`` commits with ``synchronous=FULL`` before it returns: a
  counter the responder accepted survives a power cut, so a replayed
  message 1 stays refused after a reboot.
- At most two peer keys are live: ``current`` and, during a rotation
  overlap, ``previous``. ``statics()`` returns them newest first. A second
  rotation before the previous key is retired is refused.
- A peer key's file must still hold the key registered for it; a file that
  now holds another key is an error, never a silent key change.
- Re-provisioning a device replaces its PSK, clears a revocation, resets its
  counter to -1 (the fresh firmware counts from 0; messages under the old
  PSK no longer authenticate) and bumps its generation.
- Refusal counts are buffered in memory and written at most once a second
  (the first of a quiet period at once, the rest of a burst within a
  second, and on ``close``), so a flood of forged message 1s costs no fsync
  each, and ``moteseal registry show`` sees a running peer's counts.
  Unknown device ids are folded into one row (``UNKNOWN_DEVICE``) so forged
  ids cannot grow the file. A flush that fails (a full disk) keeps the
  counts pending for the next one.
- Writes the responder needs durable (``counter_set``, ``note_static_used``,
  ``clear_restored``) raise ``device.errors.StorageError`` when SQLite
  cannot write (a full disk, an I/O error): the transaction is rolled back
  and the next call retries, so a running peer recovers when space returns.
- ``revision()`` changes whenever this or another connection may have
  changed a device or a peer key (SQLite's ``data_version`` plus a local
  count), so a running peer drops the sessions a revocation, a
  re-provisioning or a retirement ended (``device.peer`` Rule 4).
- A backup written by ``backup()`` and a registry after ``restore()`` mark
  every device ``restored``: the peer holds its message-1 payloads until the
  device confirms a session, because message 1s recorded after the backup
  carry counters above the restored ones (``device.peer`` Rule 6).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

from device.errors import StorageError
from moteseal.keys.keyfile import KeyFileError, KeyPair, check_private_mode, read_key_file
from moteseal.keys.records import (  # noqa: F401 (re-exported: the registry's public names)
    _DDL, _ID_CHARS, ID_MAX_BYTES, PADDING_DDL, PSK_BYTES, RESTORED_DDL, SCHEMA_VERSION, UNKNOWN_DEVICE,
    DeviceRecord, RegistryError, RegistryRefusal, parse_id, read_padding, show_id, write_padding)

_REFUSAL_FLUSH_SECONDS = 1.0
_REFUSAL_LOG_SECONDS = 10.0

log = logging.getLogger("moteseal.registry")

Passphrase = bytes | None | Callable[[str], "bytes | None"]


class Registry:
    """A peer's registry file. Thread-safe; one connection per instance.
    (``moteseal.keys.registry_pg.PgRegistry`` is the same API on PostgreSQL.)

    ``passphrase`` opens encrypted peer key files for ``statics()``: bytes,
    a callable ``(key_path) -> bytes | None``, or None for
    ``$MOTESEAL_PASSPHRASE``.
    """

    # What the database raises: caught where a write failure must not stop the
    # peer (refusal counts) or becomes ``StorageError`` (``_Storing``).
    _DB_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: str | os.PathLike[str], *, create_for_peer: bytes | None = None, passphrase: Passphrase = None):
        self.path: Any = Path(path)
        self._passphrase = passphrase
        self._lock = threading.RLock()
        self._keys: dict[bytes, KeyPair] = {}
        self._pending: dict[tuple[bytes, str], int] = {}
        self._last_flush = time.monotonic() - _REFUSAL_FLUSH_SECONDS  # first refusal: written at once
        self._last_log: dict[tuple[bytes, str], tuple[float, int]] = {}
        self._key_error_logged: dict[str, float] = {}
        self._flush_timer: threading.Timer | None = None
        self._closed = False
        self._store_error_logged = -1e9
        self._local_rev = 0  # bumped by this connection's own changes (data_version misses them)
        exists = self.path.exists()
        if not exists:
            if create_for_peer is None:
                raise RegistryError(
                    f"{self.path}: no registry here; create one with "
                    "'moteseal keygen --peer PEER_ID --out PEER.key'"
                )
            parse_id(create_for_peer, "peer id")
            if not self.path.parent.exists():
                os.makedirs(self.path.parent, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        check_private_mode(self.path)
        self._db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if not exists:
                assert create_for_peer is not None
                self._db.executescript(_DDL)  # executescript commits by itself
                with self._tx():
                    self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    self._db.execute("INSERT INTO meta VALUES ('peer_id', ?)", (create_for_peer.decode("ascii"),))
            meta = dict(self._db.execute("SELECT k, v FROM meta").fetchall())
            if meta.get("schema") == str(SCHEMA_VERSION):
                self._db.execute(RESTORED_DDL)
                self._db.execute(PADDING_DDL)
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise RegistryError(f"{self.path}: not a moteseal registry ({e})") from None
        if meta.get("schema") != str(SCHEMA_VERSION) or "peer_id" not in meta:
            self._db.close()
            raise RegistryError(f"{self.path}: unsupported registry schema {meta.get('schema')!r}")
        self.peer_id: bytes = meta["peer_id"].encode("ascii")

    # ------------------------------------------------------------ plumbing

    def _tx(self) -> "_Tx":
        return _Tx(self._db, self._lock)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            try:
                self.flush_refusals()
            except self._DB_ERRORS as e:
                log.error("registry %s: refusal counts not written: %s", self.path, e)
            self._closed = True
            self._db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key_states(self) -> dict[bytes, str]:
        return {r["pub"]: r["state"] for r in self._db.execute("SELECT pub, state FROM peer_keys")}

    # ------------------------------------------------------------ peer keys

    def peer_keys(self) -> list[dict[str, Any]]:
        """All peer keys ever registered, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM peer_keys ORDER BY created_at DESC, rowid DESC").fetchall()
        return [dict(r) for r in rows]

    def live_pubs(self) -> list[bytes]:
        """Public keys the peer answers on, newest first (what a device
        provisioned now pins)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT pub FROM peer_keys WHERE state != 'retired' ORDER BY created_at DESC, rowid DESC"
            ).fetchall()
        return [r["pub"] for r in rows]

    def add_peer_key(self, pub: bytes, key_path: str | os.PathLike[str]) -> None:
        """Register the peer's first static key. Raises ``RegistryRefusal``
        if the peer already has one (use ``rotate_to``)."""
        with self._tx():
            if self._db.execute("SELECT 1 FROM peer_keys WHERE state != 'retired'").fetchone():
                raise RegistryRefusal(
                    f"peer {show_id(self.peer_id)} already has a static key; changing it would lock out "
                    "its devices. Use 'moteseal rotate' for an overlap instead"
                )
            self._insert_key(pub, key_path)

    def rotate_to(self, pub: bytes, key_path: str | os.PathLike[str]) -> None:
        """Make ``pub`` current; the current key becomes ``previous`` and
        the peer keeps answering on it until ``retire_previous``.

        Raises ``RegistryRefusal`` during an unfinished overlap, and
        ``RegistryError`` if the peer has no key yet.
        """
        with self._tx():
            self.check_can_rotate()
            self._db.execute("UPDATE peer_keys SET state = 'previous' WHERE state = 'current'")
            self._insert_key(pub, key_path)
            self._local_rev += 1

    def check_can_rotate(self) -> None:
        """Raise what ``rotate_to`` would raise, without changing anything."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM peer_keys WHERE state = 'previous'").fetchone():
                raise RegistryRefusal(
                    "a rotation overlap is still open; retire the previous key first ('moteseal rotate --retire')"
                )
            if not self._db.execute("SELECT 1 FROM peer_keys WHERE state = 'current'").fetchone():
                raise RegistryError(f"peer {show_id(self.peer_id)} has no static key to rotate from")

    def _insert_key(self, pub: bytes, key_path: str | os.PathLike[str]) -> None:
        if self._db.execute("SELECT 1 FROM peer_keys WHERE pub = ?", (pub,)).fetchone():
            raise RegistryRefusal("this public key was registered before; a retired key never comes back")
        self._db.execute(
            "INSERT INTO peer_keys (pub, key_path, state, created_at) VALUES (?, ?, 'current', ?)",
            (pub, str(Path(key_path).resolve()), time.time()),
        )

    def devices_needing_reprovision(self) -> list[DeviceRecord]:
        """Active devices that pin no current key (locked out by a retire)."""
        return [d for d in self.list_devices() if not d.revoked and d.needs_reprovision]

    def retire_previous(self, force: bool = False) -> bytes:
        """End the overlap: the previous key is retired and no longer served.

        Returns the retired public key. Raises ``RegistryError`` if there is
        no overlap and ``RegistryRefusal`` if active devices pin only the old
        key (unless ``force``).
        """
        with self._tx():
            row = self._db.execute("SELECT pub FROM peer_keys WHERE state = 'previous'").fetchone()
            if row is None:
                raise RegistryError("no previous key to retire (no rotation in progress)")
            stuck = self.devices_needing_reprovision()
            if stuck and not force:
                names = ", ".join(show_id(d.device_id) for d in stuck[:10])
                raise RegistryRefusal(
                    f"{len(stuck)} active device(s) pin only the old key and would be locked out: {names}. "
                    "Re-provision them first, or pass --force"
                )
            self._db.execute(
                "UPDATE peer_keys SET state = 'retired', retired_at = ? WHERE pub = ?", (time.time(), row["pub"])
            )
            self._keys.pop(row["pub"], None)
            self._local_rev += 1
        return row["pub"]

    # ------------------------------------------------------------ devices

    def provision(self, device_id: bytes, psk: bytes, suite: str, replace: bool = False) -> DeviceRecord:
        """Record ``device_id`` with ``psk``, pinning every live peer key.

        Raises ``RegistryError`` if the device exists and not ``replace``, or
        the peer has no key; ``ValueError`` for a PSK of the wrong size.
        """
        parse_id(device_id)
        if len(psk) != PSK_BYTES:
            raise ValueError("a PSK is 32 bytes")
        with self._tx():
            pins = self.live_pubs()
            if not pins:
                raise RegistryError(
                    f"peer {show_id(self.peer_id)} has no static key yet; run "
                    f"'moteseal keygen --peer {show_id(self.peer_id)} --out PEER.key' first"
                )
            old = self._db.execute("SELECT generation FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if old is not None and not replace:
                raise RegistryError(
                    f"device {show_id(device_id)} is already provisioned; pass --replace to issue a new PSK "
                    "(the old one stops working at once)"
                )
            generation = 1 if old is None else old["generation"] + 1
            self._db.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
            self._db.execute("DELETE FROM device_pins WHERE device_id = ?", (device_id,))
            self._db.execute("DELETE FROM restored WHERE device_id = ?", (device_id,))
            self._local_rev += 1
            self._db.execute(
                "INSERT INTO devices (device_id, psk, suite, generation, provisioned_at) VALUES (?, ?, ?, ?, ?)",
                (device_id, psk, suite, generation, time.time()),
            )
            self._db.executemany(
                "INSERT INTO device_pins VALUES (?, ?, ?)", [(device_id, p, i) for i, p in enumerate(pins)]
            )
        return self.get(device_id)

    def get(self, device_id: bytes) -> DeviceRecord:
        """Raises ``RegistryError`` for an unknown device."""
        with self._lock:
            row = self._db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None:
                raise RegistryError(f"device {show_id(device_id)} is not in the registry of peer {show_id(self.peer_id)}")
            return DeviceRecord(row, self._pins(device_id), self._key_states())

    def _pins(self, device_id: bytes) -> list[bytes]:
        rows = self._db.execute(
            "SELECT pub FROM device_pins WHERE device_id = ? ORDER BY position", (device_id,)
        ).fetchall()
        return [r["pub"] for r in rows]

    def list_devices(self) -> list[DeviceRecord]:
        with self._lock:
            states = self._key_states()
            rows = self._db.execute("SELECT * FROM devices ORDER BY device_id").fetchall()
            return [DeviceRecord(r, self._pins(r["device_id"]), states) for r in rows]

    def revoke(self, device_id: bytes, reason: str = "revoked by operator") -> DeviceRecord:
        """Refuse the device from its next handshake message 1 on.
        Raises ``RegistryError`` for an unknown device."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE devices SET revoked_at = ?, revoke_reason = ? WHERE device_id = ? AND revoked_at IS NULL",
                (time.time(), reason, device_id),
            )
            if cur.rowcount == 0:
                self.get(device_id)  # raises for an unknown device; else already revoked
            self._local_rev += 1
        return self.get(device_id)

    def refusals(self, device_id: bytes | None = None) -> list[dict[str, Any]]:
        """Refusal counts by device and reason (this process's pending counts
        flushed first)."""
        with self._lock:
            self.flush_refusals()
            if device_id is None:
                rows = self._db.execute("SELECT * FROM refusals ORDER BY device_id, reason").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM refusals WHERE device_id = ? ORDER BY reason", (device_id,)
                ).fetchall()
        return [
            {
                "device_id": show_id(r["device_id"]),
                "reason": r["reason"],
                "count": r["count"],
                "first_at": r["first_at"],
                "last_at": r["last_at"],
            }
            for r in rows
        ]

    # ------------------------------------------------------------ directory (PeerSessions)

    def psk_for(self, device_id: bytes) -> bytes | None:
        """The device's PSK, or None for a device the registry does not know."""
        with self._lock:
            row = self._db.execute("SELECT psk FROM devices WHERE device_id = ?", (bytes(device_id),)).fetchone()
        return None if row is None else row["psk"]

    def padding(self, device_id: bytes) -> Any:
        """The device's ``PadPolicy`` or None (``device/peer.py`` Rule 9)."""
        with self._lock:
            return read_padding(self._db, bytes(device_id))

    def set_padding(self, device_id: bytes, policy: Any) -> None:
        """Sets or (None) clears the padding ``provision`` puts in bundles."""
        with self._tx():
            write_padding(self._db, bytes(device_id), policy)

    def is_revoked(self, device_id: bytes) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT revoked_at FROM devices WHERE device_id = ?", (bytes(device_id),)
            ).fetchone()
        return row is not None and row["revoked_at"] is not None

    def counter_get(self, device_id: bytes) -> int:
        """Highest accepted handshake-message-1 counter; -1 if none."""
        with self._lock:
            row = self._db.execute("SELECT counter FROM devices WHERE device_id = ?", (bytes(device_id),)).fetchone()
        return -1 if row is None else row["counter"]

    def counter_set(self, device_id: bytes, value: int) -> None:
        """Durable (committed, fsynced) before it returns. Raises
        ``StorageError`` (nothing written) if SQLite cannot write."""
        with self._storing("counter"), self._tx():
            self._db.execute(
                "UPDATE devices SET counter = ?, last_seen = ? WHERE device_id = ?",
                (int(value), time.time(), bytes(device_id)),
            )

    def note_static_used(self, device_id: bytes, static_pub: bytes) -> None:
        """Record which peer key the device last handshook with. Raises
        ``StorageError`` if SQLite cannot write."""
        with self._storing("last peer key"), self._tx():
            self._db.execute(
                "UPDATE devices SET last_static = ?, last_seen = ? WHERE device_id = ? "
                "AND (last_static IS NULL OR last_static != ?)",
                (bytes(static_pub), time.time(), bytes(device_id), bytes(static_pub)),
            )

    def revision(self) -> tuple[int, int]:
        """Changes whenever a device or peer key may have changed, here or
        in another process (cheap: no disk read)."""
        with self._lock:
            return self._local_rev, self._db.execute("PRAGMA data_version").fetchone()[0]

    def device_epoch(self, device_id: bytes) -> int | None:
        """The device's generation; None if unknown or revoked."""
        with self._lock:
            row = self._db.execute(
                "SELECT generation, revoked_at FROM devices WHERE device_id = ?", (bytes(device_id),)
            ).fetchone()
        return None if row is None or row["revoked_at"] is not None else row["generation"]

    def static_live(self, static_pub: bytes) -> bool:
        """True while the peer key is registered and not retired."""
        with self._lock:
            row = self._db.execute("SELECT state FROM peer_keys WHERE pub = ?", (bytes(static_pub),)).fetchone()
        return row is not None and row["state"] != "retired"

    def restored(self, device_id: bytes) -> bool:
        """True while the device's counter comes from a backup and it has
        not confirmed a session since."""
        with self._lock:
            return self._db.execute(
                "SELECT 1 FROM restored WHERE device_id = ?", (bytes(device_id),)
            ).fetchone() is not None

    def clear_restored(self, device_id: bytes) -> None:
        """The device confirmed a session: its stored counter is again above
        every message 1 it sent before. Raises ``StorageError``."""
        with self._storing("restore mark"), self._tx():
            self._db.execute("DELETE FROM restored WHERE device_id = ?", (bytes(device_id),))

    def _storing(self, what: str) -> "_Storing":
        return _Storing(self, what)

    def statics(self) -> list[tuple[bytes, bytes]]:
        """The peer's live static key pairs ``(priv, pub)``, newest first.

        A live key whose file cannot be opened (missing, too open, needs a
        passphrase, wrong passphrase, holds another key) is logged as an
        error and left out, so one bad file during a rotation does not stop
        the devices on the other key. Raises that ``KeyFileError`` if no
        live key opens at all.
        """
        out, errors = self._open_statics()
        if errors:
            now = time.monotonic()
            for path, err in errors:
                if now - self._key_error_logged.get(path, -1e9) >= _REFUSAL_LOG_SECONDS:
                    self._key_error_logged[path] = now
                    log.error("peer key not served: %s", err)
            if not out:
                raise errors[0][1]
        return out

    def check_statics(self) -> list[tuple[bytes, bytes]]:
        """Like ``statics()``, but raises on the first key that does not open."""
        out, errors = self._open_statics()
        if errors:
            raise errors[0][1]
        return out

    def _open_statics(self) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, KeyFileError]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT pub, key_path FROM peer_keys WHERE state != 'retired' ORDER BY created_at DESC, rowid DESC"
            ).fetchall()
            out = []
            errors = []
            for r in rows:
                kp = self._keys.get(r["pub"])
                if kp is None:
                    try:
                        kp = self._load_key(r["key_path"], r["pub"])
                    except KeyFileError as e:
                        errors.append((r["key_path"], e))
                        continue
                    self._keys[r["pub"]] = kp
                out.append((kp.priv, kp.pub))
            return out, errors

    def _load_key(self, key_path: str, pub: bytes) -> KeyPair:
        pw = self._passphrase(key_path) if callable(self._passphrase) else self._passphrase
        try:
            kp = read_key_file(key_path, pw)
        except FileNotFoundError:
            raise KeyFileError(f"{key_path}: peer key file registered in {self.path} is missing") from None
        except OSError as e:
            raise KeyFileError(f"{key_path}: cannot read the peer key file: {e.strerror}") from None
        if kp.pub != pub:
            raise KeyFileError(
                f"{key_path}: holds a different key than the one registered in {self.path}; "
                "refusing a silent key change (use 'moteseal rotate')"
            )
        return kp

    def count_refusal(self, device_id: bytes, reason: str) -> None:
        """Count (and log, rate-limited) a refused handshake by reason."""
        device_id = bytes(device_id)
        with self._lock:
            known = self._db.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            key = (device_id if known else UNKNOWN_DEVICE, str(reason))
            self._pending[key] = self._pending.get(key, 0) + 1
            now = time.monotonic()
            last, suppressed = self._last_log.get((device_id, key[1]), (None, 0))
            if last is None or now - last >= _REFUSAL_LOG_SECONDS:
                more = f" ({suppressed} more since last log)" if suppressed else ""
                log.warning("refused handshake from device %s: %s%s", show_id(device_id), reason, more)
                if len(self._last_log) > 4096:  # bounded under forged-id floods
                    self._last_log.clear()
                self._last_log[(device_id, key[1])] = (now, 0)
            else:
                self._last_log[(device_id, key[1])] = (last, suppressed + 1)
            if now - self._last_flush >= _REFUSAL_FLUSH_SECONDS:
                try:
                    self.flush_refusals()
                except self._DB_ERRORS as e:  # pending still; a full disk must not stop the peer
                    log.error("registry %s: refusal counts not written: %s", self.path, e)
            elif self._flush_timer is None and not self._closed:
                # The tail of a burst reaches the file within a second even
                # if no further refusal comes to flush it.
                t = threading.Timer(_REFUSAL_FLUSH_SECONDS, self._timed_flush)
                t.daemon = True
                self._flush_timer = t
                t.start()

    def _timed_flush(self) -> None:
        with self._lock:
            self._flush_timer = None
            if not self._closed:
                try:
                    self.flush_refusals()
                except self._DB_ERRORS as e:  # counts stay pending for the next flush
                    log.error("registry %s: refusal counts not written: %s", self.path, e)

    def flush_refusals(self) -> None:
        """Write buffered refusal counts (on close, and within a second of a
        refusal)."""
        with self._lock:
            self._last_flush = time.monotonic()
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
            now = time.time()
            try:
                with self._tx():
                    self._db.executemany(
                        "INSERT INTO refusals VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id, reason) "
                        "DO UPDATE SET count = count + excluded.count, last_at = excluded.last_at",
                        [(d, r, n, now, now) for (d, r), n in pending.items()],
                    )
            except self._DB_ERRORS:
                for k, n in pending.items():  # bounded: ids the file lacks fold into one row
                    self._pending[k] = self._pending.get(k, 0) + n
                raise


class _Storing:
    """Turns an SQLite failure inside it into ``StorageError`` (logged,
    rate-limited): the caller refuses what it could not persist."""

    def __init__(self, reg: Registry, what: str):
        self._reg = reg
        self._what = what

    def __enter__(self) -> None:
        pass

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if isinstance(exc, self._reg._DB_ERRORS):
            reg = self._reg
            now = time.monotonic()
            if now - reg._store_error_logged >= _REFUSAL_LOG_SECONDS:
                reg._store_error_logged = now
                log.error("registry %s: %s not stored: %s", reg.path, self._what, exc)
            raise StorageError(f"registry {reg.path}: {self._what} not stored ({exc})") from None


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT under the instance lock; ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self._db = db
        self._lock = lock
        self._outer = False

    def __enter__(self) -> None:
        self._lock.acquire()
        self._outer = not self._db.in_transaction
        if self._outer:
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if self._outer:
                self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()
