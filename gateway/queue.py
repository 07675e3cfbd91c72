"""A bounded, durable store-and-forward queue for unreachable serial devices.

Envelopes addressed to a serial-attached device whose link is down wait
here, in an embedded SQLite file, and are delivered in arrival order once
the link returns, across gateway restarts.

Invariants:
- Every envelope records its source (the envelope's ``src``, as the relay
  authenticated it). Bounds, all checked in one transaction per ``put``:
  at most ``max_per_device`` envelopes per destination, ``max_per_source``
  per source, ``max_dests`` destinations and ``max_bytes`` payload bytes in
  all, and none older than ``max_age_s`` seconds (dropped when next
  touched, counted ``expired``).
- One source can never evict another source's envelope. To make room a put
  drops only its own source's oldest envelopes (counted ``full``); if that
  is not enough (the room is held by others, or the destination would be
  one too many) the new envelope itself is refused (counted ``rejected``).
  So junk addressed to a chosen destination, or to thousands of made-up
  ones, costs its sender its own queue and nothing of anyone else's.
- Order: per destination, delivery follows arrival (``id`` is SQLite
  ``AUTOINCREMENT``, never reused, so order holds across restarts).
- At least once: an envelope is deleted only after ``send`` returned for
  it; a crash between the two resends it after restart, and the device's
  replay window discards the duplicate. Nothing is lost within the limits.
- Durability: WAL journal; ``synchronous=FULL`` by default, so a committed
  envelope survives power loss, not only a process crash (``NORMAL``
  trades that for fewer fsyncs on slow SD cards).
- Counters (enqueued, delivered, dropped by reason) live in the same file
  and survive restarts. Payload bytes are never logged.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["DurableQueue", "DEFAULT_MAX_PER_DEVICE", "DEFAULT_MAX_AGE_S",
           "DEFAULT_MAX_PER_SOURCE", "DEFAULT_MAX_DESTS", "DEFAULT_MAX_BYTES"]

log = logging.getLogger("moteseal.gateway.queue")

# 1000 envelopes of at most 1200 bytes: ~1.2 MB per device on disk, room
# for a day of 1-per-minute commands.
DEFAULT_MAX_PER_DEVICE = 1000
# A peer commanding every device of a port queues for all of them: ten
# devices' worth of full queues.
DEFAULT_MAX_PER_SOURCE = 10 * DEFAULT_MAX_PER_DEVICE
# Destinations (distinct device ids) with anything queued, in all.
DEFAULT_MAX_DESTS = 1024
# Payload bytes in all (the SQLite file is about this plus overhead):
# DEFAULT_MAX_PER_SOURCE envelopes of 1200 bytes with room for a second source.
DEFAULT_MAX_BYTES = 2 * DEFAULT_MAX_PER_SOURCE * 1200
# Older messages are stale for a sensor (commands, acks); a week covers a
# device shipped for repair.
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
# Envelopes handed to send() per transaction while draining.
_DRAIN_BATCH = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    dest     TEXT NOT NULL,
    enqueued REAL NOT NULL,
    payload  BLOB NOT NULL,
    src      TEXT NOT NULL DEFAULT '',
    size     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_dest_id ON queue (dest, id);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS queue_src_id ON queue (src, id);
CREATE INDEX IF NOT EXISTS queue_dest_src_id ON queue (dest, src, id);
"""
_COUNTERS = ("enqueued", "delivered", "dropped_full", "dropped_expired", "rejected")


