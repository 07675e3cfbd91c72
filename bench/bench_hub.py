"""Hub benchmark: ingest rate, dashboard page weight, memory per session.

1. Readings per second the hub ingests on one core: a data envelope through
   ``PeerSessions.receive`` (real decryption) and ``Inbox.accept`` into a
   ``HubStore`` (the dedupe decision, the reading, its field rows and the
   high-water mark in one SQLite transaction), the path of
   ``moteseal.peer.listen.PeerListener`` minus the MQTT socket. Beside it,
   the reference: ``PeerSessions.receive`` alone (decrypt only). Repeats are
   interleaved (AB, BA, AB, ...) on fresh but identical worlds (same
   devices, same readings), each ratio taken within its repeat; reported:
   the median ratio and its spread (min-max).
2. The dashboard's page weight: the bytes of the fleet page and the device
   page with every asset they load (from the HTML's own href/src), as
   served (uncompressed) and gzip-compressed for reference.
3. Memory: the RSS growth of a fresh process whose ``PeerSessions`` takes
   1,000 devices' handshakes and so holds 1,000 sessions.

    python3 bench/bench_hub.py [--devices 50] [--readings 40] [--repeat 5] [--sessions 1000]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from device.counter import Msg1Counter, NonpersistingCounterStore  # noqa: E402
from device.delivery import Outbox  # noqa: E402
from device.peer import NonpersistingDirectory, PeerSessions  # noqa: E402
from device.session import DeviceSession  # noqa: E402
from moteseal.crypto.backend_nacl import NaclBackend  # noqa: E402
from moteseal.hub.store import HubStore  # noqa: E402
from moteseal.peer.delivery import Inbox  # noqa: E402
from moteseal.sim.simulate import encode_reading  # noqa: E402

STATIC = REPO / "moteseal" / "hub" / "static"


def world(devices: int, readings: int, seed_keys: Any) -> tuple[PeerSessions, list[bytes]]:
    """A peer with ``devices`` handshaken sessions and, interleaved across
    devices, ``readings`` framed data envelopes from each (not yet sent)."""
    backend, static, psks = seed_keys
    directory = NonpersistingDirectory([static])
    for name, psk in psks.items():
        directory.add(name, psk)
    peer = PeerSessions(backend, b"hub", directory)
    per_device: list[list[bytes]] = []
    for name, psk in psks.items():
        dev = DeviceSession(backend, name, b"hub", static[1], psk, Msg1Counter(NonpersistingCounterStore()))
        dev.receive(peer.receive(dev.handshake(b"")).reply)
        outbox = Outbox(slots=readings + 1)
        outbox.start(1)
        envs = []
        for i in range(readings):
            body = encode_reading(i, 21.0 + i * 0.01, 45.0, 3300 - i)
            seq = outbox.add(body, len(body))
            envs.append(dev.send(bytes(outbox.view(seq)[:outbox.length(seq)])))
        per_device.append(envs)
    interleaved = [e for row in zip(*per_device) for e in row]
    return peer, interleaved


def run_ingest(peer: PeerSessions, envs: list[bytes], store_dir: Path) -> float:
    store = HubStore(str(store_dir / "readings.sqlite"))
    inbox = Inbox(store)
    try:
        t0 = time.perf_counter()
        for e in envs:
            got = peer.receive(e)
            acc = inbox.accept(got.device_id.decode(), got.payload)
            if acc.body is None:
                raise SystemExit("a reading was taken for a duplicate")
        dt = time.perf_counter() - t0
    finally:
        store.close()
    return len(envs) / dt


def run_decrypt(peer: PeerSessions, envs: list[bytes], store_dir: Path) -> float:
    got = 0
    t0 = time.perf_counter()
    for e in envs:
        got += len(peer.receive(e).payload)
    dt = time.perf_counter() - t0
    if got < len(envs) * 8:  # every envelope must have decrypted to a framed reading
        raise SystemExit("decryption failed")
    return len(envs) / dt


def ingest(args: argparse.Namespace) -> dict[str, Any]:
    backend = NaclBackend()
    keys = (backend, backend.generate_keypair(),
            {f"sensor-{i:04d}".encode(): backend.random_bytes(32) for i in range(args.devices)})
    rows = []
    for rep in range(args.repeat):
        order = [("ingest", run_ingest), ("decrypt", run_decrypt)]
        if rep % 2:
            order.reverse()  # ABBA..: neither side always runs first
        got: dict[str, float] = {}
        for name, fn in order:
            peer, envs = world(args.devices, args.readings, keys)
            gc.collect()
            with tempfile.TemporaryDirectory(prefix="bench-hub-") as d:
                got[name] = fn(peer, envs, Path(d))
        got["ratio"] = got["ingest"] / got["decrypt"]
        rows.append(got)
        print(f"  repeat {rep + 1}: ingest {got['ingest']:8.0f}/s  decrypt only "
              f"{got['decrypt']:8.0f}/s  ratio {got['ratio']:.3f}", flush=True)
    ratios = [r["ratio"] for r in rows]
    return {"readings_per_repeat": args.devices * args.readings,
            "ingest_per_s_median": statistics.median(r["ingest"] for r in rows),
            "decrypt_per_s_median": statistics.median(r["decrypt"] for r in rows),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def page_weight() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for page in ("fleet.html", "device.html"):
        html = (STATIC / page).read_text()
        assets = re.findall(r'(?:href|src)="/static/([^"]+)"', html)
        files = [page] + assets
        raw = sum((STATIC / f).stat().st_size for f in files)
        gz = sum(len(gzip.compress((STATIC / f).read_bytes(), 9)) for f in files)
        out[page] = {"files": files, "bytes": raw, "gzip_bytes": gz}
    return out


_MEMORY_CHILD = r"""
import gc, json, sys
sys.path.insert(0, sys.argv[1])
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.peer import NonpersistingDirectory, PeerSessions
from device.session import DeviceSession
from moteseal.crypto.backend_nacl import NaclBackend

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

