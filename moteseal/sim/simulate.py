"""Simulated sensors on CPython: encrypted telemetry over MQTT.

Each sensor owns a ``device.session.DeviceSession`` and a
``moteseal.links.mqtt_link.MqttLink``. Readings are a small CBOR map encoded *inside*
the encrypted payload: the first reading rides in handshake message 1
(0-RTT), later ones in data envelopes. One thread drives every sensor of a
``Fleet``, so the (not thread-safe) sessions are only touched there.

Invariants:
- A sensor handshakes when it has no session, when its session is spent,
  when the peer answers that the session is unknown (a hint, which
  ``DeviceSession`` itself accepts at most once per ``hint_interval``), or
  when message 2 does not come within ``handshake_timeout``. Handshakes are
  at least ``min_handshake_gap`` seconds apart whatever the trigger, so
  forged hints cannot make a sensor flood its peer.
- Nothing is logged or reported that holds a key, a PSK or a reading's
  ciphertext; events carry ids, sizes, sequence numbers and kinds.
- Bad envelopes from the network (``RemoteError``) are counted and ignored.
"""

from __future__ import annotations

import io
import queue
import random
import threading
import time
from typing import Any, Callable

import cbor2

from device.errors import LocalError, RemoteError, SessionExpired
from moteseal.links.mqtt_link import MqttLink
from device import delivery as D
from device.delivery import Outbox
from device.session import (EV_COUNTER_BEHIND, EV_DATA, EV_HANDSHAKE, EV_REFUSED, EV_REHANDSHAKE,
                            DeviceSession)

__all__ = ["SimulatedSensor", "Fleet", "encode_reading", "decode_reading", "describe_payload"]

Event = dict[str, Any]


def encode_reading(seq: int, temp_c: float, rh: float, battery_mv: int) -> bytes:
    """The telemetry payload: CBOR ``{"seq", "t", "rh", "bat"}``. Floats are
    always 64-bit (not canonical CBOR's shortest form), so a ciphertext's
    length does not reveal whether a reading happened to be a round value."""
    return cbor2.dumps({"seq": seq, "t": round(temp_c, 2), "rh": round(rh, 1),
                        "bat": battery_mv})


def _json_safe(v: Any) -> Any:
    # A CBOR value as JSON can hold it: byte strings as hex, other
    # non-JSON values (tags, undefined, nested byte keys) as their repr.
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(_json_safe(k)): _json_safe(x) for k, x in v.items()}
    return repr(v)


def decode_reading(payload: bytes) -> dict[str, Any] | None:
    """The reading in a decrypted payload: any CBOR map (docs/protocol.md,
    "Readings"), every field kept, keys as text and byte strings as hex; or
    None if the payload is not exactly one CBOR map."""
    fp = io.BytesIO(payload)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception:  # cbor2 raises several types for bad input
        return None
    if not isinstance(value, dict) or fp.read(1):  # trailing bytes: not one map
        return None
    out = _json_safe(value)
    return out if isinstance(out, dict) else None


def describe_payload(payload: bytes) -> dict[str, str]:
    """A payload that is not a reading, shown as what it is: UTF-8 text
    (printable) as ``{"text": ...}``, anything else as ``{"hex": ...}``."""
    try:
        text = payload.decode("utf-8")
        if text and text.isprintable():
            return {"text": text}
    except UnicodeDecodeError:
        pass
    return {"hex": payload.hex()}


