"""The peer's half of end-to-end delivery (docs/protocol.md, "Delivery";
the device's half is ``device/delivery.py``): each reading is stored
exactly once, in order per device, and acknowledged.

``ReadingStore`` is an SQLite file holding the delivered readings and, per
device, the high-water mark ``(boot, seq)`` of what it has delivered.
``Inbox`` decides for each decrypted payload whether it is the reading the
peer expects next, stores it and returns the acknowledgement to send.

Invariants:
- Rule 1 (exactly once): a reading and the high-water mark that covers it
  are written in one transaction, committed (``synchronous=FULL``) before
  the acknowledgement is handed out. A peer killed at any point either has
  both or neither; the device keeps what was not acknowledged and sends it
  again after its next handshake.
- Rule 2 (in order): within a run the peer accepts only
  ``max(hw + 1, seq - back)``: the next reading, or the oldest the device
  still retains when the ones between were evicted (those are counted in
  ``lost``, never silently skipped). Anything else is a duplicate or early,
  is not stored, and is answered with the current acknowledgement.
- Rule 3: a reading of a newer run (``boot``) starts that device afresh; a
  reading of an older run is a duplicate.
- Rule 4 (group commit): ``Inbox.accept_many`` decides a batch of payloads
  in order, as ``accept`` would one by one, and writes every reading it
  accepts in one transaction (``ReadingStore.deliver_many``): one commit,
  one fsync, for the batch. Its acknowledgements are handed out only after
  that commit; if it fails, nothing of the batch is written, the
  high-water marks stay where they were and ``StoreError`` is raised; the
  cached marks of the batch's devices are dropped, so the next decision
  reads the store (which a second writer may have moved:
  ``moteseal.hub.pg_store`` Rule 1).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from device import delivery as D
from device.errors import LocalError

_DDL = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    boot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    received_at REAL NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (device, boot, seq)
);
CREATE INDEX IF NOT EXISTS readings_by_device_time ON readings (device, received_at);
CREATE TABLE IF NOT EXISTS delivery (
    device TEXT PRIMARY KEY,
    boot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    lost INTEGER NOT NULL DEFAULT 0
);
"""


class StoreError(LocalError):
    """The reading store cannot be opened or written (exit 2 in the CLI)."""

    exit_code = 2


def open_wal(path: str | os.PathLike[str], ddl: str, fail: Callable[[str], Exception],
             durable: bool = True, timeout: float = 5.0) -> sqlite3.Connection:
    """An SQLite connection to ``path`` for an owner that serialises its use
    behind one lock (autocommit, any thread), in WAL mode so readers work
    while it writes, ``synchronous=FULL`` when ``durable`` (a commit is on
    disk when it returns: Rule 1, durable before the ack), with ``ddl`` run.
    An SQLite error raises ``fail("<path>: <error>")``, with no connection
    left open."""
    db = None
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
        db.execute("PRAGMA journal_mode=WAL")
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        db.executescript(ddl)
        return db
    except sqlite3.Error as e:
        if db is not None:
            db.close()
        raise fail(f"{path}: {e}") from None


