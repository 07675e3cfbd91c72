"""Load generator: many simulated devices, end to end through broker,
gateway and hub, paced; reports rates, device-to-store latency, losses and
the CPU each component spent.

    python3 bench/loadgen.py [--devices 2000] [--seconds 30] [--rate 1000]
                             [--hs-rate 500] [--connections 4] [--json]

The path is production's: each device's envelopes go to its up topic on a
Mosquitto (broker_config/local.conf), ``python3 -m gateway run`` (a separate
process) relays them by ``dst``, the hub (a separate process: ``PeerListener``
over ``PeerSessions``, an ``Inbox`` on a SQLite ``ReadingStore`` file, one
acknowledgement per reading) answers through the gateway to each device's
down topic.

What differs from production, and why:
- One process simulates every device (``DeviceSession`` objects, one per
  device, all driven from one thread) and multiplexes them over
  ``--connections`` MQTT connections, each publishing to its devices' up
  topics and subscribed to their down topics. In production each device has
  its own MQTT account and connection; here the broker is anonymous
  (``LocalBroker(auth=False)``), so per-device ACLs and 10,000 TCP sessions
  are not part of the measured cost (see docs/scaling.md for the broker).
- The hub's directory is in memory (``NonpersistingDirectory``, PSKs derived
  from a seed), not the SQLite registry: the durable message-1 counter write
  per handshake is not included in the handshake rate.
- Devices keep no outbox (nothing is resent): a reading not stored by the
  end of the drain is reported as lost, never retried.

Phases: every device handshakes (paced at ``--hs-rate``/s, 0 = no pacing,
at most ``--window`` outstanding); then readings go out round-robin at
``--rate``/s in all for ``--seconds``; then up to ``--drain`` s for the
last ones. A reading carries its send time (CLOCK_MONOTONIC, which the hub
process shares); latency is from just before the device seals it to the
hub's report after the store's commit.

Per component, CPU seconds come from /proc/<pid>/stat (user + system), so
a rate per CPU-second ("per core") can be stated for each process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import queue
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from device.counter import Msg1Counter, NonpersistingCounterStore  # noqa: E402
from device.peer import NonpersistingDirectory, PeerSessions  # noqa: E402
from device.session import EV_DATA, EV_HANDSHAKE, EV_REHANDSHAKE, DeviceSession  # noqa: E402
from gateway.broker import DOWN_PREFIX, UP_PREFIX, LocalBroker  # noqa: E402
from moteseal.crypto.backend_nacl import NaclBackend  # noqa: E402

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
HUB = "hub"
TICK = 0.005  # s between pacing decisions
SUB_BATCH = 40  # topics per SUBSCRIBE: local.conf's max_packet_size is 2048 bytes
STALL_S = 10.0  # a phase that can send nothing for this long gives up
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def device_ids(n: int) -> list[bytes]:
    return [b"lg-%05d" % i for i in range(n)]


def psk_of(seed: bytes, dev: bytes) -> bytes:
    return hashlib.sha256(seed + dev).digest()


def reading(seq: int) -> bytes:
    """A framed reading (device/delivery.py: kind, boot, seq, back) whose
    CBOR body is the simulator's reading plus its send time."""
    body = cbor2.dumps({"seq": seq, "t": 21.5, "rh": 40.0, "bat": 3000,
                        "sent": time.monotonic_ns()})
    return bytes((1, 0, 0, 0, 1)) + seq.to_bytes(4, "big") + b"\x00" + body


# ---------------------------------------------------------------- the hub

def hub_main(port: int, static: tuple[bytes, bytes], seed: bytes, n: int, store: str,
             conn: Any, stop: Any) -> None:
    """The hub process: PeerListener, SQLite store, reports to ``conn``."""
    from moteseal.links.mqtt_link import MqttLink
    from moteseal.peer.delivery import Inbox, ReadingStore
    from moteseal.peer.listen import PeerListener

    d = NonpersistingDirectory([static])
    for dev in device_ids(n):
        d.add(dev, psk_of(seed, dev))
    sessions = PeerSessions(NaclBackend(), HUB.encode(), d, suite=SUITE)
    lat: list[int] = []
    first_last = [0.0, 0.0]

    def on_report(r: dict) -> None:
        if r["event"] == "telemetry" and "reading" in r:
            now = time.monotonic_ns()
            lat.append(now - r["reading"]["sent"])
            if not first_last[0]:
                first_last[0] = now / 1e9
            first_last[1] = now / 1e9

    link = MqttLink(HUB, port=port, client_id="loadgen-hub", clean_start=True,
                    session_expiry=0, max_inflight=1000, inbox_size=100000)
    listener = PeerListener(sessions, link, on_report, inbox=Inbox(ReadingStore(store)))
    link.start(timeout=20)
    conn.send("ready")
    listener.run(stop)
    conn.send({"counts": listener.counts, "latency_ns": lat, "first": first_last[0],
               "last": first_last[1], "stalls": link.stalls})
    link.close()


