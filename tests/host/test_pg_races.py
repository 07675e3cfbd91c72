"""Two processes race on one PostgreSQL database, as two hub workers that
both believe they own a device do (a worker that lost its lease and has
not noticed yet): on the same device's message-1 counter, and on the same
device's readings and acknowledgement high-water mark. Never both win.

The DSN (it holds the password) reaches the child processes in their
environment, never in argv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moteseal.keys.keyfile import generate_keypair, write_key_file

ROOT = Path(__file__).resolve().parents[2]
SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
N = 300

_COUNTER_CHILD = """
import json, os, sys, time
from device.errors import StorageError
from moteseal.keys.registry_pg import PgRegistry
reg = PgRegistry(os.environ["RACE_DSN"])
go = os.environ["RACE_GO"]
while not os.path.exists(go):
    time.sleep(0.001)
won = []
for v in range(int(os.environ["RACE_N"])):
    try:
        reg.counter_set(b"s1", v)
        won.append(v)
    except StorageError:
        pass
reg.close()
print(json.dumps(won))
"""

_ACK_CHILD = """
import json, os, time
from device.errors import LocalError
from moteseal.hub.pg_store import PgReadingStore
from moteseal.peer.delivery import Inbox
inbox = Inbox(PgReadingStore(os.environ["RACE_DSN"], worker=os.environ["RACE_NAME"]))
go = os.environ["RACE_GO"]
while not os.path.exists(go):
    time.sleep(0.001)
won, refused = [], 0
for seq in range(int(os.environ["RACE_N"])):
    # a framed reading (device/delivery.py): kind, boot, seq, back=4, body
    payload = bytes([1]) + (1).to_bytes(4, "big") + seq.to_bytes(4, "big") + bytes([4]) + b"r%d" % seq
    try:
        acc = inbox.accept("dev-1", payload)
    except LocalError:  # StoreError: the other process delivered it first
        refused += 1
        continue
    if acc.body is not None:
        won.append(seq)
print(json.dumps({"won": won, "refused": refused}))
"""


def _race(script: str, dsn: str, tmp_path: Path) -> list:
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RACE_DSN=dsn, RACE_GO=str(go), RACE_N=str(N))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(env, RACE_NAME=f"w{i}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        time.sleep(1.0)  # both connected and spinning on the start file
        go.write_text("")
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
            assert dsn not in " ".join(p.args)
            outs.append(json.loads(out))
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_two_processes_never_both_accept_the_same_message1_counter(pg_dsn: str, tmp_path: Path) -> None:
    from moteseal.keys.registry_pg import PgRegistry
    kp = generate_keypair()
    write_key_file(tmp_path / "hub1.key", kp)
    reg = PgRegistry(pg_dsn, create_for_peer=b"hub1")
    try:
        reg.add_peer_key(kp.pub, tmp_path / "hub1.key")
        reg.provision(b"s1", os.urandom(32), SUITE)
        a, b = _race(_COUNTER_CHILD, pg_dsn, tmp_path)
        assert not set(a) & set(b), "a counter value accepted twice"
        assert a == sorted(a) and b == sorted(b)
        assert reg.counter_get(b"s1") == max(a + b) == N - 1
    finally:
        reg.close()


def test_two_processes_never_both_deliver_the_same_reading(pg_dsn: str, tmp_path: Path) -> None:
    from moteseal.hub.pg_store import PgReadingStore
    from moteseal.peer.delivery import Inbox
    store = PgReadingStore(pg_dsn, worker="check")
    try:
        a, b = _race(_ACK_CHILD, pg_dsn, tmp_path)
        assert not set(a["won"]) & set(b["won"]), "a reading delivered by both processes"
        # The device resends what was not acknowledged; a third writer with
        # a fresh view fills any gap and refuses every duplicate.
        inbox = Inbox(store)
        for seq in range(N):
            payload = bytes([1]) + (1).to_bytes(4, "big") + seq.to_bytes(4, "big") + bytes([4]) + b"r%d" % seq
            inbox.accept("dev-1", payload)
        seqs = [r[2] for r in store.readings("dev-1")]
        assert sorted(seqs) == list(range(N)), "every reading exactly once"
        assert store.high_water("dev-1")[:2] == (1, N - 1)
        assert len(a["won"]) + len(b["won"]) <= N
    finally:
        store.close()


def test_a_conflicting_batch_writes_nothing_and_the_inbox_rereads_the_store(pg_dsn: str) -> None:
    from device.errors import LocalError
    from moteseal.hub.pg_store import PgReadingStore
    from moteseal.peer.delivery import Inbox

    def reading(seq: int) -> bytes:
        return bytes([1]) + (1).to_bytes(4, "big") + seq.to_bytes(4, "big") + bytes([0]) + b"x"

    s1, s2 = PgReadingStore(pg_dsn, worker="a"), PgReadingStore(pg_dsn, worker="b")
    try:
        stale, fresh = Inbox(s1), Inbox(s2)
        assert stale.accept("d", reading(0)).body == b"x"  # caches (1, 0)
        assert fresh.accept("d", reading(1)).body == b"x"  # the other worker moves on
        with pytest.raises(LocalError, match="another worker"):
            stale.accept_many([("d", reading(1)), ("e", reading(0))])  # stale view: 1 is next
        assert [r[2] for r in s1.readings()] == [0, 1] and s1.readings("e") == []
        dup = stale.accept("d", reading(1))  # re-read from the store: a duplicate, acked
        assert dup.duplicate and dup.ack is not None
        assert stale.accept("d", reading(2)).body == b"x"
    finally:
        s1.close()
        s2.close()