class ReadingStore:
    """Delivered readings and per-device high-water marks in one SQLite file
    (WAL mode, so ``moteseal`` readers work while the peer writes).

    Thread-safe: one connection behind a lock.
    """

    def __init__(self, path: str | os.PathLike[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_wal(self.path, _DDL, lambda m: StoreError("reading store " + m))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def high_water(self, device: str) -> tuple[int, int, int]:
        """``(boot, seq, lost)`` delivered for ``device``; ``(-1, -1, 0)`` if none."""
        with self._lock:
            row = self._db.execute("SELECT boot, seq, lost FROM delivery WHERE device = ?",
                                   (device,)).fetchone()
        return (row[0], row[1], row[2]) if row else (-1, -1, 0)

    def deliver(self, device: str, boot: int, seq: int, body: bytes, lost: int) -> None:
        """Stores one reading and moves the high-water mark to it, in one
        transaction (Rule 1). Raises ``StoreError``; then nothing is written."""
        self.deliver_many([(device, boot, seq, body, lost)])

    def deliver_many(self, items: list[tuple[str, int, int, bytes, int]]) -> None:
        """``deliver`` for each ``(device, boot, seq, body, lost)`` in order,
        all in one transaction: one commit for the batch (Rule 4). Raises
        ``StoreError``; then nothing of the batch is written."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for device, boot, seq, body, lost in items:
                        ts = self._clock()
                        cur = self._db.execute(
                            "INSERT INTO readings (device, boot, seq, received_at, body) "
                            "VALUES (?, ?, ?, ?, ?)", (device, boot, seq, ts, bytes(body)))
                        self._in_delivery(cur.lastrowid, device, ts, bytes(body))
                        self._db.execute(
                            "INSERT INTO delivery (device, boot, seq, lost) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (device) DO UPDATE SET boot = excluded.boot, "
                            "seq = excluded.seq, lost = delivery.lost + excluded.lost",
                            (device, boot, seq, lost))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError(f"reading store {self.path}: {e}") from None

    def _in_delivery(self, reading_id: int, device: str, ts: float, body: bytes) -> None:
        """Hook inside ``deliver``'s transaction (the hub's store adds its
        per-field rows here); the caller holds the lock."""

    def readings(self, device: str | None = None) -> list[tuple[str, int, int, float, bytes]]:
        """``(device, boot, seq, received_at, body)`` in delivery order."""
        q = "SELECT device, boot, seq, received_at, body FROM readings"
        args: tuple = ()
        if device is not None:
            q += " WHERE device = ?"
            args = (device,)
        with self._lock:
            return [tuple(r) for r in self._db.execute(q + " ORDER BY id", args)]  # type: ignore[misc]


class Accepted:
    """What ``Inbox.accept`` made of one payload: ``body`` (the reading or
    raw payload to hand on, or None for a duplicate), ``ack`` (plaintext to
    send back to the device, or None), and ``seq``/``boot`` when framed."""

    __slots__ = ("body", "ack", "boot", "seq", "duplicate", "lost", "command_ack")

    def __init__(self, body: bytes | None, ack: bytes | None, boot: int = -1, seq: int = -1,
                 duplicate: bool = False, lost: int = 0, command_ack: int = -1) -> None:
        self.body, self.ack, self.boot, self.seq = body, ack, boot, seq
        self.duplicate, self.lost = duplicate, lost
        self.command_ack = command_ack  # a command id the device answered, or -1


class Inbox:
    """Deduplicates framed readings against ``store`` (Rules 2-3) and writes
    them to it (Rule 1). Unframed payloads pass through unstored and
    unacknowledged (devices without delivery).

    Thread-safe: one lock around each decision and its write.
    """

    def __init__(self, store: ReadingStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._hw: dict[str, tuple[int, int]] = {}

    def _high_water(self, device: str) -> tuple[int, int]:
        hw = self._hw.get(device)
        if hw is None:
            boot, seq, _ = self.store.high_water(device)
            hw = self._hw[device] = (boot, seq)
        return hw

    def accept(self, device: str, payload: bytes) -> Accepted:
        """One payload: ``accept_many`` of one. Raises ``StoreError``."""
        return self.accept_many([(device, payload)])[0]

    def accept_many(self, items: list[tuple[str, bytes]]) -> list[Accepted]:
        """Decides each ``(device, payload)`` in order (Rules 2-3) against
        the high-water marks as the batch moves them, and stores the
        accepted readings in one transaction (Rule 4). Raises
        ``StoreError``; then nothing is stored and no mark moves."""
        out: list[Accepted] = []
        with self._lock:
            moved: dict[str, tuple[int, int]] = {}  # marks as of this batch, not yet durable
            writes: list[tuple[str, int, int, bytes, int]] = []
            for device, payload in items:
                if len(payload) == D.COMMAND_HEAD_BYTES and payload[0] == D.COMMAND_ACK:
                    out.append(Accepted(None, None, command_ack=int.from_bytes(payload[1:5], "big")))
                    continue
                if not D.is_reading(payload, len(payload)):
                    out.append(Accepted(payload, None))
                    continue
                boot, seq, back = D.parse_reading(payload, len(payload))
                hb, hs = moved.get(device) or self._high_water(device)
                if boot < hb:
                    out.append(Accepted(None, self._ack(hb, hs), boot, seq, duplicate=True))
                    continue
                floor = -1 if boot > hb else hs  # Rule 3: a newer run starts afresh
                expected = max(floor + 1, seq - back)
                if seq != expected:
                    out.append(Accepted(None, self._ack(hb, hs), boot, seq, duplicate=True))
                    continue
                lost = expected - (floor + 1)
                body = bytes(payload[D.HEAD_BYTES:])
                writes.append((device, boot, seq, body, lost))
                moved[device] = (boot, seq)
                out.append(Accepted(body, self._ack(boot, seq), boot, seq, lost=lost))
            if writes:
                try:
                    self.store.deliver_many(writes)
                except StoreError:
                    # Another writer (a second hub worker) may have moved
                    # these marks: decide again from the store next time.
                    for device in moved:
                        self._hw.pop(device, None)
                    raise
            self._hw.update(moved)
        return out

    def forget(self, devices: list[str]) -> None:
        """Drop the cached high-water marks of ``devices``: the next payload
        from each is decided against the store (a sharded hub calls this
        when it takes a shard over)."""
        with self._lock:
            for device in devices:
                self._hw.pop(device, None)

    @staticmethod
    def _ack(boot: int, seq: int) -> bytes | None:
        if boot < 0:
            return None
        out = bytearray(D.ACK_BYTES)
        D.encode_ack_into(out, boot, seq)
        return bytes(out)
