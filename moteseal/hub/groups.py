"""Fleet broadcast in the hub: the hub holds a ``GroupHub``
(``moteseal/peer/group.py``), runs the group requests that ``moteseal
group ...`` and ``moteseal send --group`` leave in the group file, gives
every member that handshakes its current keys, and publishes each group
message once on ``moteseal/v1/group/<gid>`` (docs/hub.md, "Groups").

Invariants:
- Rule 1: the group file holds group ids, epoch numbers, member ids and
  requests; never a key (``GroupHub`` Rule 2: keys live in memory only and
  a restarted hub starts every group in a new epoch). It is still created
  ``0600`` like the registry, and a group file that others may read or
  write is refused (``GroupFileError``, exit 3): membership is who gets
  the fleet's commands, and a writable file would let anyone add a member.
- Rule 2: one thread (``GroupService.run``) touches the ``GroupHub``: the
  requests, the catch-ups and the publishes are serialised there, so no
  (epoch, counter) is sealed twice and the stored state is written after
  every change of membership, before the change is reported done.
- Rule 3: a member gets its keys only inside its pairwise session
  (``PeerListener.send``). A member without a session when its group
  changes gets them when it next handshakes: the service notes every
  device the hub hears from and sends ``catch_up`` until the keys have
  gone on the device's newest session. (Until the device confirms a new
  session the hub still sends on the one it confirmed before, which a
  rebooted device cannot read: so a re-send on an older session does not
  count, and the next message from the device brings it round again. A
  re-sent key of the epoch a member holds changes nothing:
  ``device/group.py`` Rule 1.)
- Rule 4: a group message is one MQTT publish whatever the group's size.
  Requests are bounded: ``GROUP_REQUESTS_QUEUED_MAX`` waiting, payloads
  of ``GROUP_MAX_PAYLOAD_BYTES``; a bad request fails with its reason in
  the file, never a traceback in the hub.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

from device.errors import LocalError
from device.group import GROUP_MAX_PAYLOAD_BYTES
from moteseal.peer.delivery import open_wal

GROUP_PREFIX = "moteseal/v1/group/"
GROUP_REQUESTS_QUEUED_MAX = 64
POLL_SECONDS = 0.2  # how often the hub looks for requests from the CLI
REQUESTS_KEPT_SECONDS = 86400.0  # finished requests stay this long for `--wait` and `--json`
OPS = ("create", "add", "remove", "rotate", "send")

_DDL = """
CREATE TABLE IF NOT EXISTS groups (
    gid TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    members TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS group_requests (
    id INTEGER PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('create', 'add', 'remove', 'rotate', 'send')),
    gid TEXT NOT NULL,
    arg BLOB NOT NULL,
    created_at REAL NOT NULL,
    done_at REAL,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'done', 'failed')),
    result TEXT
);
"""


class GroupFileError(LocalError):
    """The group file is readable or writable by others (exit 3)."""

    exit_code = 3


class GroupFileIOError(GroupFileError):
    """The group file cannot be opened or written (exit 1)."""

    exit_code = 1


def group_file_for(store_path: str | os.PathLike[str]) -> Path:
    """The group file beside the hub's store: ``<store>.groups``."""
    return Path(str(store_path) + ".groups")


def topic_for(gid: str) -> str:
    return GROUP_PREFIX + gid


