"""Serial links as relay links: devices on a UART talk to MQTT peers.

Each ``[[serial]]`` table of the gateway config becomes one ``SerialBridge``:
a ``moteseal.links.serial_link.SerialLink`` (framing over pyserial, re-plug
recovery) attached to the ``gateway.relay.Relay`` under the table's name,
with the table's device ids routed to it.

- Inbound (device -> gateway): each intact frame's payload goes to
  ``Relay.handle`` with the same validation, limits, rate limiting and
  drop counts as an envelope from MQTT. A serial port cannot say which of
  its devices sent a frame, so the sender is the envelope's own ``src`` if
  this port may carry that id, and the port's name otherwise (the relay
  then counts ``src_mismatch``, or ``malformed`` for bad bytes). A port
  carries its exact ids and at most ``max_ids`` ids matching its patterns
  (the first seen), so rotating ids buys neither fresh rate-limit buckets
  nor new last-seen labels. The port has its own token bucket too
  (``rate``, ``burst``): past it, frames are counted ``rate_limited``
  before the relay sees them. The frame layer's own drops (crc, cobs, ...)
  are counted by the link.
- Outbound (relay -> device): ``send(dst, envelope, done)`` never does I/O
  on the caller's thread. If the port is up, the device has been heard
  since it opened (a hello or an envelope: ``SerialLink.peer_ready``) and
  nothing older waits on disk, the envelope joins a small in-memory outbox
  that this port's worker thread writes; otherwise it goes to the durable
  queue (``gateway.queue.DurableQueue``), which the worker delivers in
  order when the port returns, including after a gateway restart. ``done``
  is called once the envelope is written or safely on disk, so the MQTT
  side acknowledges only then. A port whose device stops reading holds at
  most ``OUTBOX_MAX`` envelopes for at most ``STUCK_S`` seconds before the
  outbox moves to disk (and their ``done`` callbacks run), so one slow link never
  holds up another, nor the MQTT link's acknowledgements.

Invariants:
- Per destination, envelopes reach the port in the order the relay handed
  them over, across outages and restarts (queue first, then live writes):
  the outbox holds envelopes only while nothing of this port waits on disk,
  and moves to disk whole, in order. An envelope whose write was under way
  when the outbox moved may be written twice (at least once; the device's
  replay window discards the copy).
- The bridge moves opaque envelopes: it needs only the framing and the
  port adapter from ``device`` (``device.framing``, ``moteseal.links.serial_link``),
  imported when the first bridge is built, so a gateway without serial
  links loads nothing from ``device``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from gateway.envelope import Rejected, read_header
from gateway.queue import (DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES, DEFAULT_MAX_DESTS,
                           DEFAULT_MAX_PER_DEVICE, DEFAULT_MAX_PER_SOURCE, DurableQueue)
from gateway.relay import RATE_LIMITED, RateLimiter

__all__ = [
    "SerialConfig",
    "parse_serial_config",
    "open_links",
    "SerialBridge",
]

log = logging.getLogger("moteseal.gateway.serial")

Done = Callable[[], None]

_KEYS = {
    "name", "port", "baudrate", "devices", "queue", "queue_max", "queue_max_age_s",
    "config_dir", "rate", "burst", "max_ids", "queue_max_per_source",
    "queue_max_dests", "queue_max_bytes",
}
# Envelopes a port's outbox holds before it moves to disk, and how long a
# write may be under way before new envelopes move it there.
OUTBOX_MAX = 8
STUCK_S = 0.25
# A UART at 115200 baud carries ~100 small envelopes/s; a port's devices
# together get half of that, twice the default per-device rate.
DEFAULT_PORT_RATE = 50.0
DEFAULT_PORT_BURST = 100.0
# Ids a port's patterns may carry (exact ids come on top).
DEFAULT_MAX_IDS = 64


class SerialConfig(NamedTuple):
    """One ``[[serial]]`` table of ``gateway.toml``::

        [[serial]]
        name = "uart0"                  # link name in routes and metrics
        port = "/dev/ttyUSB0"           # or socket://h:p, rfc2217://h:p, loop://
        baudrate = 115200
        devices = ["mote-1", "mote-2"]  # ids (or patterns) attached to this port
        queue = "uart0-queue.sqlite"    # durable queue, relative to the config
        queue_max = 1000                # envelopes per device, oldest dropped
        queue_max_age_s = 604800        # older envelopes expire (7 days)
        queue_max_per_source = 10000    # envelopes queued from one source
        queue_max_dests = 1024          # destinations with anything queued
        queue_max_bytes = 24000000      # payload bytes queued in all
        rate = 50.0                     # frames/s from this port, all ids (0: off)
        burst = 100
        max_ids = 64                    # ids the patterns in devices may carry
    """

    name: str
    port: str
    baudrate: int
    devices: tuple[str, ...]
    queue_path: str
    queue_max: int = DEFAULT_MAX_PER_DEVICE
    queue_max_age_s: float = DEFAULT_MAX_AGE_S
    queue_max_per_source: int = DEFAULT_MAX_PER_SOURCE
    queue_max_dests: int = DEFAULT_MAX_DESTS
    queue_max_bytes: int = DEFAULT_MAX_BYTES
    rate: float = DEFAULT_PORT_RATE
    burst: float = DEFAULT_PORT_BURST
    max_ids: int = DEFAULT_MAX_IDS


def _table(i: int, t: Any, base_dir: Path | None) -> SerialConfig:
    where = f"[[serial]] {i}"
    if not isinstance(t, Mapping):
        raise ValueError(f"{where}: expected a table")
    unknown = set(t) - _KEYS
    if unknown:
        raise ValueError(f"{where} {sorted(unknown)[0]}: unknown key")
    name = t.get("name", f"serial{i}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} name: expected a non-empty string")
    port = t.get("port")
    if not isinstance(port, str) or not port:
        raise ValueError(f"{where} port: a device path or pyserial URL is required")
    baud = t.get("baudrate", 115200)
    if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
        raise ValueError(f"{where} baudrate: expected a positive integer")
    devices = t.get("devices")
    if (
        not isinstance(devices, list)
        or not devices
        or not all(isinstance(d, str) and 1 <= len(d) <= 16 for d in devices)
    ):
        raise ValueError(f"{where} devices: expected a non-empty list of device ids")
    if "config_dir" in t:  # set by gateway.config: the config file's directory
        base_dir = Path(str(t["config_dir"]))
    path = Path(str(t.get("queue", f"{name}-queue.sqlite")))
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    qmax = t.get("queue_max", DEFAULT_MAX_PER_DEVICE)
    if not isinstance(qmax, int) or isinstance(qmax, bool) or qmax < 1:
        raise ValueError(f"{where} queue_max: expected an integer >= 1")
    qage = t.get("queue_max_age_s", DEFAULT_MAX_AGE_S)
    if not isinstance(qage, (int, float)) or isinstance(qage, bool) or qage <= 0:
        raise ValueError(f"{where} queue_max_age_s: expected a number > 0")
    ints = {}
    for key, default in (("queue_max_per_source", DEFAULT_MAX_PER_SOURCE),
                         ("queue_max_dests", DEFAULT_MAX_DESTS),
                         ("queue_max_bytes", DEFAULT_MAX_BYTES),
                         ("max_ids", DEFAULT_MAX_IDS)):
        value = t.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where} {key}: expected an integer >= 1")
        ints[key] = value
    nums = {}
    for key, default, lo in (("rate", DEFAULT_PORT_RATE, 0.0), ("burst", DEFAULT_PORT_BURST, 1.0)):
        value = t.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{where} {key}: expected a number >= {lo}")
        nums[key] = float(value)
    return SerialConfig(name, port, baud, tuple(devices), str(path), qmax, float(qage),
                        ints["queue_max_per_source"], ints["queue_max_dests"],
                        ints["queue_max_bytes"], nums["rate"], nums["burst"], ints["max_ids"])


def parse_serial_config(
    tables: Any, base_dir: Path | None = None
) -> list[SerialConfig]:
    """Check the ``[[serial]]`` tables (a list of dicts). Relative queue
    paths are taken from ``base_dir`` (or the table's ``config_dir``, or the
    working directory). Raises ``ValueError`` naming the table and key."""
    if not isinstance(tables, list):
        raise ValueError("[[serial]]: expected an array of tables")
    links = [_table(i, t, base_dir) for i, t in enumerate(tables)]
    names = [lc.name for lc in links]
    for lc in links:
        if names.count(lc.name) > 1:
            raise ValueError(f"[[serial]] name: {lc.name!r} is used twice")
    return links


class _Relay:
    """What the bridge needs from ``gateway.relay.Relay`` (``drop`` too, if
    it has one, for the port's own rate limit)."""

    def handle(
        self, envelope: bytes, arrived_from: str, link: str, done: Done | None = None
    ) -> str | None: ...


class SerialBridge:
    """One serial port as a relay link (``gateway.relay.Link``).

    ``queue`` may be shared by several bridges; without one, the bridge
    opens (and on ``stop()`` closes) its own at ``config.queue_path``.
    ``log`` is an optional ``gateway.logs.JsonLog`` for link events.
    May be shared between threads: ``send`` from any thread, the status
    calls from any other; its own reader and worker threads do the I/O."""

    def __init__(
        self,
        config: SerialConfig,
        relay: _Relay,
        queue: DurableQueue | None = None,
        *,
        log: Any = None,
        relay_lock: threading.Lock | None = None,
        backoff_max: float = 2.0,
        max_envelope_bytes: int = 1200,
    ) -> None:
        self.name = config.name
        self.config = config
        self._relay = relay
        self._owns_queue = queue is None
        if queue is None:
            queue = DurableQueue(
                config.queue_path,
                max_per_device=config.queue_max,
                max_age_s=config.queue_max_age_s,
                max_per_source=config.queue_max_per_source,
                max_dests=config.queue_max_dests,
                max_bytes=config.queue_max_bytes,
            )
        self._queue = queue
        self._jlog = log
        # Relay.handle is called from this port's reader thread and from the
        # MQTT thread; the runner passes one lock shared by all links.
        self._relay_lock = relay_lock or threading.Lock()
        self._exact = frozenset(d for d in config.devices if not _is_pattern(d))
        self._patterns = tuple(d for d in config.devices if _is_pattern(d))
        self._max_envelope_bytes = max_envelope_bytes
        self._carried: set[str] = set()  # ids matched by a pattern, <= max_ids
        self.ids_refused = 0  # frames whose src a pattern matched past max_ids
        self._port_limiter = RateLimiter(config.rate, config.burst, max_senders=1)
        self.port_rate_limited = 0
        self._order = threading.Lock()  # outbox and backlog decisions
        self._outbox: deque[tuple[str, bytes, Done | None]] = deque()
        self._writing_since: float | None = None  # monotonic start of a write
        self.spills = 0  # times the outbox moved to disk
        self.spill_lost = 0  # envelopes whose move to disk failed (logged)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._backlog = any(self.serves(d) for d in queue.depths())
        self.written = 0
        self.queued = 0
        self._closed = False
        self._last_depth = 0
        self._status_lock = threading.Lock()  # status reads vs closing the queue
        self._last_counters: dict[str, int] = {}
        from device.framing import FRAME_PAYLOAD_MAX_BYTES
        from moteseal.links.serial_link import SerialLink

        self._frame_max = FRAME_PAYLOAD_MAX_BYTES
        self.link = SerialLink(
            config.port,
            config.baudrate,
            on_frame=self._on_frame,
            on_state=self._on_state,
            on_ready=self._wake.set,
            backoff_max=backoff_max,
            name=config.name,
        )
        self._worker = threading.Thread(
            target=self._drain_loop, name=f"serial-drain:{self.name}", daemon=True
        )

    def serves(self, device_id: str) -> bool:
        """True if ``device_id`` is attached to this port."""
        return device_id in self._exact or any(
            fnmatch.fnmatchcase(device_id, p) for p in self._patterns
        )

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> SerialBridge:
        self._worker.start()
        self.link.start()
        return self

    def stop(self) -> None:
        """Close the port and stop the queue worker; queued envelopes stay
        on disk for the next start. Idempotent."""
        self._stop.set()
        self._wake.set()
        self.link.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10)
        with self._status_lock:
            if not self._closed:
                with self._order:  # unwritten envelopes wait on disk
                    dones = self._spill_locked()
                _call_all(dones)
        self.queue_depth()  # keep the last numbers for a final status
        self.status_extra()
        with self._status_lock:
            if not self._closed:
                self._closed = True
                if self._owns_queue:
                    self._queue.close()

    close = stop

    @property
    def connected(self) -> bool:
        return self.link.connected

    def queue_depth(self) -> int:
        """Envelopes waiting on disk for this port's devices (the last
        value read once the bridge is stopped)."""
        with self._status_lock:
            if not self._closed:
                self._last_depth = sum(
                    n for d, n in self._queue.depths().items() if self.serves(d)
                )
            return self._last_depth

    def status_extra(self) -> dict[str, Any]:
        """For the gateway's status file and metrics (``gateway.runner``):
        JSON-able counters, no payload bytes. Queue drops are the queue
        file's totals (shared by the links that share the file)."""
        link = self.link.stats()
        with self._status_lock:
            if not self._closed:
                self._last_counters = self._queue.counters()
            q = self._last_counters
        return {
            "peer_ready": link["peer_ready"],
            "frames_rx": link["frames_rx"],
            "frames_written": self.written,
            "queued": self.queued,
            "reconnects": link["failures"],
            "frame_drops": link["drops"],
            "queue_dropped": {"full": q.get("dropped_full", 0),
                              "expired": q.get("dropped_expired", 0),
                              "rejected": q.get("rejected", 0)},
            "port_rate_limited": self.port_rate_limited,
            "ids_refused": self.ids_refused,
            "outbox_spills": self.spills,
            "outbox_lost": self.spill_lost,
        }

    def _event(self, name: str, **fields: Any) -> None:
        if self._jlog is not None:
            self._jlog.event(name, link=self.name, **fields)
        else:
            log.info("%s %s %s", name, self.name, fields)

    def stats(self) -> dict[str, Any]:
        """Port, frame and queue counters (no payload bytes)."""
        s = self.link.stats()
        s.update(
            written=self.written,
            queued=self.queued,
            queue_depth=self.queue_depth(),
        )
        return s

    # -- relay -> device ---------------------------------------------------------

    def send(self, dst: str, envelope: bytes, done: Done | None) -> None:
        """Hand ``envelope`` for ``dst`` to this port's worker, or queue it
        durably if the port is down or older envelopes still wait; never
        blocks on the port. Calls ``done`` when the envelope is written or
        on disk. Raises ``OSError`` for an envelope larger than a frame
        holds (only if the gateway's ``max_envelope_bytes`` exceeds
        ``FRAME_PAYLOAD_MAX_BYTES``) and if the queue's disk write fails;
        the relay counts ``link_error``."""
        if len(envelope) > self._frame_max:
            raise OSError(f"envelope of {len(envelope)} bytes exceeds a serial frame")
        spilled: list[Done | None] = []
        with self._order:
            if not self._backlog and self.link.peer_ready and not self._stuck_locked():
                self._outbox.append((dst, envelope, done))
                self._wake.set()
                return
            spilled = self._spill_locked()
            self._enqueue_locked(dst, envelope)
        _call_all(spilled)
        if done is not None:
            done()

    def _stuck_locked(self) -> bool:
        if len(self._outbox) >= OUTBOX_MAX:
            return True
        since = self._writing_since
        return since is not None and time.monotonic() - since > STUCK_S

    def _spill_locked(self) -> list[Done | None]:
        """Move the outbox, in order, to the durable queue; return the
        ``done`` callbacks to run (outside the lock). A failed disk write
        loses that envelope (logged); the rest still move."""
        dones: list[Done | None] = []
        if self._outbox:
            self.spills += 1
        while self._outbox:
            dst, envelope, done = self._outbox.popleft()
            try:
                self._enqueue_locked(dst, envelope)
            except Exception:
                self.spill_lost += 1
                log.exception("serial %s: queueing an envelope failed", self.name)
            dones.append(done)
        return dones

    def _enqueue_locked(self, dst: str, envelope: bytes) -> None:
        self._queue.put(dst, envelope, _src_of(envelope))
        self.queued += 1
        self._backlog = True
        self._wake.set()

    def _write_queued(self, dst: str, envelope: bytes) -> None:
        self.link.send(envelope)
        self.written += 1

    def _write_outbox(self) -> None:
        """Write the outbox, oldest first, on the worker thread."""
        while not self._stop.is_set():
            with self._order:
                if not self._outbox:
                    return
                item = self._outbox[0]
                self._writing_since = time.monotonic()
            try:
                self.link.send(item[1])
            except OSError:  # LinkDown, or a write timeout: the rest goes to disk
                with self._order:
                    self._writing_since = None
                    dones = self._spill_locked()
                _call_all(dones)
                return
            with self._order:
                self._writing_since = None
                mine = bool(self._outbox) and self._outbox[0] is item
                if mine:
                    self._outbox.popleft()
                    self.written += 1
            if mine and item[2] is not None:
                item[2]()

    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._write_outbox()
            if not self._backlog or not self.link.peer_ready:
                continue
            try:
                dests = [d for d in self._queue.depths() if self.serves(d)]
                n = self._queue.drain(dests, self._write_queued)
                if n:
                    self._event("serial_queue_delivered", count=n)
            except OSError:  # LinkDown: on_state(True) wakes us again
                continue
            except Exception:
                log.exception("serial %s: draining the queue failed", self.name)
                self._stop.wait(1.0)
                self._wake.set()
                continue
            with self._order:
                # Nothing new may slip in between the last drain and here:
                # send() queues while _backlog is set and holds _order.
                if not any(self.serves(d) for d in self._queue.depths()):
                    self._backlog = False
                else:
                    self._wake.set()

    # -- device -> relay ---------------------------------------------------------

    def _on_state(self, up: bool) -> None:
        self._event("serial_link_up" if up else "serial_link_down", port=self.config.port)

    def _may_carry(self, device_id: str) -> bool:
        """True for this port's exact ids, and for up to ``max_ids`` ids
        its patterns match (the first seen keep their place)."""
        if device_id in self._exact or device_id in self._carried:
            return True
        if not any(fnmatch.fnmatchcase(device_id, p) for p in self._patterns):
            return False
        if len(self._carried) >= self.config.max_ids:
            self.ids_refused += 1
            return False
        self._carried.add(device_id)
        return True

    def _on_frame(self, payload: bytes) -> None:
        # Runs on the link's reader thread only. The port's bucket comes
        # first, so a flood costs O(1) per frame, before any decoding.
        if not self._port_limiter.allow(self.name, time.monotonic()):
            self.port_rate_limited += 1
            drop = getattr(self._relay, "drop", None)
            if drop is not None:
                drop(RATE_LIMITED, self.name, self.name, len(payload))
            return
        sender = self.name
        if len(payload) <= self._max_envelope_bytes:
            try:
                src = read_header(payload, self._max_envelope_bytes).src
            except Rejected:
                pass  # the relay decodes it again and counts the reason
            else:
                if self._may_carry(src):
                    sender = src
        with self._relay_lock:
            self._relay.handle(payload, sender, self.name, None)


