"""The hub: one long-running process that is the peer of its devices. It
answers handshakes, decrypts, stores each reading exactly once and
acknowledges it (``moteseal.peer``), hands readings to the sinks
``hub.toml`` configures, sends queued commands down, and serves the
dashboard and metrics (docs/hub.md).

Invariants:
- Rule 1: one hub per peer id. The hub holds an exclusive lock
  (``fcntl.flock``) on ``<registry>.hub.lock`` while it runs (with a
  PostgreSQL registry, ``[registry] url``: an advisory lock on the database,
  which sharded workers hold shared); a second hub with the same registry
  refuses to start (``HubError``, exit 2) instead of splitting the device
  traffic with the first.
- Rule 2: decryption never waits for a sink: sinks read the store on their
  own threads (``moteseal.hub.sinks``).
- Rule 3: a queued command goes to its device right after a message from
  that device (when a listening device is awake), at most ``command_rate``
  per second per device, and is marked ``sent`` in the store.
- Rule 4: nothing secret is logged, stored in a sink, shown or exported:
  reports hold ids, sizes, kinds and the devices' own readings.
- Rule 5: groups (fleet broadcast) run on their own thread
  (``moteseal.hub.groups``); every device the hub hears from is handed to
  it, so a member with a new session gets its group keys.
- Rule 6: file and application transfers queued in the store
  (``moteseal push``, ``moteseal update``, ``Hub.push``) run on their own
  thread (``moteseal.hub.push.TransferService``), paced by the devices'
  status frames so telemetry keeps flowing.
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from device.errors import LocalError
from moteseal.hub.config import HubConfig
from moteseal.hub.sinks import (CallbackSink, HomeAssistantSink, JsonLinesSink, SinkWorker,
                                read_secret)
from moteseal.hub.store import HubStore
from device import delivery as D

Report = dict[str, Any]
EVENTS_KEPT = 500  # recent events kept in memory for the dashboard


class HubError(LocalError):
    """The hub cannot start as configured (another hub holds the lock, a
    file is missing); the CLI exits 2."""

    exit_code = 2


class Hub:
    """A configured hub. ``start()`` opens everything and returns; ``run(stop)``
    handles envelopes until ``stop`` is set; ``close()`` releases it all.

    ``on_reading(device, fields, meta)`` callbacks (the Python API) run on
    their own sink threads, fed from the store. The public read-only views
    (``counts``, ``events``, ``sessions_info``) may be read from any thread.

    ``push``, ``transfer`` and ``abort`` (Rule 6) may be called from any
    thread.
    """

    def __init__(self, cfg: HubConfig, passphrase: bytes | None = None,
                 on_reading: list[Callable[[str, dict[str, Any], dict[str, Any]], None]] | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.passphrase = passphrase
        self.callbacks = list(on_reading or [])
        self.on_report = on_report
        self.clock = clock
        self.wall_clock = wall_clock
        self.events: list[Report] = []
        self.subscribers: list["queue.Queue[Report]"] = []
        self._sub_lock = threading.Lock()
        self.workers: list[SinkWorker] = []
        self.stop_event = threading.Event()
        self._lock_file: Any = None
        self._wake: list[threading.Event] = []
        self._commands: "queue.Queue[str]" = queue.Queue()
        self._last_command: dict[str, float] = {}
        self.listener: Any = None
        self.registry: Any = None
        self.store: HubStore | None = None
        self.link: Any = None
        self.dashboard: Any = None
        self.groups: Any = None  # moteseal.hub.groups.GroupService
        self.transfers: Any = None  # Rule 6: moteseal.hub.push.TransferService
        self.started_at = wall_clock()

    # -- lifecycle ------------------------------------------------------------

    def _take_lock(self, registry: Path) -> None:
        path = Path(str(registry) + ".hub.lock")
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            other = f.read().strip() or "?"
            f.close()
            raise HubError(f"another hub (pid {other}) is running for {registry}: one hub per "
                           f"peer id, or the devices' traffic would be split (stop it first)") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def start(self) -> "Hub":
        from device.peer import PeerSessions
        from device.session import DEFAULT_SUITE
        from moteseal.crypto.backend_nacl import NaclBackend
        from moteseal.keys.registry import Registry
        from moteseal.links.mqtt_link import MqttLink
        from moteseal.peer.listen import PeerListener

        cfg = self.cfg
        reg_path = cfg.path_of("hub", "registry")
        pg = bool(os.environ.get("MOTESEAL_REGISTRY_URL") or cfg.get("registry", "url"))
        if not pg and (reg_path is None or not reg_path.exists()):
            raise HubError(f"{cfg.path}: [hub] registry {reg_path} does not exist "
                           f"(moteseal keygen --registry creates it)")
        if pg:  # [registry] url: the registry in PostgreSQL, Rule 1 by an advisory lock
            from moteseal.hub.worker import single_hub_registry
            self.registry, self._lock_file = single_hub_registry(cfg, self.passphrase)
        else:
            self._take_lock(reg_path)
        try:
            if not pg:
                self.registry = Registry(reg_path, passphrase=self.passphrase)
            self.registry.check_statics()
            store_path = cfg.path_of("hub", "store")
            self.store = HubStore(str(store_path))
            peer_id = self.registry.peer_id.decode()
            self.peer_id = peer_id
            mq = cfg.values["mqtt"]
            password = read_secret(cfg.path_of("mqtt", "password_file"))
            self.sessions = PeerSessions(NaclBackend(), self.registry.peer_id, self.registry,
                                         DEFAULT_SUITE, max_age=cfg.get("hub", "max_session_age"))
            self.link = MqttLink(peer_id, mq["host"], mq["port"], username=mq["username"] or peer_id,
                                 password=password, tls=mq["tls"],
                                 ca_file=str(cfg.path_of("mqtt", "ca_file") or "") or None)
            from moteseal.hub.push import TransferInbox, TransferService, TransferStore
            self.transfers = TransferService(TransferStore(str(store_path)),
                                             lambda d, f: self.listener.send(d, f), self._report)
            self.listener = PeerListener(self.sessions, self.link, self._report, clock=self.clock,
                                         wall_clock=self.wall_clock,
                                         inbox=TransferInbox(self.store, self.transfers.on_status))
            self._start_sinks()
            self._start_groups(store_path)
            self.link.start()
            threading.Thread(target=self._dispatch, name="hub-commands", daemon=True).start()
            threading.Thread(target=self._housekeeping, name="hub-prune", daemon=True).start()
            self.transfers.start()
            if cfg.get("dashboard", "enabled"):
                from moteseal.hub.dashboard import Dashboard
                self.dashboard = Dashboard(self).start()
            if cfg.get("metrics", "port"):
                from moteseal.hub.metrics import serve_metrics
                serve_metrics(self, cfg.get("metrics", "bind"), cfg.get("metrics", "port"))
        except BaseException:
            self.close()
            raise
        return self

    def _start_sinks(self) -> None:
        cfg = self.cfg
        sinks: list[Any] = []
        if cfg.get("jsonl", "enabled"):
            sinks.append(JsonLinesSink(cfg.get("jsonl", "path")))
        for i, fn in enumerate(self.callbacks):
            sinks.append(CallbackSink(fn, name=f"python-{i}"))
        ha = cfg.values["home_assistant"]
        tick: Callable[[], None] | None = None
        if ha["enabled"]:
            sink = HomeAssistantSink(ha["host"], ha["port"], cfg.field_map,
                                     username=ha["username"] or None,
                                     password=read_secret(cfg.path_of("home_assistant", "password_file")),
                                     discovery_prefix=ha["discovery_prefix"],
                                     offline_after=ha["offline_after"])
            sinks.append(sink)
        assert self.store is not None
        for sink in sinks:
            tick = sink.expire if isinstance(sink, HomeAssistantSink) else None
            wake = threading.Event()
            self._wake.append(wake)
            self.workers.append(SinkWorker(self.store, sink, wake, tick).start(self.stop_event))

    def _start_groups(self, store_path: Any) -> None:
        # Fleet broadcast (moteseal/hub/groups.py): restored in new epochs.
        from moteseal.hub.groups import GroupFile, GroupService, group_file_for

        link = self.link

        def publish(topic: str, payload: bytes) -> None:
            link.client.publish(topic, payload, qos=1)

        gf = GroupFile(group_file_for(store_path))
        self.groups = GroupService(gf, self.sessions, self.listener, publish, self._report)
        self.groups.restore()
        self.groups.start(self.stop_event)

    def run(self, stop: threading.Event) -> None:
        """Handle envelopes until ``stop`` is set."""
        self.listener.run(stop)

    def close(self) -> None:
        self.stop_event.set()
        if self.transfers is not None:
            self.transfers.stop()
            self.transfers.store.close()
        for w in self.workers:
            if w.thread is not None:
                w.thread.join(5)
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.link is not None:
            self.link.close()
        if self.registry is not None:
            self.registry.close()
        if self.store is not None:
            self.store.close()
        if self.groups is not None:
            if self.groups.thread is not None:
                self.groups.thread.join(5)
            self.groups.file.close()
            self.groups = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- reports, events and commands -------------------------------------------

    def _report(self, r: Report) -> None:
        # The listener's thread, inside its lock: record, wake, never block.
        if r["event"] == "transfer_status":
            return  # one per 8 pieces would crowd out the events; see transfer(id)
        self.events.append(r)
        del self.events[:-EVENTS_KEPT]
        if r["event"] == "telemetry":
            for w in self._wake:
                w.set()
        if r["event"] == "command_acked" and self.store is not None:
            self.store.command_acked(r["device"], r["id"])
        if "device" in r and r["event"] in ("telemetry", "duplicate", "held", "command_acked"):
            self._commands.put(r["device"])
            if self.groups is not None:
                self.groups.seen(r["device"])  # a new session gets its group keys
        with self._sub_lock:
            for q in self.subscribers:
                try:
                    q.put_nowait(r)
                except queue.Full:
                    pass  # a slow page misses events; it reloads from the store
        if self.on_report is not None:
            try:
                self.on_report(r)
            except Exception:  # noqa: BLE001 - a broken printer must not stop decryption
                pass

    def subscribe(self) -> "queue.Queue[Report]":
        q: "queue.Queue[Report]" = queue.Queue(maxsize=1000)
        with self._sub_lock:
            self.subscribers.append(q)
        return q

    def unsubscribe(self, q: "queue.Queue[Report]") -> None:
        with self._sub_lock:
            if q in self.subscribers:
                self.subscribers.remove(q)

    def send_command(self, device: str, payload: bytes) -> int:
        """Queues a command (Rule 3); returns its id. Raises ``StoreError``."""
        assert self.store is not None
        cid = self.store.queue_command(device, payload)
        self._commands.put(device)
        return cid

    def push(self, device: str, data: bytes, name: bytes, version: int | None = None,
             flags: int = 0) -> int:
        """Queues a file transfer to ``device`` (Rule 6); returns its id for
        ``transfer(id)``. ``flags=moteseal.hub.transfer.F_APP`` with
        ``moteseal.hub.transfer.pack_app(dir)`` is an application update.
        Raises ``TransferError`` (name, size, version), ``StoreError``."""
        return self.transfers.store.queue(device, name, data, version, flags)

    def abort(self, row: int) -> bool:
        """Aborts transfer ``row`` (the device drops its partial file); False
        if it has ended already."""
        return self.transfers.store.request_abort(row)

    def transfer(self, row: int) -> dict[str, Any] | None:
        """A transfer's state: ``queued``, ``sending`` (``offset`` bytes
        acknowledged), then ``installed``, ``staged``, ``refused``
        (``reason``), ``aborted`` or ``timeout``."""
        return self.transfers.store.get(row)

    def _dispatch(self) -> None:
        assert self.store is not None
        gap = 1.0 / max(0.001, float(self.cfg.get("hub", "command_rate")))
        while not self.stop_event.is_set():
            try:
                device = self._commands.get(timeout=0.5)
            except queue.Empty:
                continue
            for cid, payload in self.store.queued_commands(device):
                now = self.clock()
                if now - self._last_command.get(device, -1e9) < gap:
                    break  # the next message from the device brings it round again
                frame = bytes([D.COMMAND]) + cid.to_bytes(4, "big") + payload
                try:
                    self.listener.send(device, frame)
                except LocalError:
                    break  # no live session: sent after the device's next message
                self._last_command[device] = now
                self.store.command_sent(cid)
                self._report({"event": "command_sent", "device": device, "id": cid,
                              "size": len(payload), "ts": round(self.wall_clock(), 3)})

    def _housekeeping(self) -> None:
        assert self.store is not None
        st = self.cfg.values["store"]
        while not self.stop_event.wait(60):
            try:
                self.store.prune(st["max_age_days"] * 86400.0, st["max_rows"])
            except LocalError:
                pass

    # -- views for the dashboard and metrics ------------------------------------

    def sessions_info(self) -> dict[str, dict[str, Any]]:
        """Per device with a session: its age in seconds."""
        out: dict[str, dict[str, Any]] = {}
        now = self.clock()
        for dev, entries in list(getattr(self.sessions, "_sessions", {}).items()):
            if entries:
                tr = entries[0][1]
                born = getattr(tr, "started", None)
                out[dev.decode("ascii", "replace")] = {
                    "age": None if born is None else round(now - born, 1)}
        return out
