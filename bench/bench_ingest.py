"""Hub ingest benchmark: each figure beside the floor it is held against.

    python3 bench/bench_ingest.py [--rounds 7] [--quick] [--memory N]

Interleaved rounds (bench/abab.py): every case runs once per round, the
order reversed every other round, and each ratio is taken within a round;
printed are the median ratio and its spread (min-max over rounds). Times
are CPU time of this process (abab.CPU), so a neighbour taking the core
away does not count against whichever case was running.

Data (a 64-byte reading in a data envelope, NKpsk0):
- ``receive``: ``PeerSessions.receive(envelope, now)``: decode, session
  lookup, replay check, decrypt, window commit (device/peer.py);
- ``ingest``: ``PeerListener.handle``: ``receive``, then the inbox (dedup,
  SQLite store in memory, acknowledgement sealed with ``PeerSessions.send``)
  and the report, as the hub does per reading, minus the MQTT socket;
- ``floor``: what a Python program reaches with the same libraries and
  nothing else: ``cbor2.loads`` of the envelope, one cached
  ``cryptography`` ``ChaCha20Poly1305`` object per device, ``decrypt``
  (no replay check, no canonical checks, no store): the goal is
  ``receive`` >= 0.7x of it;
- ``noiseprotocol``: its bare transport ``decrypt`` (implicit nonces).

Handshakes (NKpsk0):
- ``both sides``: initiator and responder in one process (bench_core's
  figure) against ``bound``: six X25519 in raw libsodium (two base-point,
  four variable-base), the work no implementation avoids; goal >= 0.75;
- ``minimal``: ``bench/hs_floor.py``, the least a Python program does for
  the same handshake with the same libraries (pre-computed PSK prefix, no
  checks, unused HKDF outputs skipped): how close to the bound Python gets;
- ``hub side``: ``PeerSessions.receive`` of a message 1 (responder, with
  directory, counter check and message 2) against its own bound, three
  X25519 (one base-point, two variable-base).

``--store``: the hub's durable store, where a reading's time goes once the
crypto is cheap: ``ReadingStore.deliver`` (SQLite file, WAL,
``synchronous=FULL``: one fsync'd transaction per reading, before its
acknowledgement) against the same rows written 32 to a transaction (a group
commit, which the hub does not do yet: the figure it would reach). Wall
time here, since a commit waits on the disk, not the CPU.

``--memory N``: bytes of Python heap per idle device session in a
``PeerSessions`` holding N devices (tracemalloc; the directory's own
entries are made before the baseline is taken).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import struct
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import cbor2  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402
from nacl._sodium import ffi, lib  # noqa: E402

from abab import CPU, batch_rate, fmt_rate, fmt_ratio, interleave, ratios  # noqa: E402
import hs_floor  # noqa: E402
from bench_core import SUITE, pair_ours, pair_theirs  # noqa: E402
from device.counter import Msg1Counter, NonpersistingCounterStore  # noqa: E402
from device.peer import NonpersistingDirectory, PeerSessions  # noqa: E402
from device.session import DeviceSession  # noqa: E402
from moteseal.crypto.backend_nacl import NaclBackend  # noqa: E402
from moteseal.peer.delivery import _DDL, Inbox, ReadingStore  # noqa: E402
from moteseal.peer.listen import PeerListener  # noqa: E402
from moteseal.sim.simulate import encode_reading  # noqa: E402
from tests.pair import Pair  # noqa: E402

PAYLOAD_BYTES = 64
_NONCE = struct.Struct("<4xQ").pack


class NullLink:
    """Stands in for the hub's MQTT link: counts what would be published."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, data: bytes) -> None:
        self.sent += 1


def framed_reading(seq: int) -> bytes:
    """A delivery-framed reading (device/delivery.py), 64 bytes in all."""
    body = encode_reading(seq, 21.5, 40.0, 3000)
    head = struct.pack(">BIIB", 1, 1, seq, 0)
    return (head + body + bytes(PAYLOAD_BYTES))[:PAYLOAD_BYTES]


