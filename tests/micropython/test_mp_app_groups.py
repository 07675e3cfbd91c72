"""The device application's group glue (``micropython_port/app_groups.py``)
on the MicroPython unix port, fed by a CPython ``GroupHub``: key messages
are taken first and ask for a subscription, a group message reaches
``on_group`` once, a replay and a forgery are refused by error class, a
stale key message is counted and goes nowhere else; the group receive
path, hook included, runs between ``heap_lock()`` and ``heap_unlock()``."""

from __future__ import annotations

import json

import pytest

from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.peer.group import GroupHub
from tests.mp_helpers import run_mp_json

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(120)]

DRIVER = """
import gc, json, micropython
from binascii import unhexlify
from micropython_port.backend import MicroBackend
from micropython_port.app_groups import AppGroups

class Dev:  # what AppGroups uses of a Device
    def __init__(self):
        self.counts = {"group": 0, "group_refused": 0, "command_errors": 0}
        self._buf = bytearray(92)
        self.events = []
        self.on_group = None
        self.link = None  # a UART device: no group topics
    def log(self, ev, detail):
        self.events.append((ev, detail))

dev = Dev()
got = bytearray(64)
n_got = [0, 0]
def on_group(gid, buf, n):  # copies without allocating
    for i in range(n):
        got[i] = buf[i]
    n_got[0] = n
    n_got[1] += 1
dev.on_group = on_group
g = AppGroups(dev, MicroBackend(), b"hub1", 64, 16)
key, stale, m1, forged = [bytearray(unhexlify(h)) for h in %s]
out = {"not_key": g.take(bytearray(b"\\x01reading"), 8)}
out["key"] = g.take(key, len(key))
out["pending"] = g.pending
g.subscribe()  # no MQTT client: nothing to do, and no longer pending
out["pending_after"] = g.pending
gc.collect()
micropython.heap_lock()
try:
    g.receive(m1, len(m1))
finally:
    micropython.heap_unlock()
out["payload"] = bytes(got[:n_got[0]]).decode()
g.receive(m1, len(m1))  # a replay
g.receive(forged, len(forged))
out["stale_taken"] = g.take(stale, len(stale))
out["calls"] = n_got[1]
out["counts"] = dev.counts
out["events"] = dev.events
print(json.dumps(out))
"""


def test_the_app_takes_keys_first_and_hands_each_verified_group_message_over_once() -> None:
    hub = GroupHub(NaclBackend(), b"hub1")
    stale = hub.create(b"valves", [b"mp-0", b"dev-1"])[b"mp-0"]
    key = hub.rotate(b"valves")[b"mp-0"]
    m1 = hub.seal(b"valves", b"valve=closed")
    forged = bytearray(hub.seal(b"valves", b"valve=open"))
    forged[-18] ^= 1  # the ciphertext's last byte (before the MAC list's head and 2 MACs)
    msgs = json.dumps([key.hex(), stale.hex(), m1.hex(), bytes(forged).hex()])
    out = run_mp_json(DRIVER % msgs)
    assert out["not_key"] is False and out["key"] is True
    assert out["pending"] is True and out["pending_after"] is False
    assert out["payload"] == "valve=closed" and out["calls"] == 1
    assert out["stale_taken"] is True  # consumed: never handed on as a command
    assert out["counts"] == {"group": 1, "group_refused": 3, "command_errors": 0}
    assert out["events"] == [["group_refused", "ReplayError"], ["group_refused", "AuthError"]]
