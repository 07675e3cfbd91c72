"""Soak: many devices through real Mosquitto and the gateway, under faults,
with every message accounted for (issue 8).

    python bench/soak.py                      # 10 minutes, 50 CPython devices
    python bench/soak.py --seconds 3600 --devices 100 --interval 0.2
    python bench/soak.py --no-micropython     # without the MicroPython device
    python bench/soak.py --share-group moteseal   # $share: Mosquitto 2.0 loses it on restart

The world: a real Mosquitto (``broker_config/local.conf``, persistence on),
a real ``moteseal gateway run`` process with an MQTT link and a serial link,
the peer (``PeerSessions`` on its own MQTT link, in this process), ``N``
simulated CPython sensors (``moteseal.sim.simulate.SimulatedSensor``, each on its
own MQTT connection, persistent session, QoS 1), one CPython sensor on a
serial cable (``moteseal.links.serial_link.SerialLink`` over a socat pty pair) and
one real MicroPython device (``micropython micropython_port/main.py``, its
own MQTT client).

Every sensor on MQTT (the CPython ones and the MicroPython device) retains
its readings in an ``Outbox`` until the peer acknowledges them
(docs/protocol.md, "Delivery"); the peer takes each payload through an
``Inbox`` over a ``ReadingStore`` file, which stores each reading once, in
order, and hands back the acknowledgement.

The faults, in a loop until the time is up: the gateway SIGKILLed and
restarted, Mosquitto stopped and started (its persistence file carries the
queues), the serial cable pulled and plugged back, sensors rebooted (a new
``DeviceSession`` on the same counter file: a new handshake and a higher
message-1 counter), the gateway stopped gracefully while sensors reboot,
and the peer killed (``peer_kill``: it forgets every session, its store is
reopened from the same file and its MQTT link closed and opened again, as
a restarted ``peer listen --store`` would).

The accounting (``Soak.verdict``), per message, keyed by (device, seq):
- a message whose QoS-1 PUBLISH the broker acknowledged (``PUBACK``) must
  be delivered to the peer's application exactly once: ``lost`` otherwise;
- a message without a PUBACK (the device rebooted, or the link failed, with
  it in flight) was reported to the sender as failed; it may still arrive
  once (the PUBACK was lost, not the message, or the outbox sent it again);
- what the peer delivers is what its ``Inbox`` accepts: resends of what it
  already stored are dropped there (``peer_events["duplicate"]``), and no
  sensor evicts a reading it retains (``evicted``);
- nothing is delivered twice (``duplicates``) and nothing arrives that no
  device sent (``forged``);
- message-1 counters accepted by the peer increase strictly per device,
  across reboots (``counter_regressions``).
The serial cable has no acknowledgement: a frame written while the gateway
is down is gone without a word. For the serial sensor the accounting
checks duplicates and forgeries, and counts ``serial_unacknowledged_lost``
(reported, not failed). The MicroPython device reports its counts at exit:
every reading it made, none evicted, must arrive exactly once.

Prints one JSON summary; exits 1 if any check failed. ``tests/e2e/test_soak.py``
runs it for about two minutes in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from moteseal.crypto.backend_nacl import NaclBackend  # noqa: E402
from device.counter import Msg1Counter  # noqa: E402
from device.counter_file import FileCounterStore  # noqa: E402
from device.delivery import Outbox  # noqa: E402
from device.errors import LocalError, RemoteError  # noqa: E402
from moteseal.links.mqtt_link import MqttLink  # noqa: E402
from device.session import DeviceSession  # noqa: E402
from device.peer import PeerSessions  # noqa: E402
from moteseal.peer.delivery import Inbox, ReadingStore  # noqa: E402
from moteseal.sim.simulate import SimulatedSensor, decode_reading  # noqa: E402
from gateway.broker import LocalBroker  # noqa: E402
from tests.serial_fixtures import SocatPair  # noqa: E402

PEER = "hub"
# Readings each CPython sensor retains: the longest fault (Mosquitto down
# while the gateway is, about 6 s) at one reading per 0.5 s, with room.
RETAIN = 64


from bench.soak_parts import (  # noqa: E402
    AccountingLink, CountingDirectory, GatewayProc, SerialSensorLink, _log, _puback, verdict)


class Soak:
    """Set up the world, run faults for ``seconds``, drain, and account."""

    def __init__(self, workdir: Path, devices: int = 50, interval: float = 0.5,
                 seconds: float = 60.0, micropython: bool = True, serial: bool = True,
                 seed: int = 1, faults: tuple[str, ...] | None = None, drain_timeout: float = 60.0,
                 share_group: str = "",
                 log: Callable[[str], None] = _log) -> None:
        self.workdir = workdir
        self.n = devices
        self.interval = interval
        self.seconds = seconds
        self.use_mp = micropython and shutil.which(os.environ.get("MICROPYTHON", "micropython")) is not None
        self.use_serial = serial and SocatPair.available()
        self.rng = random.Random(seed)
        self.fault_names = tuple(faults if faults is not None else self.FAULTS)
        self.drain_timeout = drain_timeout
        self.share_group = share_group
        self.log = log
        self.backend = NaclBackend()
        self.static = self.backend.generate_keypair()
        self.directory = CountingDirectory([self.static])
        self.names = [f"sensor-{i:02d}" for i in range(devices)]
        self.psks: dict[str, bytes] = {}
        self.lock = threading.Lock()  # guards every session, sensor and record below
        self.stop_sending = threading.Event()
        self.stop_all = threading.Event()
        self.inbox: list[tuple[SimulatedSensor, bytes]] = []
        self.inbox_cv = threading.Condition()
        self.sensors: dict[str, SimulatedSensor] = {}
        self.boots: Counter[str] = Counter()
        # Accounting.
        self.sent: dict[tuple[str, int], Any] = {}  # (device, seq) -> MQTTMessageInfo / bool
        self.failed: set[tuple[str, int]] = set()  # reported to the sender as failed
        self.delivered: Counter[tuple[str, int]] = Counter()
        self.mp_delivered: dict[int, Counter[int]] = defaultdict(Counter)
        self.mp_boot = 0
        self.peer_events: Counter[str] = Counter()
        self.evicted = 0  # readings sensors evicted unacknowledged (must stay 0)
        self.faults: Counter[str] = Counter()
        self.t0 = time.monotonic()
        self.sent_at: dict[tuple[str, int], float] = {}
        self.rebooted_at: dict[str, int] = {}
        self.fault_log: list[tuple[float, str]] = []
        self.threads: list[threading.Thread] = []
        self.mp_procs: list[tuple[subprocess.Popen[str], Path]] = []
        self.broker: LocalBroker | None = None
        self.gateway: GatewayProc | None = None
        self.socat: SocatPair | None = None
        self.peer_link: MqttLink | None = None

    # -- the world ------------------------------------------------------------

    def setup(self) -> None:
        self.broker = LocalBroker(self.workdir / "broker")
        b = self.broker
        b.add("gw", "gateway")
        b.add(PEER, "device")
        for name in self.names + ["mp-1"]:
            b.add(name, "device")
        b.start()
        self.log(f"mosquitto on 127.0.0.1:{b.port} with persistence")
        for name in self.names + ["serial-1", "mp-1"]:
            self.psks[name] = self.backend.random_bytes(32)
            self.directory.add(name.encode(), self.psks[name])
        serial_port = None
        if self.use_serial:
            self.socat = SocatPair(self.workdir / "tty-device", self.workdir / "tty-gateway")
            self.socat.start()
            serial_port = self.socat.b
        self.gateway = GatewayProc(self.workdir / "gateway", b, serial_port, ["serial-1"],
                                   self.share_group)
        self.gateway.start()
        self.peer = PeerSessions(self.backend, PEER.encode(), self.directory)
        self.store_path = self.workdir / "readings.sqlite"
        self.store = ReadingStore(self.store_path)
        self.peer_inbox = Inbox(self.store)
        self.peer_link = self._peer_connect()
        for name in self.names:
            self._boot(name)
        if self.use_serial:
            self._boot("serial-1")
        t = threading.Thread(target=self._fleet, name="fleet", daemon=True)
        t.start()
        self.threads.append(t)
        if self.use_mp:
            self._start_mp(count=max(20, int(self.seconds / 0.4)), interval_ms=400)
        self.log(f"{len(self.sensors)} CPython sensors" + (" + serial" if self.use_serial else "")
                 + (" + MicroPython" if self.use_mp else ""))

    def _peer_connect(self) -> MqttLink:
        assert self.broker is not None
        return MqttLink(PEER, "127.0.0.1", self.broker.port, username=PEER,
                        password=self.broker.passwords[PEER], on_envelope=self._peer_envelope,
                        max_inflight=200).start(30)

    def _counter_store(self, name: str) -> FileCounterStore:
        return FileCounterStore(str(self.workdir / f"{name}.ctr"))

    def _boot(self, name: str) -> None:
        """Power a sensor on: a fresh session on its counter file and a fresh
        link; it handshakes on its first tick. Caller holds no lock."""
        assert self.broker is not None
        old = self.sensors.get(name)
        session = DeviceSession(self.backend, name.encode(), PEER.encode(), self.static[1],
                                self.psks[name], Msg1Counter(self._counter_store(name)))
        # The serial cable has no broker to resend through and nothing to
        # acknowledge with, so only the MQTT sensors retain.
        sensor = SimulatedSensor(session, None, self.interval,  # type: ignore[arg-type]
                                 seed=self.rng.randrange(1 << 30), handshake_timeout=3.0,
                                 on_event=self._device_event,
                                 outbox=None if name == "serial-1" else Outbox(RETAIN))
        deliver = self._deliver(sensor)
        if name == "serial-1":
            assert self.socat is not None
            link: Any = SerialSensorLink(str(self.socat.a), deliver).start()
        else:
            link = AccountingLink(name, "127.0.0.1", self.broker.port, username=name,
                                  password=self.broker.passwords[name], on_envelope=deliver)
            link.start(timeout=None)  # connects in the background, as after a power-up
        sensor.link = link
        if old is not None:
            sensor.seq = old.seq  # keep (device, seq) unique across boots
        sensor.next_due = time.monotonic() + self.rng.random() * self.interval
        with self.lock:
            self.sensors[name] = sensor
            self.boots[name] += 1

    def _reboot(self, name: str) -> None:
        with self.lock:
            old = self.sensors.pop(name)
            if old.outbox is not None:  # power off: the outbox's RAM is gone
                self.evicted += old.outbox.evicted
            # Power off: what the broker has not acknowledged is reported failed.
            self._settle(name)
        old.link.close()
        self._boot(name)
        with self.lock:
            self.sensors[name].seq = old.seq
            self.rebooted_at[name] = old.seq  # readings from here on are the new boot's
        self.faults["device_reboot"] += 1

    def _settle(self, name: str | None = None) -> None:
        # Caller holds the lock: every send of ``name`` (or everyone) that has
        # no PUBACK now is one the sender knows failed.
        for key, info in self.sent.items():
            if (name is None or key[0] == name) and key not in self.failed:
                if not _puback(info):
                    self.failed.add(key)

    def _deliver(self, sensor: SimulatedSensor) -> Callable[[bytes], None]:
        def put(data: bytes) -> None:
            with self.inbox_cv:
                self.inbox.append((sensor, data))
                self.inbox_cv.notify()
        return put

    def _device_event(self, ev: dict[str, Any]) -> None:
        # Called by the sensor in the fleet thread right after link.send.
        if ev["event"] in ("sent", "handshake"):
            name = ev["device"]
            sensor = self.sensors.get(name)
            link = sensor.link if sensor is not None else None
            info = link.last if link is not None else False
            self.sent[(name, ev["seq"])] = info
            self.sent_at[(name, ev["seq"])] = round(time.monotonic() - self.t0, 2)

    def _fleet(self) -> None:
        while not self.stop_all.is_set():
            now = time.monotonic()
            # After stop_sending the sensors still tick: they make no new
            # readings (``limit``), but resend what is unacknowledged.
            if not self.stop_all.is_set():
                with self.lock:
                    for s in list(self.sensors.values()):
                        try:
                            s.tick(now)
                        except LocalError as e:
                            self.log(f"{s.id}: {e}")
            with self.inbox_cv:
                if not self.inbox:
                    self.inbox_cv.wait(0.02)
                batch, self.inbox = self.inbox, []
            if batch:
                with self.lock:
                    for sensor, data in batch:
                        if self.sensors.get(sensor.id) is sensor:  # a powered-off one hears nothing
                            sensor.on_envelope(data, time.monotonic())

    def _peer_envelope(self, data: bytes) -> None:
        # paho's network thread of the peer's link.
        link = self.peer_link
        if link is None:
            return  # the peer is down (peer_kill): the broker keeps it for the next link
        out = []
        with self.lock:
            try:
                got = self.peer.receive(data, time.monotonic())
            except RemoteError as e:
                self.peer_events[type(e).__name__] += 1
                reply = getattr(e, "reply", None)
            else:
                reply = got.reply
                self.peer_events[got.kind] += 1
                for payload in (got.early, got.payload):
                    if payload is not None:
                        out += self._accept(got.device_id, payload)
        if reply is not None:
            link.send(reply)
        for env in out:
            link.send(env)

    def _accept(self, device_id: bytes, payload: bytes) -> list[bytes]:
        # Caller holds the lock. The payload through the Inbox (stored once,
        # in order); what it delivers is what the accounting counts. Returns
        # the acknowledgement to send, if any.
        dev = device_id.decode()
        acc = self.peer_inbox.accept(dev, payload)
        ack = []
        if acc.ack is not None:
            try:
                ack.append(self.peer.send(device_id, acc.ack, time.monotonic()))
            except LocalError:
                pass  # no session to answer on: the device resends, the ack follows
        if acc.body is None:
            self.peer_events["duplicate"] += 1
            return ack
        reading = decode_reading(acc.body)
        if reading is None:
            self.peer_events["unreadable"] += 1
        elif dev == "mp-1":
            self.mp_delivered[self.mp_boot][reading["seq"]] += 1
        else:
            self.delivered[(dev, reading["seq"])] += 1
        return ack

    # -- MicroPython ------------------------------------------------------------

    def _start_mp(self, count: int, interval_ms: int) -> None:
        from device.bundle import Bundle
        from moteseal.keys.provision import encode_bundle
        assert self.broker is not None
        bundle_path = self.workdir / "mp-1.bundle"
        if not bundle_path.exists():
            b = Bundle(b"mp-1", [(PEER.encode(), [self.static[1]])], self.psks["mp-1"],
                       "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                       {"kind": "mqtt", "host": "127.0.0.1", "port": self.broker.port,
                        "username": "mp-1", "password": self.broker.passwords["mp-1"]})
            bundle_path.write_bytes(encode_bundle(b))
            os.chmod(bundle_path, 0o600)
        with self.lock:
            self.mp_boot += 1
        out = self.workdir / f"mp-1.boot{self.mp_boot}.log"
        env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(REPO), ".frozen"]))
        exe = os.environ.get("MICROPYTHON", "micropython")
        proc = subprocess.Popen(
            [exe, str(REPO / "micropython_port" / "main.py"), "--bundle", str(bundle_path),
             "--state", str(self.workdir / "mp-1.ctr"), "--count", str(count),
             "--interval-ms", str(interval_ms), "--hs-timeout-ms", "3000",
             "--retain", "64", "--resend-s", "2", "--drain-ms", "30000",
             "--port", str(self.broker.port), "--quiet"],
            cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=open(out, "w"), stderr=subprocess.STDOUT, text=True)
        self.mp_procs.append((proc, out))

    def _wait_mp(self, timeout: float) -> dict[str, Any] | None:
        proc, out = self.mp_procs[-1]
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            self.log("MicroPython device did not finish in time")
            return None
        for line in reversed(out.read_text().splitlines()):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("event") == "summary":
                return d
        self.log("MicroPython device printed no summary: " + out.read_text()[-1500:])
        return None

    # -- faults -------------------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        self.stop_all.wait(seconds)

    def fault_gateway_kill(self) -> None:
        assert self.gateway is not None
        self.gateway.kill()
        self._pause(2)
        self.gateway.start()
        self.faults["gateway_kill"] += 1

    def fault_gateway_restart_with_reboots(self) -> None:
        assert self.gateway is not None
        self.gateway.stop()
        for name in self.rng.sample(self.names, 2):
            self._reboot(name)
        self._pause(1)
        self.gateway.start()
        self.faults["gateway_restart"] += 1

    def fault_broker_restart(self) -> None:
        assert self.broker is not None
        self.broker.stop()
        self._pause(1)
        self.broker.start()
        self.faults["broker_restart"] += 1

    def fault_serial_cut(self) -> None:
        if self.socat is None:
            return
        self.socat.stop()
        self._pause(2)
        self.socat.start()
        self.faults["serial_cut"] += 1

    def fault_reboots(self) -> None:
        for name in self.rng.sample(self.names, min(5, len(self.names))):
            self._reboot(name)

    def fault_broker_restart_gateway_down(self) -> None:
        """Mosquitto restarts while the gateway is down, and devices publish
        before the gateway is back: their messages must wait in the
        gateway's persistent session (restored from the persistence file)."""
        assert self.broker is not None and self.gateway is not None
        self.gateway.stop()
        self.broker.stop()
        self.broker.start()
        self._pause(4)
        self.gateway.start()
        self.faults["broker_restart_gateway_down"] += 1

    def fault_peer_kill(self) -> None:
        """The peer dies and comes back (``peer listen --store`` SIGKILLed and
        restarted): every session forgotten, the store reopened from the
        same file, its MQTT link closed and opened again. Devices learn it
        from hints, handshake again and resend what is unacknowledged."""
        link = self.peer_link
        self.peer_link = None
        assert link is not None
        link.close()
        with self.lock:
            self.store.close()
            self.store = ReadingStore(self.store_path)
            self.peer_inbox = Inbox(self.store)
            self.peer = PeerSessions(self.backend, PEER.encode(), self.directory)
        self._pause(1)
        self.peer_link = self._peer_connect()
        self.faults["peer_kill"] += 1

    FAULTS = ("gateway_kill", "broker_restart", "serial_cut", "reboots",
              "gateway_restart_with_reboots", "peer_kill")

    def run(self) -> None:
        schedule = [getattr(self, "fault_" + name) for name in self.fault_names]
        gap = 5.0
        end = time.monotonic() + self.seconds
        self._pause(gap)
        i = 0
        while time.monotonic() < end - gap:
            f = schedule[i % len(schedule)]
            self.log(f"fault: {f.__name__[6:]}")
            self.fault_log.append((round(time.monotonic() - self.t0, 2), f.__name__[6:]))
            f()
            self.fault_log.append((round(time.monotonic() - self.t0, 2), "done"))
            i += 1
            self._pause(gap)

    # -- the end ------------------------------------------------------------------

    def drain(self, timeout: float | None = None) -> None:
        """Stop new readings, then wait until every acknowledged message has
        arrived (or ``timeout``, default ``drain_timeout``)."""
        timeout = self.drain_timeout if timeout is None else timeout
        with self.lock:
            for s in self.sensors.values():
                s.limit = s.seq  # no new readings; retained ones go on being resent
        self.stop_sending.set()
        mp_summary = self._wait_mp(max(timeout, 60.0)) if self.use_mp else None
        self.mp_summaries = [mp_summary]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                pending = [k for k, info in self.sent.items()
                           if info is not False and info is not True and not _puback(info)
                           and k not in self.failed]
                missing = [k for k in self._acked() if self.delivered[k] == 0]
                unacked = [s.id for s in self.sensors.values()
                           if s.outbox is not None and s.outbox.count()]
            if not pending and not missing and not unacked:
                break
            time.sleep(0.25)
        if self.use_mp:
            # A clean reboot of the MicroPython device: the same counter file,
            # a new handshake, a higher counter.
            self._start_mp(count=5, interval_ms=200)
            self.mp_summaries.append(self._wait_mp(60))
            time.sleep(1.0)
        time.sleep(1.0)  # late duplicates, if any, would show now
        with self.lock:
            self._settle()

    def _acked(self) -> list[tuple[str, int]]:
        return [k for k, info in self.sent.items()
                if info is not False and info is not True and _puback(info)]

    def verdict(self) -> dict[str, Any]:
        """The accounting (module docstring); ``ok`` is the overall check."""
        return verdict(self)

    def close(self) -> None:
        self.stop_sending.set()
        self.stop_all.set()
        for t in self.threads:
            t.join(5)
        for proc, _ in self.mp_procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for s in list(self.sensors.values()):
            try:
                s.link.close()
            except Exception:
                pass
        if self.peer_link is not None:
            self.peer_link.close()
        if hasattr(self, "store"):
            self.store.close()
        if self.gateway is not None:
            self.gateway.stop()
        if self.socat is not None:
            self.socat.stop()
        if self.broker is not None:
            self.broker.stop()


def run_soak(workdir: Path, **kw: Any) -> dict[str, Any]:
    soak = Soak(workdir, **kw)
    try:
        soak.setup()
        soak.run()
        soak.drain()
        return soak.verdict()
    finally:
        soak.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between readings per sensor")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-micropython", action="store_true")
    ap.add_argument("--no-serial", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--share-group", default="", help="the gateway's $share group (\"\" = plain subscription)")
    ap.add_argument("--faults", default=",".join(Soak.FAULTS),
                    help="comma-separated, in order, repeated until the time is up; one of "
                         + ", ".join(Soak.FAULTS + ("broker_restart_gateway_down",)))
    a = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="moteseal-soak-"))
    t0 = time.monotonic()
    try:
        result = run_soak(workdir, devices=a.devices, seconds=a.seconds, interval=a.interval,
                          micropython=not a.no_micropython, serial=not a.no_serial, seed=a.seed,
                          faults=tuple(f for f in a.faults.split(",") if f),
                          share_group=a.share_group)
    finally:
        if a.keep:
            _log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
