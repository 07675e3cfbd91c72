"""The hub's embedded store: readings, one row per field, sink cursors and
queued commands, in the same SQLite file as the delivery high-water marks
(``moteseal.peer.delivery.ReadingStore``). Schema: docs/hub.md.

Invariants:
- Rule 1: a reading, its field rows and the device's high-water mark are
  written in one transaction (``ReadingStore.deliver`` calls
  ``_in_delivery`` inside it): a reading is in the store whole or not at all.
- Rule 2: every sink reads from the store after a cursor it persists here,
  so a sink that fails (disk full, broker down) loses nothing and holds up
  nothing: it catches up from its cursor. Pruning never removes a reading a
  sink has not passed, unless the store is over its size limit.
- Rule 3: commands are bounded: ``COMMAND_MAX_BYTES`` each and
  ``COMMANDS_QUEUED_MAX`` waiting (queued or sent, not yet acknowledged)
  per device. A command goes ``queued`` -> ``sent`` -> ``acknowledged``
  (the device answered its id: ``device/delivery.py``).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, Iterator

import cbor2

from moteseal.peer.delivery import ReadingStore, StoreError

COMMAND_MAX_BYTES = 200
COMMANDS_QUEUED_MAX = 16
FIELD_NAME_MAX = 32

_DDL = """
CREATE TABLE IF NOT EXISTS fields (
    reading_id INTEGER NOT NULL,
    device TEXT NOT NULL,
    field TEXT NOT NULL,
    ts REAL NOT NULL,
    num REAL,
    txt TEXT
);
CREATE INDEX IF NOT EXISTS fields_by_device_field_ts ON fields (device, field, ts);
CREATE INDEX IF NOT EXISTS fields_by_reading ON fields (reading_id);
CREATE TABLE IF NOT EXISTS sink_cursors (sink TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL,
    acked_at REAL,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'acknowledged'))
);
CREATE INDEX IF NOT EXISTS commands_by_device_state ON commands (device, state);
"""


def decode_fields(body: bytes) -> dict[str, Any]:
    """A reading's fields: a CBOR map's text keys with their values (numbers,
    bools, text; byte strings as hex). Anything else is one field,
    ``payload``: UTF-8 text if it is printable text, else hex."""
    try:
        value = cbor2.loads(body)
    except Exception:
        value = None
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        out: dict[str, Any] = {}
        for k, v in value.items():
            k = k[:FIELD_NAME_MAX]
            if isinstance(v, bool) or isinstance(v, (int, float)) or isinstance(v, str):
                out[k] = v
            elif isinstance(v, bytes):
                out[k] = v.hex()
            else:
                out[k] = repr(v)[:64]
        return out
    try:
        text = body.decode("utf-8")
        if text.isprintable():
            return {"payload": text}
    except UnicodeDecodeError:
        pass
    return {"payload": body.hex()}


class HubStore(ReadingStore):
    """``ReadingStore`` plus fields, sink cursors and commands.

    Thread-safe: one connection behind the store's lock."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, clock)
        with self._lock:
            try:
                self._db.executescript(_DDL)
            except sqlite3.Error as e:
                raise StoreError(f"reading store {self.path}: {e}") from None

    def _in_delivery(self, reading_id: int, device: str, ts: float, body: bytes) -> None:
        rows = []
        for name, v in decode_fields(body).items():
            num = float(v) if isinstance(v, (int, float)) else None
            rows.append((reading_id, device, name, ts, num, None if num is not None else str(v)))
        self._db.executemany("INSERT INTO fields (reading_id, device, field, ts, num, txt) "
                             "VALUES (?, ?, ?, ?, ?, ?)", rows)

    # -- reading back ---------------------------------------------------------

    def after(self, last_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Readings with ``id > last_id``, oldest first, with their fields."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device, boot, seq, received_at, body FROM readings WHERE id > ? "
                "ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        return [{"id": r[0], "device": r[1], "boot": r[2], "seq": r[3], "ts": r[4],
                 "fields": decode_fields(r[5])} for r in rows]

    def last_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(id) FROM readings").fetchone()
        return row[0] or 0

    def devices(self) -> list[dict[str, Any]]:
        """Per device: last reading time, readings in the last hour, lost."""
        hour = self._clock() - 3600
        with self._lock:
            rows = self._db.execute(
                "SELECT r.device, max(r.received_at), sum(r.received_at >= ?), "
                "coalesce(d.lost, 0) FROM readings r LEFT JOIN delivery d ON d.device = r.device "
                "GROUP BY r.device ORDER BY r.device", (hour,)).fetchall()
        return [{"device": r[0], "last_seen": r[1], "last_hour": r[2] or 0, "lost": r[3]}
                for r in rows]

    # -- sinks (Rule 2) ---------------------------------------------------------

    def cursor(self, sink: str) -> int:
        """The last reading id ``sink`` has handled; a new sink starts at the
        newest reading (it is not flooded with history)."""
        with self._lock:
            row = self._db.execute("SELECT last_id FROM sink_cursors WHERE sink = ?",
                                   (sink,)).fetchone()
        if row is not None:
            return row[0]
        start = self.last_id()
        self.set_cursor(sink, start)
        return start

    def set_cursor(self, sink: str, last_id: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO sink_cursors (sink, last_id) VALUES (?, ?) "
                             "ON CONFLICT (sink) DO UPDATE SET last_id = excluded.last_id",
                             (sink, last_id))

    def backlog(self, sink: str) -> int:
        return max(0, self.last_id() - self.cursor(sink))

    # -- retention ------------------------------------------------------------------

    def prune(self, max_age: float | None, max_rows: int | None) -> int:
        """Deletes readings older than ``max_age`` seconds that every sink has
        passed, then the oldest beyond ``max_rows`` (whatever the sinks).
        Returns how many readings went."""
        gone = 0
        with self._lock:
            db = self._db
            floor = db.execute("SELECT min(last_id) FROM sink_cursors").fetchone()[0]
            if max_age is not None:
                cut = self._clock() - max_age
                q = "SELECT id FROM readings WHERE received_at < ?"
                args: tuple = (cut,)
                if floor is not None:
                    q += " AND id <= ?"
                    args = (cut, floor)
                ids = [r[0] for r in db.execute(q, args)]
                gone += self._delete(ids)
            if max_rows is not None:
                n = db.execute("SELECT count(*) FROM readings").fetchone()[0]
                if n > max_rows:
                    ids = [r[0] for r in db.execute("SELECT id FROM readings ORDER BY id LIMIT ?",
                                                    (n - max_rows,))]
                    gone += self._delete(ids)
        return gone

    def _delete(self, ids: list[int]) -> int:
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"DELETE FROM fields WHERE reading_id IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM readings WHERE id IN ({marks})", chunk)
        return len(ids)

    # -- commands (Rule 3) ----------------------------------------------------------

    def queue_command(self, device: str, payload: bytes) -> int:
        """Queues ``payload`` for ``device``; returns the command id (the hub
        frames it with that id). Raises ``StoreError`` if it is empty or too
        large, or the device already has ``COMMANDS_QUEUED_MAX`` waiting."""
        if not payload or len(payload) > COMMAND_MAX_BYTES:
            raise StoreError(f"a command is 1..{COMMAND_MAX_BYTES} bytes")
        with self._lock:
            n = self._db.execute("SELECT count(*) FROM commands WHERE device = ? AND state != 'acknowledged'",
                                 (device,)).fetchone()[0]
            if n >= COMMANDS_QUEUED_MAX:
                raise StoreError(f"{device} has {n} commands queued already")
            cur = self._db.execute("INSERT INTO commands (device, payload, created_at) VALUES (?, ?, ?)",
                                   (device, bytes(payload), self._clock()))
            return int(cur.lastrowid)

    def queued_commands(self, device: str, resend_after: float = 30.0) -> list[tuple[int, bytes]]:
        """Commands to send to ``device`` now: queued ones, and sent ones the
        device has not answered within ``resend_after`` seconds (the same id
        again: the device acts on an id once)."""
        cut = self._clock() - resend_after
        with self._lock:
            return [(r[0], bytes(r[1])) for r in self._db.execute(
                "SELECT id, payload FROM commands WHERE device = ? AND (state = 'queued' OR "
                "(state = 'sent' AND sent_at < ?)) ORDER BY id", (device, cut))]

    def command_acked(self, device: str, command_id: int) -> bool:
        """The device answered ``command_id``; False if it is not that device's."""
        with self._lock:
            cur = self._db.execute("UPDATE commands SET state = 'acknowledged', acked_at = ? "
                                   "WHERE id = ? AND device = ? AND state != 'acknowledged'",
                                   (self._clock(), command_id, device))
            return cur.rowcount == 1

    def command_sent(self, command_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE commands SET state = 'sent', sent_at = ? WHERE id = ?",
                             (self._clock(), command_id))

    def command(self, command_id: int) -> dict[str, Any] | None:
        with self._lock:
            r = self._db.execute("SELECT id, device, created_at, sent_at, acked_at, state FROM commands "
                                 "WHERE id = ?", (command_id,)).fetchone()
        return None if r is None else {"id": r[0], "device": r[1], "created_at": r[2],
                                       "sent_at": r[3], "acked_at": r[4], "state": r[5]}


def query(path: str, device: str | None = None, field: str | None = None,
          since: float | None = None, after_id: int = 0) -> Iterator[tuple[int, str, int, float, str, Any]]:
    """Field rows ``(reading_id, device, seq, ts, field, value)`` from a store
    file, read-only (another process may be writing it), oldest first."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        q = ("SELECT f.reading_id, f.device, r.seq, f.ts, f.field, coalesce(f.num, f.txt) "
             "FROM fields f JOIN readings r ON r.id = f.reading_id WHERE f.reading_id > ?")
        args: list[Any] = [after_id]
        if device is not None:
            q += " AND f.device = ?"
            args.append(device)
        if field is not None:
            q += " AND f.field = ?"
            args.append(field)
        if since is not None:
            q += " AND f.ts >= ?"
            args.append(since)
        yield from db.execute(q + " ORDER BY f.reading_id, f.field", args)
    finally:
        db.close()
