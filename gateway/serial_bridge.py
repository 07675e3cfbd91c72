"""Serial links as relay links: devices on a UART talk to MQTT peers.

Each ``[[serial]]`` table of the gateway config becomes one ``SerialBridge``:
a ``device.serial_link.SerialLink`` (framing over pyserial, re-plug
recovery) attached to the ``gateway.relay.Relay`` under the table's name,
with the table's device ids routed to it.

- Inbound (device -> gateway): each intact frame's payload goes to
  ``Relay.handle`` with the same validation, limits, rate limiting and
  drop counts as an envelope from MQTT. A serial port cannot say which of
  its devices sent a frame, so the sender is the envelope's own ``src`` if
  that id is attached to this port, and the port's name otherwise (the
  relay then counts ``src_mismatch``, or ``malformed`` for bad bytes). The
  frame layer's own drops (crc, cobs, ...) are counted by the link.
- Outbound (relay -> device): ``send(dst, envelope, done)`` writes one frame
  if the port is up and nothing older is waiting; otherwise the envelope
  goes to the durable queue (``gateway.queue.DurableQueue``), and a worker
  thread delivers the queue in order when the port returns, including
  after a gateway restart. ``done`` is called once the envelope is written
  or safely on disk, so the MQTT side acknowledges only then.

Invariants:
- Per destination, envelopes reach the port in the order the relay handed
  them over, across outages and restarts (queue first, then live writes).
- The bridge moves opaque envelopes: it needs only the framing and the
  port adapter from ``device`` (``device.framing``, ``device.serial_link``),
  imported when the first bridge is built, so a gateway without serial
  links loads nothing from ``device``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from gateway.envelope import Rejected, read_header
from gateway.queue import DEFAULT_MAX_AGE_S, DEFAULT_MAX_PER_DEVICE, DurableQueue

__all__ = [
    "SerialConfig",
    "QueueConfig",
    "parse_serial_config",
    "serial_routes",
    "bridges_from_config",
    "SerialBridge",
]

log = logging.getLogger("moteseal.gateway.serial")

Done = Callable[[], None]


class SerialConfig(NamedTuple):
    """One ``[[serial]]`` table."""

    name: str  # the link name in the route table and in metrics
    port: str  # any pyserial URL: /dev/ttyUSB0, socket://h:p, rfc2217://h:p
    baudrate: int
    devices: tuple[str, ...]  # device ids (or fnmatch patterns) on this port


class QueueConfig(NamedTuple):
    """The ``[serial_queue]`` table."""

    path: str
    max_per_device: int
    max_age_s: float


def parse_serial_config(
    conf: Mapping[str, Any], base_dir: Path | None = None
) -> tuple[list[SerialConfig], QueueConfig]:
    """Read ``[[serial]]`` tables and the ``[serial_queue]`` table from a
    parsed gateway TOML document.

    ``[[serial]]``: ``port`` (required), ``devices`` (required, non-empty
    list of ids), ``baudrate`` (115200), ``name`` (``serial<N>``).
    ``[serial_queue]``: ``path`` (``serial-queue.sqlite``, relative to
    ``base_dir``), ``max_per_device`` (1000), ``max_age_s`` (7 days).
    Raises ``ValueError`` naming the bad key."""
    links: list[SerialConfig] = []
    seen: set[str] = set()
    tables = conf.get("serial", [])
    if not isinstance(tables, list):
        raise ValueError("serial: must be an array of tables ([[serial]])")
    for i, t in enumerate(tables):
        if not isinstance(t, Mapping):
            raise ValueError(f"serial[{i}]: must be a table")
        unknown = set(t) - {"name", "port", "baudrate", "devices"}
        if unknown:
            raise ValueError(f"serial[{i}]: unknown key {sorted(unknown)[0]!r}")
        port = t.get("port")
        if not isinstance(port, str) or not port:
            raise ValueError(f"serial[{i}].port: a device path or pyserial URL is required")
        baud = t.get("baudrate", 115200)
        if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
            raise ValueError(f"serial[{i}].baudrate: must be a positive integer")
        devices = t.get("devices")
        if (
            not isinstance(devices, list)
            or not devices
            or not all(isinstance(d, str) and 1 <= len(d) <= 16 for d in devices)
        ):
            raise ValueError(f"serial[{i}].devices: a non-empty list of device ids")
        name = t.get("name", f"serial{i}")
        if not isinstance(name, str) or not name or name in seen:
            raise ValueError(f"serial[{i}].name: must be a unique non-empty string")
        seen.add(name)
        links.append(SerialConfig(name, port, baud, tuple(devices)))
    q = conf.get("serial_queue", {})
    if not isinstance(q, Mapping):
        raise ValueError("serial_queue: must be a table")
    unknown = set(q) - {"path", "max_per_device", "max_age_s"}
    if unknown:
        raise ValueError(f"serial_queue: unknown key {sorted(unknown)[0]!r}")
    path = Path(str(q.get("path", "serial-queue.sqlite")))
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    max_n = q.get("max_per_device", DEFAULT_MAX_PER_DEVICE)
    max_age = q.get("max_age_s", DEFAULT_MAX_AGE_S)
    if not isinstance(max_n, int) or max_n < 1:
        raise ValueError("serial_queue.max_per_device: must be an integer >= 1")
    if not isinstance(max_age, (int, float)) or max_age <= 0:
        raise ValueError("serial_queue.max_age_s: must be a number > 0")
    return links, QueueConfig(str(path), max_n, float(max_age))


class _Relay:
    """What the bridge needs from ``gateway.relay.Relay``."""

    def handle(
        self, envelope: bytes, arrived_from: str, link: str, done: Done | None = None
    ) -> str | None: ...


class SerialBridge:
    """One serial port as a relay link (``gateway.relay.Link``)."""

    def __init__(
        self,
        config: SerialConfig,
        relay: _Relay,
        queue: DurableQueue,
        *,
        relay_lock: threading.Lock | None = None,
        backoff_max: float = 2.0,
        max_envelope_bytes: int = 1200,
    ) -> None:
        self.name = config.name
        self.config = config
        self._relay = relay
        self._queue = queue
        # Relay.handle is called from this port's reader thread and from the
        # MQTT thread; the runner passes one lock shared by all links.
        self._relay_lock = relay_lock or threading.Lock()
        self._exact = frozenset(d for d in config.devices if not _is_pattern(d))
        self._patterns = tuple(d for d in config.devices if _is_pattern(d))
        self._max_envelope_bytes = max_envelope_bytes
        self._order = threading.Lock()  # live write vs queue decision
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._backlog = any(self.serves(d) for d in queue.depths())
        self.written = 0
        self.queued = 0
        from device.serial_link import SerialLink

        self.link = SerialLink(
            config.port,
            config.baudrate,
            on_frame=self._on_frame,
            on_state=self._on_state,
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

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.link.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10)

    def stats(self) -> dict[str, Any]:
        """Port, frame and queue counters (no payload bytes)."""
        s = self.link.stats()
        s.update(
            written=self.written,
            queued=self.queued,
            queue_depth=sum(n for d, n in self._queue.depths().items() if self.serves(d)),
        )
        return s

    # -- relay -> device ---------------------------------------------------------

    def send(self, dst: str, envelope: bytes, done: Done | None) -> None:
        """Write ``envelope`` for ``dst`` now, or queue it durably if the
        port is down or older envelopes still wait. Calls ``done`` when the
        envelope is written or on disk. Raises only if the queue's disk
        write fails (the relay counts ``link_error``)."""
        with self._order:
            if not self._backlog and self.link.connected:
                try:
                    self.link.send(envelope)
                    self.written += 1
                except OSError:  # device.serial_link.LinkDown
                    self._enqueue_locked(dst, envelope)
            else:
                self._enqueue_locked(dst, envelope)
        if done is not None:
            done()

    def _enqueue_locked(self, dst: str, envelope: bytes) -> None:
        self._queue.put(dst, envelope)
        self.queued += 1
        self._backlog = True
        self._wake.set()

    def _write_queued(self, dst: str, envelope: bytes) -> None:
        self.link.send(envelope)
        self.written += 1

    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            if not self._backlog or not self.link.connected:
                continue
            try:
                dests = [d for d in self._queue.depths() if self.serves(d)]
                n = self._queue.drain(dests, self._write_queued)
                if n:
                    log.info("serial %s: delivered %d queued envelopes", self.name, n)
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
        log.info("serial %s: link %s", self.name, "up" if up else "down")
        if up:
            self._wake.set()

    def _on_frame(self, payload: bytes) -> None:
        sender = self.name
        if len(payload) <= self._max_envelope_bytes:
            try:
                src = read_header(payload, self._max_envelope_bytes).src
            except Rejected:
                pass  # the relay decodes it again and counts the reason
            else:
                if self.serves(src):
                    sender = src
        with self._relay_lock:
            self._relay.handle(payload, sender, self.name, None)


def _is_pattern(device_id: str) -> bool:
    return any(ch in device_id for ch in "*?[")


def serial_routes(conf: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{link name: device ids}`` of the ``[[serial]]`` tables, for the
    runner's route table (exact ids win over the MQTT link's patterns).
    Raises ``ValueError`` for a bad table."""
    links, _ = parse_serial_config(conf)
    return {lc.name: list(lc.devices) for lc in links}


def bridges_from_config(
    conf: Mapping[str, Any],
    relay: Any,
    *,
    base_dir: Path | None = None,
    relay_lock: threading.Lock | None = None,
) -> tuple[list[SerialBridge], DurableQueue | None]:
    """The gateway runner's hook, after it built the relay with
    ``serial_routes(conf)`` in its route table: one bridge per
    ``[[serial]]`` table, each added to ``relay`` with ``relay.add_link``
    and not yet started. Returns the bridges and their shared queue (None
    without serial links). Raises ``ValueError`` for a bad table."""
    links, qconf = parse_serial_config(conf, base_dir)
    if not links:
        return [], None
    queue = DurableQueue(qconf.path, max_per_device=qconf.max_per_device, max_age_s=qconf.max_age_s)
    bridges = []
    for lc in links:
        b = SerialBridge(lc, relay, queue, relay_lock=relay_lock)
        relay.add_link(lc.name, b)
        bridges.append(b)
    return bridges, queue
