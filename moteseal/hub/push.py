"""Transfers through the running hub (docs/hub.md, "Updates"): the queue in
the hub's store, the inbox that takes the devices' status frames, and the
service thread that drives each ``moteseal.hub.transfer.Outgoing``.

``moteseal push`` and ``moteseal update`` reach the running hub the way
``moteseal send`` does: they write a row into the hub's store (a
``transfers`` table beside ``commands``) and the hub picks it up.

Invariants:
- Rule 1: at most one transfer per device is in flight (the device
  refuses a second one anyway); the next queued one for that device starts
  when it ends.
- Rule 2: status frames never wait for the sender: the inbox only hands
  them to the service's queue (the listener's thread holds its lock), and
  the service seals and publishes through ``PeerListener.send`` on its
  own thread.
- Rule 3: a row's state moves ``queued`` -> ``sending`` -> one of
  ``installed``, ``staged``, ``refused``, ``aborted``, ``timeout``, and
  ``offset`` follows the device's acknowledgements; a hub restart resumes
  a ``sending`` row from the device's own resume point (the manifest is
  sent again under the same transfer id).
- Rule 4: ``request_abort`` (``Hub.abort``) ends a queued transfer, or
  sends the device an abort for a sending one; a transfer that times out
  is aborted on the device too (best effort), so no partial file is left
  behind on purpose.
- Rule 5: no file content is logged or reported; reports carry ids,
  names, sizes, versions, offsets and states.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from typing import Any, Callable

from moteseal.hub import transfer as T
from device.errors import LocalError
from moteseal.hub.transfer import Outgoing, TransferError
from moteseal.peer.delivery import Accepted, Inbox, StoreError, open_wal

__all__ = ["TransferStore", "TransferService", "TransferInbox", "FINAL_STATES"]

FINAL_STATES = ("installed", "staged", "refused", "aborted", "timeout")
QUEUED_MAX = 8  # transfers waiting per device
# Pieces per second per transfer, at most (about 25 KiB/s of 65-byte
# pieces): leaves the link to telemetry, and bounds what a device's status
# frames can make the hub send (a "resume" asks for a window again).
DEFAULT_RATE = 400.0

_DDL = """
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    tid INTEGER NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    data BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    reason TEXT NOT NULL DEFAULT '',
    offset INTEGER NOT NULL DEFAULT 0,
    abort_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS transfers_by_state ON transfers (state, device);
