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

    python3 bench/bench_relay.py [--rate 1000] [--seconds 5] [--flood 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import statistics
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

from gateway.broker import LocalBroker  # noqa: E402

ENVELOPE_BYTES = 64
STAMP = struct.Struct(">QQ")  # seq, send time (ns), at the end of ct


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


def _sink_main(port: int, topic: str, expect: int, timeout: float, conn) -> None:  # type: ignore[no-untyped-def]
    """In a child process (own GIL): collect ``expect`` stamped envelopes."""
    lat: list[int] = []
    seen: set[int] = set()
    last = [0]
    done = threading.Event()
    ready = threading.Event()

    def on_message(c, u, msg) -> None:  # type: ignore[no-untyped-def]
        now = time.perf_counter_ns()  # CLOCK_MONOTONIC: comparable across processes
        seq, sent = STAMP.unpack_from(msg.payload, len(msg.payload) - STAMP.size)
        if seq in seen:
            return
        seen.add(seq)
        lat.append(now - sent)
        last[0] = now
        if len(seen) >= expect:
            done.set()

    c = client(port, f"bench-sink-{time.monotonic_ns()}", start=False)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    c.subscribe(topic, 1)
    ready.wait(10)
    conn.send("ready")
    done.wait(timeout)
    c.disconnect()
    c.loop_stop()
    conn.send((lat, last[0]))


class Sink:
    """A subscriber in its own process, for one phase of ``expect`` messages."""

    def __init__(self, port: int, topic: str, expect: int, timeout: float) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_sink_main, args=(port, topic, expect, timeout, child))
        self.proc.start()
        if not self.conn.poll(15) or self.conn.recv() != "ready":
            self.proc.kill()
            raise RuntimeError("sink did not subscribe")

    def result(self) -> tuple[list[int], int]:
        lat, last = self.conn.recv()
        self.proc.join(10)
        return lat, last


_seq = [0]  # sequence numbers never repeat across runs, so a straggler is never counted