# ---------------------------------------------------------------- the gateway

def start_gateway(port: int, workdir: Path) -> subprocess.Popen:
    cfg = workdir / "gateway.toml"
    cfg.write_text(f"""
[gateway]
name = "loadgen"
status_file = "status.json"
status_interval = 1.0
[mqtt]
port = {port}
client_id = "moteseal-gateway-loadgen"
session_expiry = 0
max_inflight = 1000
[rate_limit]
rate = 0
[routes]
mqtt = ["{HUB}", "lg-*"]
[policy]
peers = ["{HUB}"]
max_labelled = 16
[metrics]
port = 0
[log]
file = "gateway.log"
level = "warning"
""")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
                            cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if json.loads((workdir / "status.json").read_text())["links"]["mqtt"]["connected"]:
                return proc
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("gateway did not start")


# ---------------------------------------------------------------- the devices

class Fleet:
    """Every simulated device, over a few MQTT connections; all device
    state is touched by the calling thread only (paho's threads enqueue)."""

    def __init__(self, n: int, conns: int, port: int, hub_pub: bytes, seed: bytes) -> None:
        b = NaclBackend()
        self.ids = device_ids(n)
        self.devices = [DeviceSession(b, dev, HUB.encode(), hub_pub, psk_of(seed, dev),
                                      Msg1Counter(NonpersistingCounterStore()), suite=SUITE)
                        for dev in self.ids]
        self.index = {DOWN_PREFIX + dev.decode(): i for i, dev in enumerate(self.ids)}
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.clients = []
        self.subacks = 0
        for c in range(conns):
            cl = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"loadgen-{c}",
                             protocol=mqtt.MQTTv5)
            cl.max_inflight_messages_set(1000)
            cl.max_queued_messages_set(0)
            cl.on_message = lambda client, userdata, msg: self.inbox.put((msg.topic, msg.payload))
            cl.on_subscribe = lambda client, userdata, mid, rcs, props: self._subacked()
            # As MqttLink does: without it, Nagle holds small publishes ~40 ms.
            cl.on_socket_open = lambda client, userdata, sock: sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cl.connect("127.0.0.1", port, keepalive=60, clean_start=True)
            cl.loop_start()
            self.clients.append(cl)
        wanted = 0
        for c, cl in enumerate(self.clients):
            mine = [DOWN_PREFIX + d.decode() for d in self.ids[c::conns]]
            for k in range(0, len(mine), SUB_BATCH):
                cl.subscribe([(t, 1) for t in mine[k:k + SUB_BATCH]])
                wanted += 1
        deadline = time.monotonic() + 60
        while self.subacks < wanted:  # a down topic not yet subscribed loses message 2
            if time.monotonic() > deadline:
                raise RuntimeError("subscriptions not acknowledged")
            time.sleep(0.05)
        self.hs_done: list[float] = [0.0] * n
        self.hs_sent: list[float] = [0.0] * n
        self.acks = self.rehandshakes = self.errors = self.hs_count = 0
        self.seq = [0] * n

    def _subacked(self) -> None:
        self.subacks += 1  # paho's threads; an int add under the GIL

    def publish(self, i: int, data: bytes) -> None:
        self.clients[i % len(self.clients)].publish(UP_PREFIX + self.ids[i].decode(), data, qos=1)

    def handshake(self, i: int) -> None:
        self.hs_sent[i] = time.monotonic()
        self.publish(i, self.devices[i].handshake(b""))

    def send_reading(self, i: int) -> None:
        s = self.seq[i]
        self.seq[i] = s + 1
        self.publish(i, self.devices[i].send(reading(s)))

    def pump(self, budget: float) -> None:
        """Handles downlink for up to ``budget`` seconds (returns early if idle)."""
        end = time.monotonic() + budget
        while True:
            try:
                topic, data = self.inbox.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return
            i = self.index.get(topic)
            if i is not None:
                try:
                    ev, _ = self.devices[i].receive(data)
                except Exception:
                    self.errors += 1
                    ev = None
                if ev == EV_HANDSHAKE:
                    if not self.hs_done[i]:
                        self.hs_count += 1
                    self.hs_done[i] = time.monotonic()
                elif ev == EV_DATA:
                    self.acks += 1
                elif ev == EV_REHANDSHAKE:
                    self.rehandshakes += 1
                    self.handshake(i)
            if time.monotonic() >= end:
                return

    def close(self) -> None:
        for cl in self.clients:
            cl.loop_stop()
            cl.disconnect()


