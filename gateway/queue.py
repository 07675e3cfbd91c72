"""A bounded, durable store-and-forward queue for unreachable serial devices.

Envelopes addressed to a serial-attached device whose link is down wait
here, in an embedded SQLite file, and are delivered in arrival order once
the link returns, across gateway restarts.

Invariants:
- Bounded twice: at most ``max_per_device`` envelopes per destination (the
  oldest is dropped to make room, counted as ``full``) and none older than
  ``max_age_s`` seconds (dropped when next touched, counted as ``expired``).
  A chatty or long-gone device cannot evict another device's messages.
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

__all__ = ["DurableQueue", "DEFAULT_MAX_PER_DEVICE", "DEFAULT_MAX_AGE_S"]

log = logging.getLogger("moteseal.gateway.queue")

# 1000 envelopes of at most 1200 bytes: ~1.2 MB per device on disk, room
# for a day of 1-per-minute commands.
DEFAULT_MAX_PER_DEVICE = 1000
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
    payload  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_dest_id ON queue (dest, id);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_COUNTERS = ("enqueued", "delivered", "dropped_full", "dropped_expired")


class DurableQueue:
    """Per-destination FIFO queues in one SQLite file. Thread-safe."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_per_device: int = DEFAULT_MAX_PER_DEVICE,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_per_device < 1 or max_age_s <= 0:
            raise ValueError("need max_per_device >= 1 and max_age_s > 0")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self.max_per_device = max_per_device
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
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

    def put(self, dest: str, payload: bytes) -> None:
        """Append ``payload`` for ``dest``, dropping that destination's oldest
        envelopes (counted ``full``) if it already holds ``max_per_device``."""
        now = self._clock()
        with self._lock, self._tx() as db:
            self._expire(now)
            db.execute(
                "INSERT INTO queue (dest, enqueued, payload) VALUES (?, ?, ?)",
                (dest, now, bytes(payload)),
            )
            self._bump("enqueued", 1)
            (n,) = db.execute("SELECT COUNT(*) FROM queue WHERE dest = ?", (dest,)).fetchone()
            over = n - self.max_per_device
            if over > 0:
                db.execute(
                    "DELETE FROM queue WHERE id IN "
                    "(SELECT id FROM queue WHERE dest = ? ORDER BY id LIMIT ?)",
                    (dest, over),
                )
                self._bump("dropped_full", over)
                log.info("queue: dropped %d oldest envelopes for %s (full)", over, dest)

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

    def depths(self) -> dict[str, int]:
        """``{dest: envelopes waiting}`` for every destination with any."""
        with self._lock:
            rows = self._db.execute("SELECT dest, COUNT(*) FROM queue GROUP BY dest").fetchall()
        return {d: int(n) for d, n in rows}

    def counters(self) -> dict[str, int]:
        """Persistent totals: enqueued, delivered, dropped_full, dropped_expired."""
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