class SimulatedSensor:
    """One sensor: a random-walk thermometer on a session and a link."""

    def __init__(self, session: DeviceSession, link: MqttLink, interval: float = 5.0, *,
                 seed: int | None = None, handshake_timeout: float = 5.0,
                 min_handshake_gap: float = 1.0,
                 on_event: Callable[[Event], None] | None = None,
                 outbox: Outbox | None = None, resend_after: float = 3.0,
                 limit: int | None = None) -> None:
        self.session = session
        self.limit = limit  # readings to make, then only resend until acknowledged
        # With an outbox, readings are framed, retained until the peer
        # acknowledges them and sent again after each handshake and when
        # ``resend_after`` passes without an acknowledgement
        # (docs/protocol.md, "Delivery").
        self.outbox = outbox
        self.resend_after = resend_after
        self._done_commands: list[int] = []  # ids acted on (a resend is only answered)
        self.link = link
        self.id = session.device_id.decode()
        self.interval = interval
        self.handshake_timeout = handshake_timeout
        self.min_handshake_gap = min_handshake_gap
        self.on_event = on_event
        self.rng = random.Random(seed)
        self.temp = 18.0 + self.rng.random() * 6
        self.rh = 35.0 + self.rng.random() * 20
        self.battery = 3000 + self.rng.randrange(300)
        self.seq = 0
        self.next_due = 0.0
        self.last_handshake: float | None = None
        self.session_lost = False
        self.groups: Any = None  # a device.group.Groups: the hub's key messages go there
        self.counts = {"readings": 0, "handshakes": 0, "rehandshakes": 0, "refused": 0,
                       "skipped": 0, "bad_envelopes": 0, "from_peer": 0, "acks": 0, "resent": 0}

    def _emit(self, **event: Any) -> None:
        if self.on_event is not None:
            self.on_event({"device": self.id, **event})

    def _next_reading(self) -> bytes:
        self.temp += self.rng.uniform(-0.3, 0.3)
        self.rh = min(95.0, max(5.0, self.rh + self.rng.uniform(-1, 1)))
        self.battery -= self.rng.randrange(2)
        payload = encode_reading(self.seq, self.temp, self.rh, self.battery)
        self.seq += 1
        box = self.outbox
        if box is None:
            return payload
        box.start(self.session._counter.peek())  # the run: the first handshake's counter
        seq = box.add(payload, len(payload))
        self._outbox_seq = seq
        return bytes(box.view(seq)[:box.length(seq)])

    def _can_handshake(self, now: float) -> bool:
        return self.last_handshake is None or now - self.last_handshake >= self.min_handshake_gap

    def _handshake(self, payload: bytes, now: float, why: str) -> None:
        env = self.session.handshake(payload, now)
        self.link.send(env)
        self.last_handshake = now
        self.counts["handshakes"] += 1
        self.counts["readings"] += 1
        if self.outbox is not None:
            self.outbox.mark_sent(self._outbox_seq, now)
        self._emit(event="handshake", why=why, seq=self.seq - 1, size=len(env))

    def _command(self, frame: bytes, now: float) -> None:
        """A command from the hub (``device/delivery.py``): act on each id
        once (a resent one is only answered again), then answer its id."""
        cid = D.command_id(frame, len(frame))
        body = bytes(frame[D.COMMAND_HEAD_BYTES:])
        self.counts["from_peer"] += 1
        if cid not in self._done_commands:
            self._done_commands.append(cid)
            del self._done_commands[:-16]
            if body.startswith(b"interval="):
                try:
                    self.interval = max(0.01, float(body[9:].decode("ascii")))
                except ValueError:
                    pass
        self._emit(event="from_peer", command=cid, size=len(frame))
        ack = bytearray(D.COMMAND_HEAD_BYTES)
        D.encode_command_ack_into(ack, cid)
        try:
            self.link.send(self.session.send(bytes(ack), now))
        except (LocalError, SessionExpired):
            pass  # the hub sends it again; the answer goes then

    def _drain(self, now: float) -> None:
        """After the last reading: keep the session and resend what the peer
        has not acknowledged."""
        s = self.session
        if self.outbox is None or self.outbox.count() == 0:
            return
        stale = s.handshaking and self.last_handshake is not None and \
            now - self.last_handshake >= self.handshake_timeout
        if (s.transport is None or self.session_lost) and (not s.handshaking or stale):
            if self._can_handshake(now):
                env = s.handshake(b"", now)
                self.link.send(env)
                self.last_handshake = now
                self.counts["handshakes"] += 1
            return
        if s.transport is not None and not self.session_lost and \
                self.outbox.resend_due(now, self.resend_after):
            try:
                self._resend(now)
            except SessionExpired:
                self.session_lost = True

    def _resend(self, now: float) -> None:
        """Every retained reading again, oldest first (the peer drops what
        it already has)."""
        box = self.outbox
        assert box is not None
        for seq in box.pending():
            self.link.send(self.session.send(bytes(box.view(seq)[:box.length(seq)]), now))
            box.mark_sent(seq, now)
            self.counts["resent"] += 1

    @property
    def done(self) -> bool:
        """Made ``limit`` readings and, with an outbox, every one acknowledged."""
        return self.limit is not None and self.seq >= self.limit and \
            (self.outbox is None or self.outbox.count() == 0)

    def tick(self, now: float) -> None:
        """Send a reading if one is due."""
        if now < self.next_due:
            return
        self.next_due = now + self.interval
        s = self.session
        if self.limit is not None and self.seq >= self.limit:
            self._drain(now)
            return
        stale_hs = (s.handshaking and self.last_handshake is not None
                    and now - self.last_handshake >= self.handshake_timeout)
        need_hs = s.transport is None or self.session_lost
        if need_hs and (not s.handshaking or stale_hs):
            if self._can_handshake(now):
                self._handshake(self._next_reading(), now,
                                "timeout" if stale_hs else ("lost" if self.session_lost else "new"))
            else:
                self.counts["skipped"] += 1
            return
        if need_hs:  # waiting for message 2
            if self.outbox is not None:
                self._next_reading()  # retained, sent after the handshake
            self.counts["skipped"] += 1
            return
        if self.outbox is not None and self.outbox.resend_due(now, self.resend_after):
            try:
                self._resend(now)
            except SessionExpired:
                pass
        payload = self._next_reading()
        try:
            env = s.send(payload, now)
        except SessionExpired:
            self.seq -= 1
            if self._can_handshake(now):
                self._handshake(self._next_reading(), now, "expired")
            return
        self.link.send(env)
        if self.outbox is not None:
            self.outbox.mark_sent(self._outbox_seq, now)
        self.counts["readings"] += 1
        self._emit(event="sent", seq=self.seq - 1, size=len(env))

    def on_envelope(self, data: bytes, now: float) -> None:
        """Handle one envelope from the peer."""
        try:
            ev, payload = self.session.receive(data, now)
        except RemoteError as exc:
            self.counts["bad_envelopes"] += 1
            self._emit(event="rejected", error=type(exc).__name__, size=len(data))
            return
        if ev == EV_HANDSHAKE:
            self.session_lost = False
            self._emit(event="session", sid=self.session.sid)
            if self.outbox is not None:
                self._resend(now)
        elif ev == EV_DATA and self.groups is not None and payload[:1] in (b"\x07", b"\x08"):
            try:  # a group key message (device/group.py), never a command
                self.groups.take(payload, len(payload))
            except (RemoteError, LocalError) as exc:
                self._emit(event="rejected", error=type(exc).__name__, size=len(data))
        elif ev == EV_DATA and self.outbox is not None and self.outbox.ack(payload, len(payload)):
            self.counts["acks"] += 1
        elif ev == EV_DATA and D.command_id(payload, len(payload)) >= 0:
            self._command(payload, now)
        elif ev == EV_DATA:
            self.counts["from_peer"] += 1
            self._emit(event="from_peer", size=len(payload))
        elif ev == EV_COUNTER_BEHIND:
            # Our counter file was lost or rolled back; the counter jumped
            # past the peer's. A new run name keeps retained readings from
            # looking like an old run's duplicates; handshake again.
            self.counts["counter_behind"] = self.counts.get("counter_behind", 0) + 1
            if self.outbox is not None:
                self.outbox.rename(self.session._counter.peek())
            self.session_lost = True
            self._emit(event="counter_behind", action="handshake again")
            if self._can_handshake(now):
                self._handshake(self._next_reading(), now, "counter")
                self.next_due = now + self.interval
        elif ev == EV_REFUSED:
            # The peer refused message 1 (unknown or revoked device, wrong PSK
            # or pinned key). The next reading retries, at most once per
            # min_handshake_gap, on the next pinned key if there is one.
            self.counts["refused"] += 1
            self._emit(event="refused", why="the peer refused message 1: unknown or revoked "
                       "device, wrong PSK, or a pinned peer key it does not hold "
                       "(compare: moteseal fingerprint)")
        elif ev == EV_REHANDSHAKE:
            self.counts["rehandshakes"] += 1
            self.session_lost = True
            self._emit(event="hint", action="rehandshake")
            if self._can_handshake(now):
                self._handshake(self._next_reading(), now, "hint")
                self.next_due = now + self.interval


