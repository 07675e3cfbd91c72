"""Padding on MicroPython (device/padding.py, device/session.py Rule 9): a
padding device on the unix port with ``MicroBackend`` talks to a CPython
peer over pipes; its padded send and receive paths run between
``micropython.heap_lock()`` and ``heap_unlock()``, and readings of
different lengths in one bucket leave as envelopes of one length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device.padding import PadPolicy
from device.peer import NonpersistingDirectory, PeerSessions
from device.session import EV_DATA
from moteseal.crypto.backend_nacl import NaclBackend
from tests.micropython.test_mp_device_core import MpPipe

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(300)]

DRIVER = """
import sys, gc, json, micropython
from binascii import hexlify, unhexlify
from micropython_port.backend import MicroBackend
from device.session import DeviceSession
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.padding import PadPolicy, unpad_len
from device.errors import DecodeError
pub, psk = unhexlify(sys.argv[1]), unhexlify(sys.argv[2])
def make():
    return DeviceSession(MicroBackend(), b"mote-1", b"peer", pub, psk,
                         Msg1Counter(NonpersistingCounterStore()), pad=PadPolicy())
spare = make()
hs_lens = [len(spare.handshake(b"")), len(spare.handshake(b"t=21.5C"))]
dev = make()
print(hexlify(dev.handshake(b"t=21.5C", 0)).decode())
ev, first = dev.receive(unhexlify(sys.stdin.readline().strip()), 0)
K = int(sys.stdin.readline())
envs = [bytearray(unhexlify(sys.stdin.readline().strip())) for _ in range(K)]
lens = [len(e) for e in envs]
outs = [bytearray(64) for _ in range(K)]
sent = [bytearray(128) for _ in range(K)]
slen = [0] * K
evs = [0] * K
plen = [0] * K
src = bytearray(b"reading-000000000000000000000")
def locked_path():
    for i in range(K):
        evs[i] = dev.receive_into(envs[i], lens[i], outs[i], 1)
        plen[i] = dev.last_len
        slen[i] = dev.send_into(src, 1 + i, sent[i], 1)  # 1..K bytes: one bucket
gc.collect()
micropython.heap_lock()
try:
    locked_path()
finally:
    micropython.heap_unlock()
try:
    unpad_len(b"t=21" + bytes(28), 0, 32)
    bad = "accepted"
except DecodeError as e:
    bad = str(e)
print(json.dumps([ev, hs_lens, evs, [hexlify(outs[i][:plen[i]]).decode() for i in range(K)],
                  [hexlify(sent[i][:slen[i]]).decode() for i in range(K)], bad]))
"""


def test_micropython_padded_readings_have_one_length_and_the_path_allocates_nothing(
        tmp_path: Path) -> None:
    backend = NaclBackend()
    priv, pub = backend.generate_keypair()
    psk = backend.random_bytes(32)
    directory = NonpersistingDirectory([(priv, pub)])
    directory.add(b"mote-1", psk, pad=PadPolicy())
    peer = PeerSessions(backend, b"peer", directory)
    mp = MpPipe(DRIVER, tmp_path, [pub.hex(), psk.hex()])
    try:
        got = peer.receive(bytes.fromhex(mp.recv()))
        assert (got.kind, got.payload) == ("hs1", b"t=21.5C")
        mp.send(got.reply.hex())
        cmds = [b"c" * (i + 1) for i in range(20)]  # 1..20 bytes: one bucket
        down = [peer.send(b"mote-1", c) for c in cmds]
        assert len({len(d) for d in down}) == 1
        mp.send("20")
        for d in down:
            mp.send(d.hex())
        ev, hs_lens, evs, plain, sent, bad = json.loads(mp.recv())
    finally:
        mp.close()
    assert ev == 1 and hs_lens[0] == hs_lens[1]
    assert evs == [EV_DATA] * 20
    assert [bytes.fromhex(p) for p in plain] == cmds
    assert len({len(s) for s in sent}) == 1
    src = b"reading-000000000000000000000"
    assert [peer.receive(bytes.fromhex(s)).payload for s in sent] == \
        [src[:i + 1] for i in range(20)]
    assert bad == "malformed padding"