"""


class TransferStore:
    """The ``transfers`` table in the hub's store file (its own connection:
    the CLI writes it while the hub runs; WAL mode). Thread-safe: one lock."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_wal(path, _DDL, lambda m: StoreError("transfer store " + m), durable=False,
                            timeout=10)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def queue(self, device: str, name: bytes, data: bytes, version: int | None = None,
              flags: int = 0) -> int:
        """Queues ``data`` as ``name`` for ``device``; returns the row id.
        ``version`` defaults to the wall clock in seconds (so it grows
        across hub restarts). Raises ``TransferError``, ``StoreError``."""
        if version is None:
            version = int(self._clock())
        Outgoing(name, data, version, flags)  # checks name, size and version now
        import secrets
        with self._lock:
            n = self._db.execute("SELECT count(*) FROM transfers WHERE device = ? AND state IN "
                                 "('queued', 'sending')", (device,)).fetchone()[0]
            if n >= QUEUED_MAX:
                raise StoreError(f"{device} has {n} transfers waiting already")
            cur = self._db.execute(
                "INSERT INTO transfers (device, tid, name, version, flags, data, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device, secrets.randbits(32), name.decode("ascii"), version, flags, data,
                 self._clock()))
            return int(cur.lastrowid or 0)

    def get(self, row: int) -> dict[str, Any] | None:
        """The row's state (without its data), or None."""
        with self._lock:
            r = self._db.execute("SELECT id, device, name, version, flags, length(data), state, "
                                 "reason, offset, created_at, finished_at FROM transfers "
                                 "WHERE id = ?", (row,)).fetchone()
        if r is None:
            return None
        keys = ("id", "device", "name", "version", "flags", "size", "state", "reason", "offset",
                "created_at", "finished_at")
        return dict(zip(keys, r))

    def startable(self, busy: set[str]) -> list[tuple[int, str, int, str, int, int, bytes]]:
        """Rows to start (Rule 1): the oldest ``sending`` or ``queued`` row
        of each device not in ``busy``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device, tid, name, version, flags, data FROM transfers "
                "WHERE state IN ('sending', 'queued') ORDER BY state = 'queued', id").fetchall()
        out, seen = [], set(busy)
        for r in rows:
            if r[1] not in seen:
                seen.add(r[1])
                out.append(r)
        return out

    def request_abort(self, row: int) -> bool:
        """Asks the hub to abort a queued or sending transfer (the device
        drops its partial file); False if it has ended already."""
        with self._lock:
            cur = self._db.execute("UPDATE transfers SET abort_requested = 1 WHERE id = ? AND "
                                   "state IN ('queued', 'sending')", (row,))
            return cur.rowcount > 0

    def aborts(self) -> list[tuple[int, str]]:
        """``(row, device)`` of every transfer whose abort was asked for."""
        with self._lock:
            return self._db.execute("SELECT id, device FROM transfers WHERE abort_requested = 1 "
                                    "AND state IN ('queued', 'sending')").fetchall()

    def update(self, row: int, state: str, offset: int, reason: str = "") -> None:
        with self._lock:
            self._db.execute("UPDATE transfers SET state = ?, offset = ?, reason = ?, "
                             "finished_at = ? WHERE id = ?",
                             (state, offset, reason,
                              self._clock() if state in FINAL_STATES else None, row))


class TransferAccepted(Accepted):
    """A status frame (no reading): the listener reports ``report``. Made
    once and only read afterwards, so it may be shared between threads."""

    __slots__ = ("report",)

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(None, None)
        self.report = report


class TransferInbox(Inbox):
    """``Inbox`` that hands the devices' status frames to ``on_status``
    (Rule 2) and everything else to the reading inbox. Thread-safe as
    ``Inbox``."""

    def __init__(self, store: Any, on_status: Callable[[str, bytes], None]) -> None:
        super().__init__(store)
        self.on_status = on_status

    def accept_many(self, items: list[tuple[str, bytes]]) -> list[Accepted]:
        rest = [(i, it) for i, it in enumerate(items) if not (it[1][:1] == bytes([T.STATUS]))]
        done = super().accept_many([it for _, it in rest]) if rest else []
        out: list[Accepted | None] = [None] * len(items)
        for (i, _), acc in zip(rest, done):
            out[i] = acc
        for i, (device, payload) in enumerate(items):
            if out[i] is None:
                self.on_status(device, payload)
                out[i] = TransferAccepted({"event": "transfer_status", "size": len(payload)})
        return [a for a in out if a is not None]


class TransferService:
    """Drives every transfer of a hub (Rules 1-4) on one thread: ``start()``,
    then status frames through ``on_status`` (any thread), ``stop()``.
    ``send(device, frame)`` seals and publishes (``PeerListener.send``;
    ``LocalError`` while the device has no session: the manifest is asked
    again later). ``report(dict)`` gets progress events.

    Thread-safe: ``on_status`` only queues; everything else runs on its
    thread."""

    def __init__(self, store: TransferStore, send: Callable[[str, bytes], Any],
                 report: Callable[[dict[str, Any]], None],
                 clock: Callable[[], float] = time.monotonic, window: int = 16,
                 retry_s: float = 3.0, timeout_s: float = 600.0, poll_s: float = 0.5,
                 rate: float = DEFAULT_RATE) -> None:
        self.store = store
        self._send = send
        self.report = report
        self.clock = clock
        self.window, self.retry_s, self.timeout_s, self.poll_s = window, retry_s, timeout_s, poll_s
        self.rate = rate  # pieces per second per transfer (0: by acknowledgements only)
        self.active: dict[str, tuple[int, Outgoing]] = {}
        self._q: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.counts = {"pieces": 0, "statuses": 0, "no_session": 0}

    def on_status(self, device: str, frame: bytes) -> None:
        self._q.put((device, bytes(frame)))

    def start(self) -> "TransferService":
        self.thread = threading.Thread(target=self._run, name="hub-transfers", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(5)

    def _emit(self, device: str, frames: list[bytes]) -> None:
        for f in frames:
            try:
                self._send(device, f)
            except LocalError:
                self.counts["no_session"] += 1
                return  # no session: the manifest goes again after retry_s (Outgoing Rule 2)
            if f[0] == T.PIECE:
                self.counts["pieces"] += 1

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            now = self.clock()
            if now >= next_poll:
                next_poll = now + self.poll_s
                self._start_new(now)
            try:
                device, frame = self._q.get(timeout=0.05)
            except queue.Empty:
                device, frame = "", b""
            now = self.clock()
            if device in self.active:
                self.counts["statuses"] += 1
                self._emit(device, self.active[device][1].on_status(frame, now))
            for dev, (_row, out) in list(self.active.items()):
                self._emit(dev, out.due(now))
                self._progress(dev)

    def _start_new(self, now: float) -> None:
        try:
            aborts = self.store.aborts()
            for row, device in aborts:
                cur = self.active.get(device)
                if cur is not None and cur[0] == row:
                    self._emit(device, [cur[1].abort()])  # ends as aborted in _progress
                else:
                    self.store.update(row, "aborted", 0, "requested")
            rows = self.store.startable(set(self.active))
        except (StoreError, sqlite3.Error):
            return
        for row, device, tid, name, version, flags, data in rows:
            try:
                out = Outgoing(name.encode("ascii"), data, version, flags, tid=tid,
                               window=self.window, retry_s=self.retry_s,
                               timeout_s=self.timeout_s, rate=self.rate)
            except TransferError as e:
                self.store.update(row, "refused", 0, str(e))
                continue
            self.active[device] = (row, out)
            self.store.update(row, "sending", 0)
            self.report({"event": "transfer_started", "device": device, "id": row, "name": name,
                         "size": len(data), "version": version})
            self._emit(device, out.start(now))

    def _progress(self, device: str) -> None:
        row, out = self.active[device]
        if out.done:
            del self.active[device]
            if out.state == "timeout":  # best effort: the device drops its partial file
                self._emit(device, [bytes([T.ABORT]) + out.tid.to_bytes(4, "big")])
            self.store.update(row, out.state, out.offset, out.reason)
            self.report({"event": "transfer_" + out.state, "device": device, "id": row,
                         "reason": out.reason, "offset": out.offset,
                         "pieces": out.sent_pieces, "manifests": out.manifests})
        elif out.offset != getattr(out, "_stored", -1):
            out._stored = out.offset  # type: ignore[attr-defined]
            self.store.update(row, "sending", out.offset)