class Fleet:
    """Drives sensors from one thread; envelopes from paho's threads reach
    it through one queue. ``run(stop)`` returns when ``stop`` is set."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.sensors: list[SimulatedSensor] = []
        self.inbox: "queue.Queue[tuple[SimulatedSensor, bytes]]" = queue.Queue()
        self.clock = clock
        self.errors: list[str] = []

    def add(self, sensor: SimulatedSensor, stagger: float = 0.0) -> SimulatedSensor:
        sensor.next_due = self.clock() + stagger
        self.sensors.append(sensor)
        return sensor

    def deliver(self, sensor: SimulatedSensor) -> Callable[[bytes], None]:
        """The ``on_envelope`` callback to give ``sensor``'s link."""
        return lambda data: self.inbox.put((sensor, data))

    def run(self, stop: threading.Event, until_done: bool = False) -> None:
        """Tick the sensors until ``stop`` is set (or, with ``until_done``,
        until every sensor is ``done``)."""
        while not stop.is_set():
            if until_done and all(s.done for s in self.sensors):
                return
            now = self.clock()
            for sensor in self.sensors:
                try:
                    sensor.tick(now)
                except LocalError as exc:  # e.g. counter exhausted: stop that sensor
                    self.errors.append(f"{sensor.id}: {exc}")
                    sensor.next_due = float("inf")
            due = min((s.next_due for s in self.sensors), default=now + 0.5)
            try:
                sensor, data = self.inbox.get(timeout=max(0.0, min(0.5, due - self.clock())))
            except queue.Empty:
                continue
            sensor.on_envelope(data, self.clock())

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sensors:
            for k, v in s.counts.items():
                out[k] = out.get(k, 0) + v
            if s.outbox is not None:
                out["evicted"] = out.get("evicted", 0) + s.outbox.evicted
                out["unacknowledged"] = out.get("unacknowledged", 0) + s.outbox.count()
        return out


