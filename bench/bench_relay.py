"""Relay benchmark: Mosquitto + gateway against Mosquitto direct, one run.

For 64-byte telemetry envelopes at QoS 1 it measures, on each path:
- latency p50/p99 at a fixed rate (default 1000 msg/s), publish to delivery,
- throughput when flooded (as fast as the publisher's in-flight window allows).

Direct: publisher -> bench/direct -> subscriber on the same topic.
Bare relay (reference): publisher -> bench/bare/up -> a paho client that
republishes every message unchecked -> bench/bare/down -> subscriber.
Raw relay (reference): the same without paho, MQTT 3.1.1 over a raw socket:
the floor of one Python hop through the broker.
Gateway: publisher -> moteseal/v1/up/bench-dev -> ``moteseal gateway run``
(a separate process) -> moteseal/v1/down/bench-sink -> subscriber.

Both paths use the same broker (broker_config/local.conf, loopback, no
accounts so that ACL checks do not differ), the same clients (paho, MQTT v5,
TCP_NODELAY) and the same bytes; the publisher stamps each envelope's
opaque ciphertext field with a sequence number and a send time. Goals
(issue 4): gateway throughput >= 60% of direct; gateway p50 at 1000 msg/s
<= 1.5x direct.

Repeats are independent and interleaved: each repeat runs every path once
(direct, gateway, references: ABAB...), and each ratio is taken against the
direct run of the same repeat, so a slow spell on a shared machine moves
both sides of a ratio. Reported: the median ratio over repeats and its
spread (min-max). Each phase counts only its own sequence numbers (a
straggler is reported as ``stray``, never counted), each gateway run has a
fresh client id and share group with session expiry 0 (no session, hence no
queue, survives it), and the sink topic is drained to silence before each
path.

    python3 bench/bench_relay.py [--rate 1000] [--seconds 5] [--flood 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import abab  # noqa: E402  (bench/: the interleaving helpers shared by the benchmarks)
from gateway.broker import LocalBroker  # noqa: E402

ENVELOPE_BYTES = 64
STAMP = struct.Struct(">QQ")  # seq, send time (ns), at the end of ct
IDLE_NS = 5_000_000_000  # a phase ends 5 s after its last arrival, complete or not


def envelope(seq: int, now_ns: int) -> bytes:
    """A 64-byte data envelope from bench-dev to bench-sink; ct ends with the stamp."""
    head = cbor2.dumps([6, b"bench-dev", b"bench-sink", 1, seq, b""])[:-1]  # drop the empty bstr
    ct_len = ENVELOPE_BYTES - len(head) - 1 - (1 if ENVELOPE_BYTES - len(head) - 1 > 23 else 0)
    ct = bytes(ct_len - STAMP.size) + STAMP.pack(seq, now_ns)
    data = head + cbor2.dumps(ct)
    assert len(data) == ENVELOPE_BYTES, len(data)
    return data


def client(port: int, name: str, start: bool = True) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.on_socket_open = lambda cl, ud, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.max_inflight_messages_set(200)
    if start:
        c.connect("127.0.0.1", port, clean_start=True)
        c.loop_start()
    return c


def _sink_main(port: int, topic: str, lo: int, hi: int, timeout: float, conn) -> None:  # type: ignore[no-untyped-def]
    """In a child process (own GIL): collect the stamped envelopes with
    sequence numbers in ``[lo, hi)``; anything else is a stray, counted apart."""
    expect = hi - lo
    lat: list[int] = []
    seen: set[int] = set()
    last = [0]
    stray = [0]
    done = threading.Event()
    ready = threading.Event()

    def on_message(c, u, msg) -> None:  # type: ignore[no-untyped-def]
        now = time.perf_counter_ns()  # CLOCK_MONOTONIC: comparable across processes
        seq, sent = STAMP.unpack_from(msg.payload, len(msg.payload) - STAMP.size)
        if not lo <= seq < hi:
            stray[0] += 1  # another phase's (or run's) message: never counted
            return
        if seq in seen:
            return
        seen.add(seq)
        lat.append(now - sent)
        last[0] = now
        if len(seen) >= expect:
            done.set()

    c = client(port, f"bench-sink-{os.getpid()}-{time.monotonic_ns()}", start=False)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    c.subscribe(topic, 1)
    ready.wait(10)
    conn.send("ready")
    deadline = time.monotonic() + timeout
    while not done.wait(0.25) and time.monotonic() < deadline:
        if last[0] and time.perf_counter_ns() - last[0] > IDLE_NS:
            break  # the flow has stopped: the rest is lost, no use waiting
    c.disconnect()
    c.loop_stop()
    conn.send((lat, last[0], stray[0]))


class Sink:
    """A subscriber in its own process, for one phase: sequence numbers
    ``[lo, hi)``."""

    def __init__(self, port: int, topic: str, lo: int, hi: int, timeout: float) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_sink_main, args=(port, topic, lo, hi, timeout, child))
        self.proc.start()
        if not self.conn.poll(15) or self.conn.recv() != "ready":
            self.proc.kill()
            raise RuntimeError("sink did not subscribe")

    def result(self) -> tuple[list[int], int, int]:
        """Latencies (ns) of this phase's messages, the last arrival, strays."""
        lat, last, stray = self.conn.recv()
        self.proc.join(10)
        return lat, last, stray