def paced(fleet: Fleet, items: list[int], rate: float, action: Any, window: int,
          outstanding: Any) -> float:
    """Runs ``action(i)`` for every item at ``rate``/s (0: as fast as the
    window allows), pumping downlink in between; returns the seconds taken."""
    t0 = last = time.monotonic()
    k = 0
    while k < len(items):
        due = len(items) if rate <= 0 else min(len(items), int((time.monotonic() - t0) * rate) + 1)
        k0 = k
        while k < due and outstanding() < window:
            action(items[k])
            k += 1
        fleet.pump(TICK)
        now = time.monotonic()
        if k != k0:
            last = now
        elif now - last > STALL_S:
            break  # nothing could be sent for STALL_S: the rest count as lost
    return time.monotonic() - t0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0, help="readings phase length")
    ap.add_argument("--rate", type=float, default=1000.0, help="readings/s, all devices together")
    ap.add_argument("--hs-rate", type=float, default=500.0, help="handshakes/s offered (0: unpaced)")
    ap.add_argument("--window", type=int, default=500, help="handshakes outstanding at most")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--drain", type=float, default=10.0)
    ap.add_argument("--store", choices=("file", "memory"), default="file",
                    help="the hub's reading store: a SQLite file (WAL, synchronous=FULL, "
                         "as in production) or :memory: (no fsync: isolates its cost)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    seed = os.urandom(16)
    static = NaclBackend().generate_keypair()
    work = Path(tempfile.mkdtemp(prefix="moteseal-loadgen-"))
    ctx = mp.get_context("fork")
    with LocalBroker(work, auth=False) as broker:
        gw = start_gateway(broker.port, work)
        parent, child = ctx.Pipe()
        stop = ctx.Event()
        hub = ctx.Process(target=hub_main, args=(broker.port, static, seed, a.devices,
                                                 ":memory:" if a.store == "memory"
                                                 else str(work / "readings.db"), child, stop))
        hub.start()
        if not parent.poll(30) or parent.recv() != "ready":
            raise RuntimeError("hub did not start")
        fleet = Fleet(a.devices, a.connections, broker.port, static[1], seed)
        time.sleep(1.0)  # subscriptions in place
        pids = {"hub": hub.pid, "gateway": gw.pid, "broker": broker.proc.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        lg0 = time.process_time()
        # Phase 1: handshakes.
        n = a.devices
        sent = [0]

        def hs(i: int) -> None:
            sent[0] += 1
            fleet.handshake(i)
        hs_took = paced(fleet, list(range(n)), a.hs_rate, hs, a.window,
                        lambda: sent[0] - fleet.hs_count)
        t_end = time.monotonic() + 30
        while fleet.hs_count < n and time.monotonic() < t_end:
            fleet.pump(0.05)
        ok = [i for i in range(n) if fleet.hs_done[i]]
        hs_span = (max(fleet.hs_done[i] for i in ok) - min(fleet.hs_sent)) if ok else float("nan")
        hs_lat = [fleet.hs_done[i] - fleet.hs_sent[i] for i in ok]
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        # Phase 2: readings, round-robin over the devices with a session.
        order = [ok[j % len(ok)] for j in range(int(a.rate * a.seconds))] if ok else []
        t0 = time.monotonic()
        rd_took = paced(fleet, order, a.rate, fleet.send_reading, 1 << 30, lambda: 0)
        end = time.monotonic() + a.drain
        while fleet.acks < len(order) and time.monotonic() < end:
            fleet.pump(0.05)
        drained = time.monotonic() - t0
        time.sleep(0.5)
        cpu2 = {k: cpu_seconds(p) for k, p in pids.items()}
        lg_cpu = time.process_time() - lg0
        stop.set()
        res = parent.recv() if parent.poll(30) else {}
        hub.join(10)
        fleet.close()
        gw.terminate()
        gw.wait(10)
    lat_ms = [x / 1e6 for x in res.get("latency_ns", [])]
    counts = res.get("counts", {})
    delivered = len(lat_ms)
    span = (res["last"] - res["first"]) if delivered > 1 else float("nan")
    hub_cpu_rd = cpu2["hub"] - cpu1["hub"]
    out = {
        "devices": n, "connections": a.connections, "store": a.store,
        "handshakes": {"offered_per_s": a.hs_rate, "completed": len(ok),
                       "per_s": len(ok) / hs_span if ok else 0.0, "paced_s": hs_took,
                       "p50_ms": pct(hs_lat, 0.5) * 1e3, "p99_ms": pct(hs_lat, 0.99) * 1e3,
                       "hub_cpu_s": cpu1["hub"] - cpu0["hub"],
                       "per_hub_cpu_s": len(ok) / max(1e-9, cpu1["hub"] - cpu0["hub"])},
        "readings": {"offered_per_s": a.rate, "sent": len(order), "paced_s": rd_took,
                     "delivered": delivered, "lost": len(order) - delivered,
                     "per_s": delivered / span if delivered > 1 else 0.0,
                     "acks_back": fleet.acks, "drained_s": drained,
                     "p50_ms": pct(lat_ms, 0.5), "p99_ms": pct(lat_ms, 0.99),
                     "max_ms": max(lat_ms) if lat_ms else float("nan"),
                     "hub_cpu_s": hub_cpu_rd,
                     "per_hub_cpu_s": delivered / max(1e-9, hub_cpu_rd)},
        # Per reading the gateway relays two envelopes (the reading, its ack).
        "cpu_s_readings_phase": {k: cpu2[k] - cpu1[k] for k in pids},
        "gateway_envelopes_per_cpu_s": 2 * delivered / max(1e-9, cpu2["gateway"] - cpu1["gateway"]),
        # Per reading the broker takes 4 publishes in and makes 4 deliveries:
        # device -> gateway -> hub, and the ack hub -> gateway -> device.
        "broker_messages_per_cpu_s": 8 * delivered / max(1e-9, cpu2["broker"] - cpu1["broker"]),
        "loadgen_cpu_s": lg_cpu,
        "hub_counts": counts, "device_errors": fleet.errors, "rehandshakes": fleet.rehandshakes,
    }
    if a.json:
        print(json.dumps(out, indent=2))
        return
    h, r = out["handshakes"], out["readings"]
    print(f"loadgen: {n} devices over {a.connections} MQTT connections (anonymous local broker), "
          f"gateway and hub in their own processes")
    print(f"handshakes: {h['completed']}/{n} in {hs_span:.1f} s = {h['per_s']:.0f}/s "
          f"(offered {a.hs_rate:g}/s); device->hs2 p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms; "
          f"hub {h['per_hub_cpu_s']:.0f} handshakes per hub CPU-second")
    print(f"readings: offered {a.rate:g}/s for {a.seconds:g} s: sent {r['sent']}, stored {delivered}, "
          f"lost {r['lost']}; {r['per_s']:.0f}/s stored; latency device->store "
          f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms; "
          f"acks back {fleet.acks}")
    c = out["cpu_s_readings_phase"]
    print(f"CPU seconds in the readings phase: hub {c['hub']:.2f}, gateway {c['gateway']:.2f}, "
          f"broker {c['broker']:.2f}, loadgen (all phases) {lg_cpu:.2f}")
    print(f"per CPU-second: hub {r['per_hub_cpu_s']:.0f} readings (store + ack), gateway "
          f"{out['gateway_envelopes_per_cpu_s']:.0f} envelopes, broker "
          f"{out['broker_messages_per_cpu_s']:.0f} messages (8 per reading: 4 in, 4 out)")
    if fleet.errors or fleet.rehandshakes:
        print(f"device errors {fleet.errors}, re-handshakes {fleet.rehandshakes}")
    print(f"hub counts: {counts}")


if __name__ == "__main__":
    main()