def run_path(port: int, topic: str, sink_topic: str, rate: float, seconds: float, flood: int) -> dict:
    """Publish on ``topic`` and measure what arrives on ``sink_topic``."""
    pub = client(port, f"bench-pub-{time.monotonic_ns()}")
    seq = _seq[0]
    try:
        # Warm-up.
        sink = Sink(port, sink_topic, 200, 10)
        for _ in range(200):
            pub.publish(topic, envelope(seq, time.perf_counter_ns()), qos=1)
            seq += 1
            time.sleep(0.001)
        sink.result()

        # Fixed rate.
        n = int(rate * seconds)
        sink = Sink(port, sink_topic, n, seconds + 30)
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
        lat, _last = sink.result()
        lat.sort()
        fixed = {"sent": n, "received": len(lat),
                 "p50_ms": lat[len(lat) // 2] / 1e6 if lat else float("nan"),
                 "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6 if lat else float("nan")}

        # Flood.
        sink = Sink(port, sink_topic, flood, 120)
        t0 = time.perf_counter_ns()
        for _ in range(flood):
            pub.publish(topic, envelope(seq, time.perf_counter_ns()), qos=1)
            seq += 1
        lat, last = sink.result()
        received = len(lat)
        elapsed = (last - t0) / 1e9 if received else float("nan")
        flood_r = {"sent": flood, "received": received,
                   "msgs_per_s": received / elapsed if received else 0.0}
        return {"fixed": fixed, "flood": flood_r}
    finally:
        _seq[0] = seq
        time.sleep(0.5)  # let the broker and the gateway go idle between paths
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


def start_gateway(port: int, workdir: Path, client: str = "paho") -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "gateway.toml"
    cfg.write_text(f"""
[gateway]
name = "bench"
status_file = "status.json"
status_interval = 1.0
[mqtt]
port = {port}
client_id = "moteseal-gateway-bench-{client}"
# Own share group: a stopped gateway's persistent session keeps its share.
share_group = "bench-{client}"
max_inflight = 100
client = "{client}"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--flood", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="moteseal-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker", auth=False).start()
        bare = raw = None
        try:
            bare = start_bare_relay(broker.port)
            raw = start_bare_relay(broker.port, RAW_RELAY)
            runs: dict[str, list[dict]] = {"direct": [], "gateway": [], "lean": [], "bare": [], "raw": []}
            for _ in range(args.repeat):
                # Direct uses a topic the gateway does not subscribe to, so
                # the gateway idles while direct is measured.
                runs["direct"].append(run_path(broker.port, "bench/direct", "bench/direct",
                                               args.rate, args.seconds, args.flood))
                for path, client in (("gateway", "paho"), ("lean", "lean")):
                    # One gateway at a time: both would share the subscription.
                    gw = start_gateway(broker.port, work / client, client)
                    try:
                        runs[path].append(run_path(broker.port, "moteseal/v1/up/bench-dev",
                                                   "moteseal/v1/down/bench-sink",
                                                   args.rate, args.seconds, args.flood))
                    finally:
                        gw.terminate()
                        gw.wait(10)
                runs["bare"].append(run_path(broker.port, "bench/bare/up", "bench/bare/down",
                                             args.rate, args.seconds, args.flood))
                runs["raw"].append(run_path(broker.port, "bench/raw/up", "bench/raw/down",
                                            args.rate, args.seconds, args.flood))
        finally:
            for proc in (bare, raw):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
            broker.stop()

    def med(path: str, part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in runs[path])

    rows = [("flood throughput (msg/s)", "flood", "msgs_per_s"),
            (f"p50 latency at {args.rate:g} msg/s (ms)", "fixed", "p50_ms"),
            (f"p99 latency at {args.rate:g} msg/s (ms)", "fixed", "p99_ms")]
    result = {key: {p: med(p, part, key) for p in runs} for _label, part, key in rows}
    lost = {p: sum(r["fixed"]["sent"] - r["fixed"]["received"] + r["flood"]["sent"]
                   - r["flood"]["received"] for r in runs[p]) for p in runs}
    if args.json:
        print(json.dumps({"median_of": args.repeat, "results": result, "lost": lost, "runs": runs}))
        return
    print(f"moteseal relay benchmark: {ENVELOPE_BYTES}-byte envelopes, QoS 1, "
          f"median of {args.repeat} runs ({args.seconds:g} s at {args.rate:g} msg/s, "
          f"flood of {args.flood})")
    cols = [("direct", "direct"), ("gateway", "gw paho"), ("lean", "gw lean"), ("bare", "bare"),
            ("raw", "raw")]
    print(f"{'':34}" + "".join(f" {title:>9}" + ("" if p == "direct" else f" {'/dir':>6}")
                                for p, title in cols))
    for label, _part, key in rows:
        d = result[key]["direct"]
        line = f"{label:34} {d:9.3f}"
        for p, _title in cols[1:]:
            v = result[key][p]
            line += f" {v:9.3f} {v / d:5.2f}x"
        print(line)
    print("gw paho / gw lean: the gateway with [mqtt] client = \"paho\" / \"lean\"; "
          "bare: paho republishing unchecked; raw: the same over a raw socket")
    for path in ("gateway", "lean"):
        tput = result["msgs_per_s"][path] / result["msgs_per_s"]["direct"]
        p50 = result["p50_ms"][path] / result["p50_ms"]["direct"]
        print(f"goals ({path}): throughput >= 0.60 of direct: {tput:.2f} "
              f"({'met' if tput >= 0.6 else 'NOT met'}); "
              f"p50 <= 1.5x direct: {p50:.2f}x ({'met' if p50 <= 1.5 else 'NOT met'})")
    print("messages lost: " + ", ".join(f"{p} {n}" for p, n in lost.items()))


if __name__ == "__main__":
    main()