class DurableQueue:
    """Per-destination FIFO queues in one SQLite file. Thread-safe: may be
    shared between threads (one lock serialises every operation)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_per_device: int = DEFAULT_MAX_PER_DEVICE,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        max_dests: int = DEFAULT_MAX_DESTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_per_device < 1 or max_age_s <= 0:
            raise ValueError("need max_per_device >= 1 and max_age_s > 0")
        if max_per_source < 1 or max_dests < 1 or max_bytes < 1:
            raise ValueError("need max_per_source, max_dests and max_bytes >= 1")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self.max_per_device = max_per_device
        self.max_age_s = max_age_s
        self.max_per_source = max_per_source
        self.max_dests = max_dests
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(queue)")}
        with self._tx():
            if "src" not in columns:  # a file from before sources were recorded
                self._db.execute("ALTER TABLE queue ADD COLUMN src TEXT NOT NULL DEFAULT ''")
            if "size" not in columns:
                self._db.execute("ALTER TABLE queue ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
                self._db.execute("UPDATE queue SET size = length(payload)")
        self._db.executescript(_INDEXES)
        with self._tx():
            for name in _COUNTERS:
                self._db.execute(
                    "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", (name,)
                )

    # -- plumbing ------------------------------------------------------------

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, *rest: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> DurableQueue._Tx:
        return DurableQueue._Tx(self._db)

    def _bump(self, name: str, by: int) -> None:
        if by:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    def _expire(self, now: float) -> None:
        cur = self._db.execute("DELETE FROM queue WHERE enqueued < ?", (now - self.max_age_s,))
        if cur.rowcount > 0:
            log.info("queue: %d envelopes expired", cur.rowcount)
            self._bump("dropped_expired", cur.rowcount)

    # -- public ----------------------------------------------------------------

    def put(self, dest: str, payload: bytes, src: str = "") -> bool:
        """Append ``payload`` from ``src`` for ``dest``; return whether it
        was queued. To stay within the bounds it drops ``src``'s own oldest
        envelopes (counted ``full``), or else refuses this one (counted
        ``rejected``); never anything another source queued."""
        now = self._clock()
        size = len(payload)
        with self._lock, self._tx() as db:
            self._expire(now)
            evict = self._room_for(db, dest, src, size)
            if evict is None:
                self._bump("rejected", 1)
                log.info("queue: refused an envelope from %s for %s (full)", src, dest)
                return False
            if evict:
                db.executemany("DELETE FROM queue WHERE id = ?", [(r,) for r in evict])
                self._bump("dropped_full", len(evict))
                log.info("queue: dropped %d oldest envelopes of %s (full)", len(evict), src)
            db.execute(
                "INSERT INTO queue (dest, enqueued, payload, src, size) VALUES (?, ?, ?, ?, ?)",
                (dest, now, bytes(payload), src, size),
            )
            self._bump("enqueued", 1)
        return True

    def _room_for(self, db: sqlite3.Connection, dest: str, src: str,
                  size: int) -> list[int] | None:
        """Ids of ``src``'s own envelopes to drop so that one more of
        ``size`` bytes from ``src`` to ``dest`` fits every bound, or None if
        it cannot fit without touching another source's envelopes."""
        if size > self.max_bytes:
            return None
        evict: list[int] = []
        (n_dest,) = db.execute("SELECT COUNT(*) FROM queue WHERE dest = ?", (dest,)).fetchone()
        if n_dest == 0:
            (n_dests,) = db.execute("SELECT COUNT(DISTINCT dest) FROM queue").fetchone()
            if n_dests >= self.max_dests:
                return None
        elif n_dest >= self.max_per_device:
            rows = db.execute(
                "SELECT id FROM queue WHERE dest = ? AND src = ? ORDER BY id LIMIT ?",
                (dest, src, n_dest - self.max_per_device + 1)).fetchall()
            if len(rows) < n_dest - self.max_per_device + 1:
                return None
            evict.extend(r for (r,) in rows)
        (n_src,) = db.execute("SELECT COUNT(*) FROM queue WHERE src = ?", (src,)).fetchone()
        (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM queue").fetchone()
        n_src -= len(evict)
        total -= self._sizes(db, evict)
        if n_src < self.max_per_source and total + size <= self.max_bytes:
            return evict
        # Walk src's own queue, oldest first, until both bounds hold.
        chosen = set(evict)
        for rid, rsize in db.execute(
                "SELECT id, size FROM queue WHERE src = ? ORDER BY id", (src,)):
            if n_src < self.max_per_source and total + size <= self.max_bytes:
                break
            if rid in chosen:
                continue
            evict.append(rid)
            n_src -= 1
            total -= rsize
        if n_src < self.max_per_source and total + size <= self.max_bytes:
            return evict
        return None

    @staticmethod
    def _sizes(db: sqlite3.Connection, ids: list[int]) -> int:
        total = 0
        for rid in ids:
            (n,) = db.execute("SELECT size FROM queue WHERE id = ?", (rid,)).fetchone()
            total += n
        return total

    def drain(self, dests: Iterable[str], send: Callable[[str, bytes], None]) -> int:
        """Deliver every queued envelope for ``dests``, oldest first per
        destination, through ``send(dest, payload)``; return how many were
        delivered. If ``send`` raises, the envelope stays queued (with all
        after it) and the exception propagates."""
        total = 0
        for dest in dests:
            while True:
                with self._lock:
                    with self._tx():
                        self._expire(self._clock())
                    rows = self._db.execute(
                        "SELECT id, payload FROM queue WHERE dest = ? ORDER BY id LIMIT ?",
                        (dest, _DRAIN_BATCH),
                    ).fetchall()
                if not rows:
                    break
                sent: list[int] = []
                try:
                    for rid, payload in rows:
                        send(dest, payload)
                        sent.append(rid)
                finally:
                    if sent:
                        with self._lock, self._tx() as db:
                            db.executemany("DELETE FROM queue WHERE id = ?", [(r,) for r in sent])
                            self._bump("delivered", len(sent))
                        total += len(sent)
        return total

    def depth(self, dest: str | None = None) -> int:
        """Envelopes waiting (for ``dest``, or in all)."""
        with self._lock:
            if dest is None:
                (n,) = self._db.execute("SELECT COUNT(*) FROM queue").fetchone()
            else:
                (n,) = self._db.execute(
                    "SELECT COUNT(*) FROM queue WHERE dest = ?", (dest,)
                ).fetchone()
        return int(n)

    def sources(self) -> dict[str, int]:
        """``{src: envelopes waiting}`` for every source with any."""
        with self._lock:
            rows = self._db.execute("SELECT src, COUNT(*) FROM queue GROUP BY src").fetchall()
        return {s: int(n) for s, n in rows}

    def size_bytes(self) -> int:
        """Payload bytes waiting in all."""
        with self._lock:
            (n,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM queue").fetchone()
        return int(n)

    def depths(self) -> dict[str, int]:
        """``{dest: envelopes waiting}`` for every destination with any."""
        with self._lock:
            rows = self._db.execute("SELECT dest, COUNT(*) FROM queue GROUP BY dest").fetchall()
        return {d: int(n) for d, n in rows}

    def counters(self) -> dict[str, int]:
        """Persistent totals: enqueued, delivered, dropped_full,
        dropped_expired, rejected."""
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM counters").fetchall()
        return {k: int(v) for k, v in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DurableQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
