"""Delivered readings and acknowledgement high-water marks in PostgreSQL,
shared by the workers of a sharded hub (docs/scaling.md, "Sharded hubs").

``PgReadingStore`` is ``moteseal.peer.delivery.ReadingStore``'s contract
(``high_water``, ``deliver``, ``deliver_many``, ``readings``) on a database
several processes write at once. ``Inbox`` decides from high-water marks it
caches; two workers may briefly both hold a device (a worker that lost its
lease and has not noticed yet), so the store, not the cache, has the last
word.

Invariants:
- Rule 1 (exactly once across workers): ``readings`` has ``UNIQUE (device,
  boot, seq)``, and each reading's high-water mark moves with a conditional
  upsert that only ever moves it forward (``WHERE (boot, seq) < new``), both
  in the batch's one transaction. Of two workers that race to deliver the
  same reading, or to move one device's mark from the same stale view,
  exactly one commits; the other's whole batch rolls back and raises
  ``StoreError``. Its ``Inbox`` then forgets the cached marks of that batch
  and decides again from the store when the device resends (it was not
  acknowledged), which answers the duplicate with the current ack.
- Rule 2 (durable before the ack): ``deliver_many`` returns after COMMIT
  with ``synchronous_commit = on``.
- A database error never escapes as anything but ``StoreError``; a
  connection found broken outside a transaction is reopened once.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import psycopg

from moteseal.keys.registry_pg import show_dsn
from moteseal.peer.delivery import ReadingStore, StoreError

__all__ = ["PgReadingStore"]

_DDL = """
CREATE TABLE IF NOT EXISTS readings (
    id BIGSERIAL PRIMARY KEY,
    device TEXT NOT NULL,
    boot BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    body BYTEA NOT NULL,
    worker TEXT NOT NULL DEFAULT '',
    UNIQUE (device, boot, seq)
);
CREATE INDEX IF NOT EXISTS readings_by_device_time ON readings (device, received_at);
CREATE TABLE IF NOT EXISTS delivery (
    device TEXT PRIMARY KEY,
    boot BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    lost BIGINT NOT NULL DEFAULT 0
);
"""

# One statement: insert the device's first mark, or move it forward. A mark
# at or past (boot, seq) is left alone and the statement returns no row.
_MOVE = ("INSERT INTO delivery (device, boot, seq, lost) VALUES (%s, %s, %s, %s) "
         "ON CONFLICT (device) DO UPDATE SET boot = excluded.boot, seq = excluded.seq, "
         "lost = delivery.lost + excluded.lost "
         "WHERE (delivery.boot, delivery.seq) < (excluded.boot, excluded.seq) RETURNING 1")


class _Conflict(Exception):
    pass


class PgReadingStore(ReadingStore):
    """Readings and high-water marks in PostgreSQL (``dsn``). ``worker``
    names the writer in each reading's row (for audits and tests).

    Thread-safe: one connection behind a lock. Several instances in several
    processes may share one database (Rule 1)."""

    def __init__(self, dsn: str, *, worker: str = "", password: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        # ReadingStore.__init__ opens SQLite; this store sets up its own state.
        self.path = show_dsn(dsn)  # type: ignore[assignment]
        self._dsn, self._password = dsn, password
        self._clock = clock
        self._lock = threading.Lock()
        self.worker = worker
        self.conflicts = 0  # batches refused because another worker delivered first (Rule 1)
        try:
            self._conn = self._connect()
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x72656164,))  # one creator
                self._conn.execute(_DDL)
        except psycopg.Error as e:
            raise StoreError(f"reading store {self.path}: {_first_line(e)}") from None

    def _connect(self) -> psycopg.Connection:
        kw: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
        if self._password is not None:
            kw["password"] = self._password
        conn = psycopg.connect(self._dsn, **kw)
        conn.execute("SET synchronous_commit = on")  # Rule 2
        return conn

    def _live(self) -> psycopg.Connection:
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def high_water(self, device: str) -> tuple[int, int, int]:
        """``(boot, seq, lost)`` delivered for ``device``; ``(-1, -1, 0)`` if
        none. Raises ``StoreError``."""
        with self._lock:
            try:
                row = self._live().execute("SELECT boot, seq, lost FROM delivery WHERE device = %s",
                                           (device,)).fetchone()
            except psycopg.Error as e:
                raise StoreError(f"reading store {self.path}: {_first_line(e)}") from None
        return (int(row[0]), int(row[1]), int(row[2])) if row else (-1, -1, 0)

    def deliver_many(self, items: list[tuple[str, int, int, bytes, int]]) -> None:
        """Stores each ``(device, boot, seq, body, lost)`` and moves its
        device's mark forward, all in one transaction. Raises ``StoreError``
        (nothing of the batch written) if another worker delivered one of
        them first or moved a mark past it (Rule 1), or on a database error."""
        with self._lock:
            try:
                conn = self._live()
                with conn.transaction():
                    for device, boot, seq, body, lost in items:
                        conn.execute("INSERT INTO readings (device, boot, seq, received_at, body, worker) "
                                     "VALUES (%s, %s, %s, %s, %s, %s)",
                                     (device, boot, seq, self._clock(), bytes(body), self.worker))
                        if conn.execute(_MOVE, (device, boot, seq, lost)).fetchone() is None:
                            raise _Conflict(device)
            except (_Conflict, psycopg.errors.UniqueViolation):
                self.conflicts += 1
                raise StoreError(f"reading store {self.path}: another worker delivered first") from None
            except psycopg.Error as e:
                raise StoreError(f"reading store {self.path}: {_first_line(e)}") from None

    def readings(self, device: str | None = None) -> list[tuple[str, int, int, float, bytes]]:
        """``(device, boot, seq, received_at, body)`` in delivery order."""
        q = "SELECT device, boot, seq, received_at, body FROM readings"
        args: tuple = ()
        if device is not None:
            q += " WHERE device = %s"
            args = (device,)
        with self._lock:
            try:
                rows = self._live().execute(q + " ORDER BY id", args or None).fetchall()
            except psycopg.Error as e:
                raise StoreError(f"reading store {self.path}: {_first_line(e)}") from None
        return [(r[0], int(r[1]), int(r[2]), float(r[3]), bytes(r[4])) for r in rows]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