n = int(sys.argv[2])
backend = NaclBackend()
static = backend.generate_keypair()
directory = NonpersistingDirectory([static])
psks = {f"sensor-{i:05d}".encode(): backend.random_bytes(32) for i in range(n)}
for name, psk in psks.items():
    directory.add(name, psk)
peer = PeerSessions(backend, b"hub", directory)
# Warm up: one handshake, so code paths and caches are in before the baseline.
warm = DeviceSession(backend, b"warm", b"hub", static[1], backend.random_bytes(32),
                     Msg1Counter(NonpersistingCounterStore()))
del warm
gc.collect()
before = rss_kib()
for name, psk in psks.items():
    dev = DeviceSession(backend, name, b"hub", static[1], psk, Msg1Counter(NonpersistingCounterStore()))
    dev.receive(peer.receive(dev.handshake(b"")).reply)
    del dev  # only the peer's side is measured
gc.collect()
after = rss_kib()
held = sum(len(v) for v in peer._sessions.values())
print(json.dumps({"sessions": held, "rss_before_kib": before, "rss_after_kib": after}))
"""


def memory(sessions: int) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(REPO), str(sessions)],
                       capture_output=True, text=True, timeout=600, check=True)
    doc = json.loads(r.stdout)
    delta = doc["rss_after_kib"] - doc["rss_before_kib"]
    doc["rss_delta_kib"] = delta
    doc["per_session_bytes"] = round(delta * 1024 / max(1, doc["sessions"]))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--readings", type=int, default=40, help="per device per repeat")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved pairs (>= 5 for a spread)")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"ingest: {args.devices} devices x {args.readings} readings per repeat, "
          f"{args.repeat} interleaved pairs", flush=True)
    res = {"ingest": ingest(args), "pages": page_weight(), "memory": memory(args.sessions)}
    i = res["ingest"]
    print(f"ingest into the store   {i['ingest_per_s_median']:8.0f} readings/s (median)")
    print(f"decrypt only            {i['decrypt_per_s_median']:8.0f} readings/s (median)")
    print(f"ratio ingest/decrypt    {i['ratio_median']:.3f} (spread {i['ratio_min']:.3f}-"
          f"{i['ratio_max']:.3f})")
    for page, p in res["pages"].items():
        print(f"{page:<12} {p['bytes']:7d} B  ({p['gzip_bytes']:6d} B gzip)  {' '.join(p['files'])}")
    m = res["memory"]
    print(f"memory: {m['sessions']} sessions held, RSS +{m['rss_delta_kib']} KiB "
          f"({m['per_session_bytes']} B per session)")
    if args.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