class _JsonLogHandler(logging.Handler):
    """Sends ``moteseal.links.serial_link``'s stdlib log records (port opened,
    failed, reopened; never payload bytes) to the gateway's JSON log."""

    def __init__(self, jlog: Any) -> None:
        super().__init__(logging.INFO)
        self.jlog = jlog

    def emit(self, record: logging.LogRecord) -> None:
        level = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}.get(
            record.levelno, "error"
        )
        try:
            self.jlog.event("serial_port", level=level, message=record.getMessage())
        except Exception:
            self.handleError(record)


def _route_link_logs(jlog: Any) -> None:
    logger = logging.getLogger("moteseal.serial")
    for h in list(logger.handlers):
        if isinstance(h, _JsonLogHandler):
            logger.removeHandler(h)
    logger.addHandler(_JsonLogHandler(jlog))
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _src_of(envelope: bytes) -> str:
    """The envelope's ``src`` (the relay checked it), or "" if unreadable."""
    try:
        return read_header(envelope, len(envelope)).src
    except Rejected:
        return ""


def _call_all(dones: list[Done | None]) -> None:
    for done in dones:
        if done is not None:
            done()


def _is_pattern(device_id: str) -> bool:
    return any(ch in device_id for ch in "*?[")


def open_links(
    specs: list[dict[str, Any]],
    relay: Any,
    log: Any = None,
    *,
    base_dir: Path | None = None,
) -> list[SerialBridge]:
    """The gateway runner's hook (``gateway.runner``): one bridge per
    ``[[serial]]`` table, not yet started; the runner adds each to the
    relay under its ``name`` (the config already routed the table's
    ``devices`` to it). Serial envelopes go through the same ``relay.handle``
    as MQTT ones. Raises ``gateway.config.ConfigError`` naming a bad table
    or key."""
    try:
        configs = parse_serial_config(specs, base_dir)
    except ValueError as exc:
        from gateway.config import ConfigError

        raise ConfigError(str(exc)) from None
    if log is not None:
        _route_link_logs(log)
    max_env = int(getattr(relay, "max_envelope_bytes", 1200))
    # One lock for every serial reader thread calling relay.handle.
    lock = getattr(relay, "lock", None) or threading.Lock()
    return [
        SerialBridge(c, relay, log=log, relay_lock=lock, max_envelope_bytes=max_env)
        for c in configs
    ]
