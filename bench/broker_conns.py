"""Broker cost of idle device connections: Mosquitto memory per connection.

    python3 bench/broker_conns.py [--connections 2000] [--keepalive 60]

Opens N MQTT 3.1.1 connections to a fresh local Mosquitto
(broker_config/local.conf, anonymous: ``LocalBroker(auth=False)``), each as
a device would hold one: CONNECT with its own client id, SUBSCRIBE (QoS 1)
to its own down topic, then idle. Reports the broker's resident memory
(VmRSS) per connection, and its CPU per connection-second while idle
(keepalive PINGREQs are sent by this process every ``keepalive`` s). One
raw socket per connection, no paho: the client side costs nothing to speak
of. With accounts and ACLs (production) the per-connection memory grows by
the ACL entry; the figure here is the floor.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.broker import DOWN_PREFIX, LocalBroker  # noqa: E402

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _s(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def _pkt(head: int, body: bytes) -> bytes:
    n, rl = len(body), b""
    while True:
        d, n = n % 128, n // 128
        rl += bytes((d | (0x80 if n else 0),))
        if not n:
            return bytes((head,)) + rl + body


def connect(port: int, client_id: str, keepalive: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(_pkt(0x10, _s(b"MQTT") + bytes((4, 0x02)) + struct.pack(">H", keepalive)
                   + _s(client_id.encode())))
    s.sendall(_pkt(0x82, struct.pack(">H", 1) + _s((DOWN_PREFIX + client_id).encode()) + b"\x01"))
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--idle", type=float, default=10.0, help="s to watch the idle CPU")
    a = ap.parse_args()
    with LocalBroker(Path(tempfile.mkdtemp(prefix="moteseal-conns-")), auth=False) as broker:
        pid = broker.proc.pid
        time.sleep(0.5)
        before = rss_kib(pid)
        socks = [connect(broker.port, "dev-%06d" % i, a.keepalive) for i in range(a.connections)]
        for s in socks:  # CONNACK (4 bytes) and SUBACK (5 bytes) each
            got = b""
            while len(got) < 9:
                chunk = s.recv(9 - len(got))
                if not chunk:
                    raise RuntimeError("broker closed a connection")
                got += chunk
        time.sleep(1.0)
        after = rss_kib(pid)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(a.idle)
        idle_cpu = cpu_seconds(pid) - c0
        dt = time.monotonic() - t0
        for s in socks:
            s.close()
    per = (after - before) * 1024 / a.connections
    print(f"Mosquitto, {a.connections} idle device connections (CONNECT + SUBSCRIBE to its down topic)")
    print(f"  resident memory: {before} KiB before, {after} KiB after: {per:.0f} B per connection")
    print(f"  idle CPU: {idle_cpu:.2f} s over {dt:.1f} s (keepalive {a.keepalive} s, "
          f"no pings sent inside the window if it is shorter)")


if __name__ == "__main__":
    main()
