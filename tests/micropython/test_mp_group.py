"""Group broadcast across runtimes: three MicroPython devices (the unix port,
``device/group.py`` over ``MicroBackend``) and ten CPython devices in one
group, each with its pairwise Noise session to a CPython hub; envelopes
and group messages go over pipes. The MicroPython members open group
messages between ``heap_lock()`` and ``heap_unlock()``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device.session import EV_DATA
from moteseal.peer.group import distribute
from tests.host.test_group_broadcast import GID, Fleet, forge
from tests.micropython.test_mp_device_core import MpPipe

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(300)]

MP_IDS = [b"mp-0", b"mp-1", b"mp-2"]

DRIVER = """
import sys, gc, json, micropython
from binascii import hexlify, unhexlify
from micropython_port.backend import MicroBackend
from device.session import DeviceSession, EV_DATA
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.group import Groups, group_limit
pub = unhexlify(sys.argv[1])
psks = [unhexlify(sys.argv[2 + i]) for i in range(3)]
be = MicroBackend()
devs = [DeviceSession(be, b"mp-%d" % i, b"hub", pub, psks[i],
                      Msg1Counter(NonpersistingCounterStore())) for i in range(3)]
groups = [Groups(be, b"hub", max_members=16) for i in range(3)]
for d in devs:
    print(hexlify(d.handshake(b"", 0)).decode())
for d in devs:
    d.receive(unhexlify(sys.stdin.readline().strip()), 0)
print("ready")
buf = bytearray(groups[0].limit)
outs = [bytearray(64) for _ in range(3)]
res = [0, 0, 0]
def locked(n):
    for i in range(3):
        res[i] = groups[i].receive_into(buf, n, outs[i])
while True:
    line = sys.stdin.readline().strip()
    if line == "quit":
        break
    cmd, rest = line.split(" ", 1)
    if cmd == "pw":
        i, h = rest.split(" ")
        i = int(i)
        ev, pt = devs[i].receive(unhexlify(h), 1)
        print(json.dumps([ev, groups[i].take(pt, len(pt))]))
        continue
    data = unhexlify(rest)
    n = len(data)
    buf[:n] = data
    if cmd == "lock":
        gc.collect()
        micropython.heap_lock()
        try:
            locked(n)
        finally:
            micropython.heap_unlock()
        print(json.dumps([hexlify(outs[i][:res[i]]).decode() for i in range(3)]))
        continue
    got = []
    for i in range(3):
        try:
            k = groups[i].receive_into(buf, n, outs[i])
            got.append(hexlify(outs[i][:k]).decode())
        except Exception as e:
            got.append(type(e).__name__)
    print(json.dumps(got))
"""


class MpMembers:
    def __init__(self, fleet: Fleet, tmp_path: Path) -> None:
        self.fleet = fleet
        psks = []
        for d in MP_IDS:
            psk = fleet.backend.random_bytes(32)
            fleet.directory.add(d, psk)
            psks.append(psk.hex())
        self.pipe = MpPipe(DRIVER, tmp_path, [fleet.static[1].hex(), *psks])
        hs1 = [bytes.fromhex(self.pipe.recv()) for _ in MP_IDS]
        for h in hs1:
            self.pipe.send(fleet.peer.receive(h).reply.hex())
        assert self.pipe.recv() == "ready"

    def pairwise(self, i: int, env: bytes) -> None:
        self.pipe.send(f"pw {i} {env.hex()}")
        assert json.loads(self.pipe.recv()) == [EV_DATA, True]

    def distribute(self, msgs: dict[bytes, bytes], asleep=()) -> None:
        cpy = {d: m for d, m in msgs.items() if d not in MP_IDS}
        self.fleet.distribute(cpy, asleep)
        sent, pending = distribute(self.fleet.peer, {d: m for d, m in msgs.items()
                                                     if d in MP_IDS and d not in asleep})
        assert pending == []
        for d, env in sent.items():
            self.pairwise(MP_IDS.index(d), env)

    def receive(self, msg: bytes, locked: bool = False) -> list:
        self.pipe.send(("lock " if locked else "grp ") + msg.hex())
        return [bytes.fromhex(x) if x[0].islower() or x[0].isdigit() or not x else x
                for x in json.loads(self.pipe.recv())]


def test_three_micropython_and_ten_cpython_members_share_one_group(tmp_path: Path) -> None:
    fleet = Fleet(10)
    for d in fleet.ids:
        fleet.handshake(d)
    mp = MpMembers(fleet, tmp_path)
    try:
        mp.distribute(fleet.hub.create(GID, fleet.ids + MP_IDS))
        # One publish for thirteen devices; the MicroPython side under heap_lock.
        m1 = fleet.hub.seal(GID, b"valve=closed")
        assert mp.receive(m1, locked=True) == [b"valve=closed"] * 3
        assert set(fleet.receive_all(m1).values()) == {b"valve=closed"}
        # A member's forgery and a replay are refused on MicroPython too.
        forged = forge(fleet, b"dev-07", b"valve=open")  # its own MAC in all 13 slots
        assert mp.receive(forged) == ["AuthError"] * 3
        assert fleet.receive(b"dev-00", forged) == "AuthError"
        assert mp.receive(m1) == ["ReplayError"] * 3
        # mp-2 is removed and keeps its old keys (never reads its leave message).
        mp.distribute({d: m for d, m in fleet.hub.remove(GID, b"mp-2").items() if d != b"mp-2"})
        m2 = fleet.hub.seal(GID, b"after removal")
        got = mp.receive(m2)
        assert got[:2] == [b"after removal"] * 2 and got[2] == "DecodeError"
        assert set(fleet.receive_all(m2).values()) == {b"after removal"}
        # mp-1 sleeps through a rotation, then catches up when it wakes.
        mp.distribute(fleet.hub.rotate(GID), asleep={b"mp-1"})
        m3 = fleet.hub.seal(GID, b"while mp-1 slept")
        got = mp.receive(m3)
        assert got[0] == b"while mp-1 slept" and got[1] == "DecodeError"
        for msg in fleet.hub.catch_up(b"mp-1"):
            mp.pairwise(1, fleet.peer.send(b"mp-1", msg))
        m4 = fleet.hub.seal(GID, b"awake")
        assert mp.receive(m4, locked=False)[:2] == [b"awake"] * 2
        assert mp.receive(m3)[1] == "ReplayError"  # below its catch-up floor
        mp.pipe.send("quit")
    finally:
        mp.pipe.close()