# ---------------------------------------------------------------- CLI

import json as _json  # noqa: E402
from moteseal.cli.errors import stop_event  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import click  # noqa: E402


@click.group("device")
def device_group() -> None:
    """Device-side tools on CPython (simulated sensors).

    \b
    Examples:
      moteseal device simulate --bundle sensor-7.bundle --seconds 30
      moteseal device simulate --bundle-dir bundles --count 5 --interval 2
    """


def _bundles(bundle_files: tuple[str, ...], bundle_dir: str | None, count: int | None) -> list[Any]:
    from moteseal.keys.provision import read_bundle

    paths = [_Path(p) for p in bundle_files]
    if bundle_dir:
        paths += sorted(_Path(bundle_dir).glob("*.bundle"))
    if count is not None:
        if count > len(paths):
            raise click.UsageError(f"--count {count}: only {len(paths)} bundle(s) given")
        paths = paths[:count]
    if not paths:
        raise click.UsageError("give --bundle FILE or --bundle-dir DIR (from `moteseal provision`)")
    return [read_bundle(p) for p in paths]


@device_group.command("simulate")
@click.option("--count", "-n", type=click.IntRange(1, 1000), default=None,
              help="Run the first N bundles (default: all given).")
@click.option("--bundle", "bundle_files", multiple=True, type=click.Path(dir_okay=False),
              help="A device bundle (repeatable).")
@click.option("--bundle-dir", type=click.Path(file_okay=False), default=None,
              help="Every *.bundle in this directory, sorted by name.")
@click.option("--host", default=None, help="Broker host (default: the bundle's, else 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Broker port (default: the bundle's, else 1883).")
@click.option("--tls", is_flag=True, help="Connect with TLS.")
@click.option("--ca-file", type=click.Path(dir_okay=False), default=None,
              help="CA certificate that signed the broker's (from `moteseal broker certs`); implies --tls.")