def data_cases(batch: int) -> dict:
    """receive / ingest / floor / noiseprotocol over the same 64-byte readings."""
    opts = {"rekey_interval": 1 << 30}  # one key throughout: no epoch change mid-batch
    p = Pair(SUITE, **opts)
    p.handshake()
    q = Pair(SUITE, **opts)  # a second hub for the listener (its own windows)
    q.handshake()
    listener = PeerListener(q.peer, NullLink(), lambda r: None, inbox=Inbox(ReadingStore(":memory:")))
    tr = p.peer._sessions[b"sensor-1"][0][1]
    ciphers = {b"sensor-1": ChaCha20Poly1305(tr._r_key)}
    loads = cbor2.loads
    ni, nr = pair_theirs(*p.static, p.psk)
    pt = os.urandom(PAYLOAD_BYTES)
    state = {"seq": 0}

    def receive() -> float:
        if p.device.transport.send_nonce + batch > 0xFFFF:
            p.handshake()  # nonces below 2^16, as in a session's first 45 days at 1/min
            tr = p.peer._sessions[b"sensor-1"][0][1]
            ciphers[b"sensor-1"] = ChaCha20Poly1305(tr._r_key)
        envs = [p.device.send(pt) for _ in range(batch)]
        recv = p.peer.receive

        def run() -> int:
            for e in envs:
                recv(e, 1.0)
            return len(envs)
        state["floor"] = envs  # the floor reads the very same bytes
        return batch_rate(run, CPU)

    def floor() -> float:
        envs = state.get("floor") or [p.device.send(pt) for _ in range(batch)]

        def run() -> int:
            for data in envs:
                a = loads(data)
                ct = a[5]
                ciphers[a[1]].decrypt(_NONCE(a[4]), ct, data[:len(data) - len(ct)])
            return len(envs)
        return batch_rate(run, CPU)

    def ingest() -> float:
        if q.device.transport.send_nonce + batch > 0xFFFF:
            q.handshake()
        seq0 = state["seq"]
        envs = [q.device.send(framed_reading(seq0 + i)) for i in range(batch)]
        state["seq"] = seq0 + batch
        handle = listener.handle

        def run() -> int:
            for e in envs:
                handle(e)
            return len(envs)
        return batch_rate(run, CPU)

    def noiseprotocol() -> float:
        msgs = [ni.encrypt(pt) for _ in range(batch)]
        dec = nr.decrypt

        def run() -> int:
            for m in msgs:
                dec(m)
            return len(msgs)
        return batch_rate(run, CPU)

    return {"receive": receive, "floor": floor, "ingest": ingest, "noiseprotocol": noiseprotocol}


def handshake_cases(batch: int) -> dict:
    b = NaclBackend()
    priv, pub = b.generate_keypair()
    psk = os.urandom(32)
    out = ffi.new("unsigned char[32]")
    # The hub side: message 1s from devices provisioned on one hub.
    p = Pair(SUITE)
    store = NonpersistingCounterStore()
    device = DeviceSession(p.backend, b"sensor-1", b"hub", p.static[1], p.psk,
                           Msg1Counter(store), suite=SUITE)
    hpriv = p.static[0]

    def both() -> float:
        def run() -> int:
            for _ in range(batch):
                pair_ours(b, priv, pub, psk)
            return batch
        return batch_rate(run, CPU)

    def bound() -> float:
        def run() -> int:
            for _ in range(batch):
                lib.crypto_scalarmult_base(out, priv)
                lib.crypto_scalarmult_base(out, priv)
                for _ in range(4):
                    lib.crypto_scalarmult(out, priv, pub)
            return batch
        return batch_rate(run, CPU)

    pre = hs_floor.prefix(pub, psk)

    def minimal() -> float:
        def run() -> int:
            for _ in range(batch):
                hs_floor.both_sides(priv, pub, pre)
            return batch
        return batch_rate(run, CPU)

    def theirs() -> float:
        def run() -> int:
            for _ in range(batch):
                pair_theirs(priv, pub, psk)
            return batch
        return batch_rate(run, CPU)

    def hub() -> float:
        msgs = [device.handshake(b"") for _ in range(batch)]
        recv = p.peer.receive

        def run() -> int:
            for m in msgs:
                recv(m, 1.0)
            return len(msgs)
        return batch_rate(run, CPU)

    def hub_bound() -> float:
        def run() -> int:
            for _ in range(batch):
                lib.crypto_scalarmult_base(out, hpriv)
                lib.crypto_scalarmult(out, hpriv, pub)
                lib.crypto_scalarmult(out, hpriv, pub)
            return batch
        return batch_rate(run, CPU)

    return {"both sides": both, "bound": bound, "minimal": minimal, "noiseprotocol": theirs,
            "hub side": hub, "hub bound": hub_bound}