def drain(port: int, topic: str, quiet: float = 0.5, limit: float = 60.0) -> int:
    """Wait until nothing has arrived on ``topic`` for ``quiet`` s (at most
    ``limit`` s); returns how many messages were still arriving."""
    count = [0]
    last = [time.monotonic()]
    ready = threading.Event()

    def on_message(c, u, msg) -> None:  # type: ignore[no-untyped-def]
        count[0] += 1
        last[0] = time.monotonic()

    c = client(port, f"bench-drain-{os.getpid()}-{time.monotonic_ns()}", start=False)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    try:
        c.subscribe(topic, 1)
        ready.wait(10)
        last[0] = time.monotonic()
        deadline = last[0] + limit
        while time.monotonic() < deadline and time.monotonic() - last[0] < quiet:
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    return count[0]


_seq = [0]  # sequence numbers never repeat across phases and runs


def run_path(port: int, topic: str, sink_topic: str, rate: float, seconds: float, flood: int) -> dict:
    """Publish on ``topic`` and measure what arrives on ``sink_topic``."""
    drained = drain(port, sink_topic)
    pub = client(port, f"bench-pub-{os.getpid()}-{time.monotonic_ns()}")
    seq = _seq[0]
    strays = 0
    try:
        # Warm-up.
        sink = Sink(port, sink_topic, seq, seq + 200, 10)
        for _ in range(200):
            pub.publish(topic, envelope(seq, time.perf_counter_ns()), qos=1)
            seq += 1
            time.sleep(0.001)
        lat, _last, stray = sink.result()
        strays += stray
        warm = {"sent": 200, "received": len(lat)}

        # Fixed rate.
        n = int(rate * seconds)
        sink = Sink(port, sink_topic, seq, seq + n, seconds + 30)
        start = time.perf_counter()
        for i in range(n):
            target = start + i / rate
            while True:
                delay = target - time.perf_counter()
                if delay <= 0:
                    break
                time.sleep(delay if delay > 0.0005 else 0)
            pub.publish(topic, envelope(seq, time.perf_counter_ns()), qos=1)
            seq += 1
        lat, _last, stray = sink.result()
        strays += stray
        lat.sort()
        fixed = {"sent": n, "received": len(lat),
                 "p50_ms": lat[len(lat) // 2] / 1e6 if lat else float("nan"),
                 "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6 if lat else float("nan")}

        # Flood.
        sink = Sink(port, sink_topic, seq, seq + flood, 120)
        t0 = time.perf_counter_ns()
        for _ in range(flood):
            pub.publish(topic, envelope(seq, time.perf_counter_ns()), qos=1)
            seq += 1
        lat, last, stray = sink.result()
        strays += stray
        received = len(lat)
        elapsed = (last - t0) / 1e9 if received else float("nan")
        flood_r = {"sent": flood, "received": received,
                   "msgs_per_s": received / elapsed if received else 0.0}
        return {"warmup": warm, "fixed": fixed, "flood": flood_r, "drained": drained,
                "stray": strays}
    finally:
        _seq[0] = seq
        pub.disconnect()
        pub.loop_stop()


BARE_RELAY = r"""
import socket, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port = int(sys.argv[1])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare-relay", protocol=mqtt.MQTTv5)
c.on_socket_open = lambda cl, ud, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.max_inflight_messages_set(100)
c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe("bench/bare/up", 1)
c.on_subscribe = lambda *a: print("ready", flush=True)
c.on_message = lambda cl, ud, m: cl.publish("bench/bare/down", m.payload, qos=1)
c.connect("127.0.0.1", port)
c.loop_forever()
"""


# Reference 2: the floor of a Python hop without paho: MQTT 3.1.1 over a raw
# socket, republish + PUBACK in one write, no checks, no flow control.
RAW_RELAY = r"""
import socket, struct, sys, select
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def pkt(t, body): 
    n = len(body); rl = bytearray()
    while True:
        b = n % 128; n //= 128
        rl.append(b | (128 if n else 0))
        if not n: break
    return bytes([t]) + bytes(rl) + body
def s16(x): return struct.pack(">H", len(x)) + x
s.sendall(pkt(0x10, s16(b"MQTT") + bytes([4, 2]) + struct.pack(">H", 0) + s16(b"rawrelay")))  # no keepalive
buf = bytearray()
def read_packets():
    global buf
    data = s.recv(65536)
    if not data: sys.exit(0)
    buf += data
    out = []
    while True:
        if len(buf) < 2: break
        mult, n, i = 1, 0, 1
        while True:
            if i >= len(buf): return out
            b = buf[i]; n += (b & 127) * mult; mult *= 128; i += 1
            if not b & 128: break
        if len(buf) < i + n: break
        out.append((buf[0], bytes(buf[i:i+n]))); del buf[:i+n]
    return out
s.sendall(pkt(0x82, struct.pack(">H", 1) + s16(b"bench/raw/up") + b"\x01"))
mid = 1
print("ready", flush=True)
while True:
    for t, body in read_packets():
        if t >> 4 == 3:
            tl = struct.unpack(">H", body[:2])[0]
            pid = body[2+tl:4+tl]; payload = body[4+tl:]
            mid = mid % 65535 + 1
            s.sendall(pkt(0x32, s16(b"bench/raw/down") + struct.pack(">H", mid) + payload) + pkt(0x40, pid))
"""


def start_bare_relay(port: int, script: str = BARE_RELAY) -> subprocess.Popen:
    """The reference: paho that republishes every message, no checks at all."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("bare relay did not start")
    return proc


def start_gateway(port: int, workdir: Path, tag: str) -> subprocess.Popen:
    """A gateway process with a fresh session: its own client id and share
    group (``tag``), and session expiry 0, so that nothing queued for an
    earlier run is delivered to a later one."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "gateway.toml"
    cfg.write_text(f"""
[gateway]
name = "bench"
status_file = "status.json"
status_interval = 1.0
[mqtt]
port = {port}
client_id = "moteseal-gateway-bench-{tag}"
share_group = "bench-{tag}"
session_expiry = 0
max_inflight = 100
[rate_limit]
rate = 0
[routes]
mqtt = ["bench-dev", "bench-sink"]
[log]
file = "gateway.log"
""")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


# The measured paths, in the order each repeat runs them (direct, gateway,
# then the references); ratios are against "direct" of the same repeat.
# (name, column title, (up topic, down topic))
REFERENCES = [("bare", "bare", ("bench/bare/up", "bench/bare/down")),
              ("raw", "raw", ("bench/raw/up", "bench/raw/down"))]
ROWS = [("throughput", "flood", "msgs_per_s", "flood throughput (msg/s)"),
        ("p50", "fixed", "p50_ms", "p50 latency at {rate} msg/s (ms)"),
        ("p99", "fixed", "p99_ms", "p99 latency at {rate} msg/s (ms)")]


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per path and metric: the median value, and the ratio to the same
    repeat's direct run as median, min and max over repeats."""
    out: dict = {}
    for path, results in runs.items():
        out[path] = {}
        for key, part, field, _label in ROWS:
            values = [r[part][field] for r in results]
            rs = abab.ratios(values, [d[part][field] for d in runs["direct"]])
            med, lo, hi = abab.summary(rs)
            out[path][key] = {"median": abab.summary(values)[0], "ratio": med,
                              "ratio_min": lo, "ratio_max": hi, "ratios": rs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--flood", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {p: [] for p in
                                   ["direct", "gateway"] + [r[0] for r in REFERENCES]}
    with tempfile.TemporaryDirectory(prefix="moteseal-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker", auth=False).start()
        bare = raw = None
        try:
            bare = start_bare_relay(broker.port)
            raw = start_bare_relay(broker.port, RAW_RELAY)
            for rep in range(args.repeat):
                # Direct uses a topic the gateway does not subscribe to.
                runs["direct"].append(run_path(broker.port, "bench/direct", "bench/direct",
                                               args.rate, args.seconds, args.flood))
                # A fresh gateway (and session) each repeat.
                tag = f"{os.getpid()}-{rep}"
                gw = start_gateway(broker.port, work / tag, tag)
                try:
                    runs["gateway"].append(run_path(broker.port, "moteseal/v1/up/bench-dev",
                                                    "moteseal/v1/down/bench-sink",
                                                    args.rate, args.seconds, args.flood))
                finally:
                    gw.terminate()
                    gw.wait(10)
                try:  # what the gateway forwarded: tells losses before it from losses after
                    status = json.loads((work / tag / "status.json").read_text())
                    runs["gateway"][-1]["relayed"] = status["relayed"]
                    log = (work / tag / "gateway.log").read_text()
                    runs["gateway"][-1]["disconnects"] = log.count('"event":"mqtt_disconnected"')
                except (OSError, ValueError, KeyError, IndexError):
                    pass
                for path, _title, (up, down) in REFERENCES:
                    runs[path].append(run_path(broker.port, up, down,
                                               args.rate, args.seconds, args.flood))
        finally:
            for proc in (bare, raw):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
            broker.stop()

    summary = summarize(runs)
    lost = {p: sum(r["fixed"]["sent"] - r["fixed"]["received"] + r["flood"]["sent"]
                   - r["flood"]["received"] for r in runs[p]) for p in runs}
    stray = {p: sum(r["stray"] + r["drained"] for r in runs[p]) for p in runs}
    if args.json:
        print(json.dumps({"repeats": args.repeat, "summary": summary, "lost": lost,
                          "stray": stray, "runs": runs}))
        return
    rate = f"{args.rate:g}"
    print(f"moteseal relay benchmark: {ENVELOPE_BYTES}-byte envelopes, QoS 1, "
          f"{args.repeat} interleaved repeats ({args.seconds:g} s at {rate} msg/s, "
          f"flood of {args.flood})")
    cols = [("direct", "direct"), ("gateway", "gateway")] + [(r[0], r[1]) for r in REFERENCES]
    print()
    print("medians")
    print(f"{'':34}" + "".join(f" {title:>9}" for _p, title in cols))
    for key, _part, _field, label in ROWS:
        print(f"{label.format(rate=rate):34}"
              + "".join(f" {summary[p][key]['median']:9.3f}" for p, _title in cols))
    print()
    print("ratio to direct, per repeat: median (min-max)")
    print(f"{'':34}" + "".join(f" {title:>17}" for _p, title in cols[1:]))
    for key, _part, _field, label in ROWS:
        line = f"{label.split(' (')[0].format(rate=rate):34}"
        for p, _title in cols[1:]:
            s = summary[p][key]
            line += f" {s['ratio']:5.2f}x ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})"
        print(line)
    print()
    print("gateway: moteseal gateway run (gateway/mqtt.py); bare: paho republishing "
          "unchecked (reference); raw: the same over a raw socket (reference)")
    tput, p50 = summary["gateway"]["throughput"], summary["gateway"]["p50"]
    print(f"goal: gateway throughput >= 0.60x direct: {tput['ratio']:.2f}x "
          f"({tput['ratio_min']:.2f}-{tput['ratio_max']:.2f}), "
          f"{'met' if tput['ratio'] >= 0.6 else 'NOT met'}; "
          f"bare {summary['bare']['throughput']['ratio']:.2f}x, "
          f"raw {summary['raw']['throughput']['ratio']:.2f}x")
    print(f"goal: gateway p50 at {rate} msg/s <= 1.5x direct: {p50['ratio']:.2f}x "
          f"({p50['ratio_min']:.2f}-{p50['ratio_max']:.2f}), "
          f"{'met' if p50['ratio'] <= 1.5 else 'NOT met'}; "
          f"bare {summary['bare']['p50']['ratio']:.2f}x, raw {summary['raw']['p50']['ratio']:.2f}x")
    print("messages lost: " + ", ".join(f"{p} {n}" for p, n in lost.items()))
    if lost["gateway"] and all("relayed" in r for r in runs["gateway"]):
        phases = [r[k] for r in runs["gateway"] for k in ("warmup", "fixed", "flood")]
        sent = sum(ph["sent"] for ph in phases)
        received = sum(ph["received"] for ph in phases)
        relayed = sum(r["relayed"] for r in runs["gateway"])
        disconnects = sum(r.get("disconnects", 0) for r in runs["gateway"])
        print(f"  gateway: {sent - relayed} lost before it, {relayed - received} after it "
              f"(Mosquitto drops beyond max_queued_messages, 10000, queued for a subscriber "
              f"that falls behind: the gateway, or the sink; a phase also ends 5 s after its "
              f"last arrival); the gateway lost its broker connection {disconnects} times")
    print("stray or drained messages (not counted): "
          + ", ".join(f"{p} {n}" for p, n in stray.items()))


if __name__ == "__main__":
    main()