@click.option("--interval", type=click.FloatRange(0.01), default=5.0, show_default=True,
              help="Seconds between readings per sensor.")
@click.option("--seconds", type=click.FloatRange(0), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=".moteseal-sim",
              show_default=True, help="Message-1 counter files, one per device.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.option("--retain", type=click.IntRange(0, 255), default=16, show_default=True,
              help="Readings each sensor keeps until the peer acknowledges them, and sends "
                   "again after a peer or link failure (0: no acknowledgements).")
@click.option("--readings", type=click.IntRange(1), default=None,
              help="Make this many readings per sensor, then stop once all are acknowledged.")
def simulate(count: int | None, bundle_files: tuple[str, ...], bundle_dir: str | None,
             host: str | None, port: int | None, tls: bool, ca_file: str | None,
             interval: float, seconds: float | None, state_dir: str, as_json: bool,
             retain: int, readings: int | None) -> None:
    """Run simulated sensors that send encrypted telemetry over MQTT.

    Each sensor uses its bundle's PSK and pinned peer key, and its bundle's
    MQTT account unless overridden. Readings (CBOR) travel inside the
    encryption; the broker and the gateway see only envelopes.

    A bundle that is missing exits 2; one that is truncated, tampered with
    or readable by others exits 3, as in every moteseal command.

    \b
    Examples:
      moteseal device simulate --bundle-dir bundles --count 5 --interval 2
      moteseal device simulate --bundle-dir bundles --readings 200 --retain 64
      moteseal device simulate --bundle sensor-7.bundle --port 8883 --ca-file ca.crt --json
    """
    from moteseal.crypto.backend_nacl import NaclBackend
    from device.counter import Msg1Counter
    from device.counter_file import FileCounterStore
    from moteseal.keys.provision import device_session

    # A bad bundle raises BundleError / KeyFileError (exit 3), a missing one
    # FileNotFoundError (exit 2): moteseal.cli.errors maps them.
    bundles = _bundles(bundle_files, bundle_dir, count)
    state = _Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    backend = NaclBackend()
    fleet = Fleet()
    lock = threading.Lock()

    def show(ev: Event) -> None:
        with lock:
            if as_json:
                click.echo(_json.dumps(ev, sort_keys=True))
            else:
                rest = " ".join(f"{k}={v}" for k, v in sorted(ev.items()) if k not in ("device", "event"))
                click.echo(f"{ev['device']:<16} {ev['event']:<9} {rest}")

    links = []
    try:
        for i, b in enumerate(bundles):
            name = b.device_id.decode()
            link_cfg = b.link if b.link.get("kind") == "mqtt" else {}
            counter = Msg1Counter(FileCounterStore(str(state / f"{name}.counter")))
            session = device_session(backend, b, counter)
            sensor = SimulatedSensor(session, None, interval, on_event=show,  # type: ignore[arg-type]
                                     outbox=Outbox(retain) if retain else None, limit=readings)
            link = MqttLink(name, host or link_cfg.get("host", "127.0.0.1"),
                            port or link_cfg.get("port", 1883),
                            username=link_cfg.get("username", name),
                            password=link_cfg.get("password"), tls=tls or ca_file is not None,
                            ca_file=ca_file,
                            on_envelope=fleet.deliver(sensor))
            sensor.link = link
            links.append(link)
            link.start()
            fleet.add(sensor, stagger=interval * i / max(1, len(bundles)))
    except BaseException:  # a LinkError exits 1 with its message (moteseal.cli.errors)
        for link in links:
            link.close()
        raise
    stop = stop_event(seconds)
    try:
        fleet.run(stop, until_done=readings is not None)
    finally:
        for link in links:
            link.close()
    totals = fleet.totals()
    if as_json:
        click.echo(_json.dumps({"event": "summary", **totals}, sort_keys=True))
    else:
        click.echo("summary: " + " ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    for err in fleet.errors:
        click.echo(f"error: {err}", err=True)