def store_cases(batch: int, group: int = 32) -> dict:
    """ReadingStore.deliver per reading, and the same rows ``group`` to a
    transaction (same schema, same pragmas), both on files in one directory."""
    work = tempfile.mkdtemp(prefix="moteseal-bench-store-")
    store = ReadingStore(os.path.join(work, "each.db"))
    db = sqlite3.connect(os.path.join(work, "group.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_DDL)
    body = framed_reading(0)[10:]
    seq = {"each": 0, "group": 0}

    def each() -> float:
        s0 = seq["each"]
        seq["each"] += batch

        def run() -> int:
            for i in range(s0, s0 + batch):
                store.deliver("sensor-1", 1, i, body, 0)
            return batch
        return batch_rate(run)

    def grouped() -> float:
        s0 = seq["group"]
        seq["group"] += batch

        def run() -> int:
            for g in range(s0, s0 + batch, group):
                db.execute("BEGIN IMMEDIATE")
                for i in range(g, min(g + group, s0 + batch)):
                    db.execute("INSERT INTO readings (device, boot, seq, received_at, body) "
                               "VALUES (?, ?, ?, ?, ?)", ("sensor-1", 1, i, time.time(), body))
                    db.execute("INSERT INTO delivery (device, boot, seq, lost) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT (device) DO UPDATE SET boot = excluded.boot, "
                               "seq = excluded.seq, lost = delivery.lost + excluded.lost",
                               ("sensor-1", 1, i, 0))
                db.execute("COMMIT")
            return batch
        return batch_rate(run)

    return {"each": each, f"group of {group}": grouped}


def memory_per_session(n: int) -> tuple[float, float]:
    """(bytes per idle confirmed session, bytes per handshake-only session)."""
    b = NaclBackend()
    static = b.generate_keypair()
    d = NonpersistingDirectory([static])
    ids = [b"dev-%06d" % i for i in range(n)]
    psks = {i: os.urandom(32) for i in ids}
    for i in ids:
        d.add(i, psks[i])
    peer = PeerSessions(b, b"hub", d, suite=SUITE)
    devices = [DeviceSession(b, i, b"hub", static[1], psks[i],
                             Msg1Counter(NonpersistingCounterStore()), suite=SUITE) for i in ids]
    hs1 = [dv.handshake(b"") for dv in devices]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    replies = [peer.receive(m, 1.0).reply for m in hs1]
    del hs1
    unconfirmed = tracemalloc.get_traced_memory()[0] - base
    for dv, r in zip(devices, replies):
        dv.receive(r)
    del replies
    tracemalloc.stop()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for dv in devices:
        peer.receive(dv.send(bytes(PAYLOAD_BYTES)), 1.0)  # confirms: held like a live device
    grew = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return (unconfirmed + grew) / n, unconfirmed / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smaller batches")
    ap.add_argument("--store", action="store_true", help="also time the durable store")
    ap.add_argument("--memory", type=int, default=0, metavar="N",
                    help="also measure heap bytes per idle session with N devices")
    a = ap.parse_args()
    batch = 3000 if a.quick else 10000
    print(f"hub ingest benchmark ({SUITE}), Python {sys.version.split()[0]}, "
          f"{a.rounds} interleaved rounds, CPU time")
    print()
    runs = interleave(data_cases(batch), a.rounds)
    print(f"data envelope, {PAYLOAD_BYTES}-byte plaintext, per core")
    for name in ("receive", "ingest", "floor", "noiseprotocol"):
        print(f"  {name:<14}{fmt_rate(runs[name])}")
    rf = ratios(runs["receive"], runs["floor"])
    print(f"  receive / floor          {fmt_ratio(rf)}   goal >= 0.70: "
          f"{'met' if sorted(rf)[len(rf) // 2] >= 0.7 else 'NOT met'}")
    print(f"  receive / noiseprotocol  {fmt_ratio(ratios(runs['receive'], runs['noiseprotocol']))}")
    print(f"  ingest / floor           {fmt_ratio(ratios(runs['ingest'], runs['floor']))}"
          f"   (store + ack + report included)")
    print()
    hb = 60 if a.quick else 200
    runs = interleave(handshake_cases(hb), a.rounds)
    print("NKpsk0 handshakes, per core")
    for name in ("both sides", "bound", "minimal", "noiseprotocol", "hub side", "hub bound"):
        print(f"  {name:<14}{fmt_rate(runs[name])}")
    rb = ratios(runs["both sides"], runs["bound"])
    print(f"  both sides / bound (6 DH)     {fmt_ratio(rb)}   goal >= 0.75: "
          f"{'met' if sorted(rb)[len(rb) // 2] >= 0.75 else 'NOT met'}")
    print(f"  minimal / bound               {fmt_ratio(ratios(runs['minimal'], runs['bound']))}"
          "   (the most a Python handshake reaches: bench/hs_floor.py)")
    print(f"  both sides / minimal          {fmt_ratio(ratios(runs['both sides'], runs['minimal']))}")
    print(f"  both sides / noiseprotocol    {fmt_ratio(ratios(runs['both sides'], runs['noiseprotocol']))}")
    print(f"  hub side / hub bound (3 DH)   {fmt_ratio(ratios(runs['hub side'], runs['hub bound']))}")
    if a.store:
        runs = interleave(store_cases(100 if a.quick else 300), a.rounds)
        print()
        print("durable store (SQLite file, WAL, synchronous=FULL), readings/s, wall time")
        for name, v in runs.items():
            print(f"  {name:<14}{fmt_rate(v)}")
        names = list(runs)
        print(f"  group / each             {fmt_ratio(ratios(runs[names[1]], runs[names[0]]))}")
    if a.memory:
        per, unconf = memory_per_session(a.memory)
        print()
        print(f"heap per idle device session ({a.memory} devices, tracemalloc): {per:.0f} B "
              f"(made by the handshake: {unconf:.0f} B; confirming adds {per - unconf:.0f} B)")


if __name__ == "__main__":
    main()