class GroupFile:
    """The group file (SQLite, WAL): stored state and the request queue.
    Opened by the hub and by the CLI at the same time.

    Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | os.PathLike[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as e:
            raise GroupFileIOError(f"group file {self.path}: {e.strerror}") from None
        mode = self.path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):  # Rule 1
            raise GroupFileError(f"group file {self.path} is open to other users "
                                 f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
        self._db = open_wal(self.path, _DDL, lambda m: GroupFileIOError("group file " + m), timeout=10)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, q: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._db.execute(q, args).fetchall()
        except sqlite3.Error as e:
            raise GroupFileIOError(f"group file {self.path}: {e}") from None

    # -- state ------------------------------------------------------------------

    def state(self) -> dict[str, dict[str, Any]]:
        """``GroupHub.state()`` as stored: ``{gid: {"epoch", "members"}}``."""
        return {r[0]: {"epoch": r[1], "members": json.loads(r[2])}
                for r in self._run("SELECT gid, epoch, members FROM groups ORDER BY gid")}

    def save_state(self, state: dict[str, dict[str, Any]]) -> None:
        """Replaces the stored state in one transaction."""
        try:
            with self._lock:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("DELETE FROM groups")
                    db.executemany("INSERT INTO groups (gid, epoch, members) VALUES (?, ?, ?)",
                                   [(g, s["epoch"], json.dumps(s["members"]))
                                    for g, s in state.items()])
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise GroupFileIOError(f"group file {self.path}: {e}") from None

    # -- requests (Rule 4) ----------------------------------------------------------

    def request(self, op: str, gid: str, arg: bytes = b"") -> int:
        """Queues a request for the hub; returns its id. Raises ``LocalError``
        (unknown op, payload too large, too many waiting)."""
        if op not in OPS:
            raise LocalError(f"unknown group operation {op!r}")
        if op == "send" and not 1 <= len(arg) <= GROUP_MAX_PAYLOAD_BYTES:
            raise LocalError(f"a group message is 1..{GROUP_MAX_PAYLOAD_BYTES} bytes")
        n = self._run("SELECT count(*) FROM group_requests WHERE state = 'queued'")[0][0]
        if n >= GROUP_REQUESTS_QUEUED_MAX:
            raise LocalError(f"{n} group requests are waiting for the hub already (is it running?)")
        with self._lock:
            cur = self._db.execute("INSERT INTO group_requests (op, gid, arg, created_at) "
                                   "VALUES (?, ?, ?, ?)", (op, gid, bytes(arg), self._clock()))
            return int(cur.lastrowid)

    def queued(self) -> list[tuple[int, str, str, bytes]]:
        return [(r[0], r[1], r[2], bytes(r[3])) for r in self._run(
            "SELECT id, op, gid, arg FROM group_requests WHERE state = 'queued' ORDER BY id")]

    def finish(self, rid: int, ok: bool, result: str) -> None:
        """Records a request's outcome; drops those finished more than
        ``REQUESTS_KEPT_SECONDS`` ago (the file stays bounded)."""
        now = self._clock()
        self._run("UPDATE group_requests SET state = ?, result = ?, done_at = ? WHERE id = ?",
                  ("done" if ok else "failed", result, now, rid))
        self._run("DELETE FROM group_requests WHERE state != 'queued' AND done_at < ?",
                  (now - REQUESTS_KEPT_SECONDS,))

    def result(self, rid: int) -> dict[str, Any] | None:
        rows = self._run("SELECT id, op, gid, state, result, created_at, done_at "
                         "FROM group_requests WHERE id = ?", (rid,))
        if not rows:
            return None
        r = rows[0]
        return {"id": r[0], "op": r[1], "group": r[2], "state": r[3], "result": r[4],
                "created_at": r[5], "done_at": r[6]}

    def wait(self, rid: int, seconds: float) -> dict[str, Any] | None:
        """The request's row once the hub has run it, or as it is after ``seconds``."""
        deadline = time.monotonic() + seconds
        row = self.result(rid)
        while row is not None and row["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
            row = self.result(rid)
        return row


class GroupService:
    """The hub's groups (Rules 2-3): ``start(stop)`` runs the group thread;
    ``seen(device)`` (any thread, never blocks) notes a device the hub
    heard from. ``publish(topic, payload)`` sends one MQTT message.

    Thread-safe: ``seen`` and the read-only ``counts`` from any thread;
    everything else runs on the group thread."""

    def __init__(self, file: GroupFile, sessions: Any, listener: Any,
                 publish: Callable[[str, bytes], None],
                 report: Callable[[dict[str, Any]], None]) -> None:
        from moteseal.crypto.backend_nacl import NaclBackend
        from moteseal.peer.group import GroupHub

        self.file = file
        self.sessions = sessions
        self.listener = listener
        self.publish = publish
        self.report = report
        self.hub = GroupHub(NaclBackend(), sessions.peer_id)
        self.counts = {"group_messages": 0, "group_bytes": 0, "key_messages": 0,
                       "catch_ups": 0, "group_requests_failed": 0}
        self._seen: set[str] = set()  # devices heard from since the last pass: one per device
        self._seen_lock = threading.Lock()
        self._wake = threading.Event()
        self._keyed: dict[bytes, Any] = {}  # device -> session id its keys went on (Rule 3)
        self.thread: threading.Thread | None = None

    def restore(self) -> None:
        """Loads the stored groups; each starts a new epoch (``GroupHub``
        Rule 2). Nobody has a session yet: members get the keys when they
        handshake (Rule 3)."""
        state = self.file.state()
        if state:
            self.hub.restore(state)
            self.file.save_state(self.hub.state())

    def start(self, stop: threading.Event) -> "GroupService":
        self.thread = threading.Thread(target=self._run, args=(stop,), name="hub-groups",
                                       daemon=True)
        self.thread.start()
        return self

    def seen(self, device: str) -> None:
        with self._seen_lock:
            self._seen.add(device)
        self._wake.set()

    def _run(self, stop: threading.Event) -> None:
        polled = 0.0
        while not stop.is_set():
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            with self._seen_lock:
                devs, self._seen = self._seen, set()
            for dev in sorted(devs):
                self._catch_up(dev.encode())
            if time.monotonic() - polled < POLL_SECONDS:
                continue
            polled = time.monotonic()
            try:
                for rid, op, gid, arg in self.file.queued():
                    try:
                        self._request(rid, op, gid, arg)
                    except LocalError:
                        raise
                    except Exception as e:  # noqa: BLE001 - e.g. the MQTT client: fail the request, not the thread
                        self.counts["group_requests_failed"] += 1
                        self.file.finish(rid, False, f"{type(e).__name__}")
            except LocalError:
                pass  # the file is busy or failing: the next poll tries again

    def _sid(self, dev: bytes) -> Any:
        s = self.sessions.sessions(dev)
        return s[0][0] if s else None

    def _send(self, dev: bytes, msg: bytes) -> Any:
        """Sends a key message; returns the id of the session it went on.
        Raises ``LocalError`` (no session)."""
        from device.envelope import decode

        return decode(self.listener.send(dev.decode(), msg)).sid

    def _catch_up(self, dev: bytes) -> None:
        newest = self._sid(dev)
        if newest is None or self._keyed.get(dev) == newest:
            return
        msgs = self.hub.catch_up(dev)
        on = newest
        try:
            for m in msgs:
                on = self._send(dev, m)
        except LocalError:
            return  # its session went: the next one brings it round again
        if on != newest:
            return  # an older session: again once the device confirms the new one
        self._keyed[dev] = newest
        if msgs:
            self.counts["catch_ups"] += 1
            self.counts["key_messages"] += len(msgs)
            self.report({"event": "group_catch_up", "device": dev.decode(), "groups": len(msgs)})

    def _distribute(self, msgs: dict[bytes, bytes]) -> tuple[int, int]:
        sent = pending = 0
        for dev, m in msgs.items():
            try:
                on = self._send(dev, m)
            except LocalError:
                pending += 1  # Rule 3: keys at its next handshake
                self._keyed.pop(dev, None)
                continue
            sent += 1
            if on == self._sid(dev):
                self._keyed[dev] = on
            else:
                self._keyed.pop(dev, None)
        self.counts["key_messages"] += sent
        return sent, pending

    def _request(self, rid: int, op: str, gid: str, arg: bytes) -> None:
        g = gid.encode()
        try:
            if op == "send":
                msg = self.hub.seal(g, arg)
                self.publish(topic_for(gid), msg)  # Rule 4: one publish
                self.counts["group_messages"] += 1
                self.counts["group_bytes"] += len(msg)
                result = {"bytes": len(msg), "members": len(self.hub.members(g)),
                          "epoch": self.hub.epoch(g)}
            else:
                if op == "create":
                    members = [m.encode() for m in json.loads(arg.decode() or "[]")]
                    msgs = self.hub.create(g, members)
                elif op == "add":
                    msgs = self.hub.add(g, arg)
                elif op == "remove":
                    msgs = self.hub.remove(g, arg)
                else:
                    msgs = self.hub.rotate(g)
                self.file.save_state(self.hub.state())  # Rule 2: stored before "done"
                sent, pending = self._distribute(msgs)
                result = {"epoch": self.hub.epoch(g), "members": len(self.hub.members(g)),
                          "keys_sent": sent, "keys_pending": pending}
        except (LocalError, ValueError, UnicodeDecodeError) as e:
            self.counts["group_requests_failed"] += 1
            self.file.finish(rid, False, f"{type(e).__name__}: {e}")
            self.report({"event": "group_failed", "group": gid, "op": op,
                         "error": type(e).__name__})
            return
        self.file.finish(rid, True, json.dumps(result, sort_keys=True))
        self.report({"event": "group_" + op, "group": gid, **result})
