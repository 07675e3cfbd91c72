"""Retention in the MicroPython device application (``micropython_port/app.py``
Rule 5, docs/protocol.md "Delivery"), on the real unix port without a
broker: ``Device`` with its ``Outbox`` against an in-interpreter
``PeerSessions``, over a link that only copies the envelope it is given.

With the heap locked (``micropython.heap_lock``: any allocation raises
MemoryError), the device makes, frames, retains, seals and sends readings,
takes acknowledgements (never as commands), resends what is retained and
evicts from a full outbox; afterwards the peer opens the last envelope and
finds the framed reading the outbox says it is.
"""

from __future__ import annotations

import pytest

from tests.mp_helpers import MP_PEER, run_mp_json

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(120)]

RETAINED_LOCKED = """
import sys, json, micropython
from micropython_port.app import Device
from device.delivery import ACK_BYTES, HEAD_BYTES, encode_ack_into

""" + MP_PEER + """

class Link:
    # The device's link: keeps a copy of the last envelope, allocating nothing.
    def __init__(self):
        self.buf = bytearray(256)
        self.n = 0
        self.sent = 0

    def send(self, buf, n):
        for i in range(n):
            self.buf[i] = buf[i]
        self.n = n
        self.sent += 1

    def poll(self, timeout_ms):
        pass


# A bundle with an MQTT link that is never opened; retain 4 readings.
dev = Device((b"mote-1", b"hub", [pub], psk, SUITE, {"kind": "mqtt", "port": 1}),
             sys.argv[1], None, None, None, None, 4)
link = Link()
dev.link = link
box = dev.box

# The handshake (allocates: Noise objects, message 1) carries reading 0.
assert dev.step()
m2 = peer.receive(bytes(link.buf[:link.n])).reply
dev._envelope(bytearray(m2), len(m2))
assert dev.session.transport is not None and dev._again


def ack(seq):
    a = bytearray(ACK_BYTES)
    encode_ack_into(a, box.boot, seq)
    return bytearray(peer.send(b"mote-1", bytes(a)))


acks = [ack(0)] + [ack(i - 3) for i in range(1, 40) if i % 6 == 0]
dev.resend()  # reading 0 again, as after every handshake
dev._envelope(acks[0], len(acks[0]))  # the first decode sizes the envelope's state
ok = 0
fed = 1
control = None  # globals exist before the lock: a new one would grow the dict


def locked():
    # Readings 1..39; an acknowledgement every 6 and a resend every 5, so the
    # 4-slot outbox also evicts.
    global ok, fed
    for i in range(1, 40):
        if dev.step():
            ok += 1
        if i % 6 == 0:
            e = acks[fed]
            dev._envelope(e, len(e))
            fed += 1
        if i % 5 == 0:
            dev._again = True
            dev.resend()


micropython.heap_lock()
try:
    locked()
    try:
        bytearray(8)  # control: the lock is on
        control = False
    except MemoryError:
        control = True
finally:
    micropython.heap_unlock()

got = peer.receive(bytes(link.buf[:link.n]))
p = got.payload
seq = int.from_bytes(p[5:9], "big")
print(json.dumps({"ok": ok, "fed": fed, "control": control, "counts": dev.counts,
                  "first": box.first, "next": box.next_seq, "boot": box.boot,
                  "last": [p[0], int.from_bytes(p[1:5], "big"), seq, p[9]],
                  "body_len": len(p) - HEAD_BYTES}))
"""


def test_retained_readings_acks_resends_and_evictions_allocate_nothing(tmp_path) -> None:
    res = run_mp_json(RETAINED_LOCKED, heapsize="256k", args=[str(tmp_path / "ctr")])
    assert res["control"] is True  # the lock really refuses allocations
    c = res["counts"]
    assert res["ok"] == 39 and c["readings"] == 40 and c["data"] == 39
    # Acknowledgements are taken by the outbox, never handed on as commands.
    assert res["fed"] == 7 and c["acks"] == 7 and c["replies"] == 0
    assert c["resent"] > 0 and c["evicted"] > 0
    assert 0 < res["next"] - res["first"] <= 4 and res["next"] == 40
    # The last envelope (a resend at i = 35, or reading 39 itself) is a
    # framed reading of this run, its ``back`` the distance to the oldest
    # retained reading.
    kind, boot, seq, back = res["last"]
    assert kind == 0x01 and boot == res["boot"] and res["body_len"] > 0
    assert res["first"] <= seq < 40 and back == seq - res["first"]


COMMANDS = RETAINED_LOCKED.split("acks = [ack(0)]")[0] + """
got_cmds = []
dev.on_command = lambda buf, n: got_cmds.append(bytes(buf[:n]))
dev.resend()  # reading 0 again, as after every handshake
out = []


def command(cid, text):
    f = bytearray(5 + len(text))
    f[0] = 2
    f[1:5] = cid.to_bytes(4, "big")
    f[5:] = text
    e = bytearray(peer.send(b"mote-1", bytes(f)))
    dev._envelope(e, len(e))
    dev.resend()  # run()'s loop: the answer goes out here
    out.append(peer.receive(bytes(link.buf[:link.n])).payload)


command(7, b"interval=30")
first = dev.interval_ms
dev.interval_ms = 1234
command(7, b"interval=30")  # the hub sends it again: answered, not acted on twice
command(8, b"lamp=on")      # not built in: the user's on_command
print(json.dumps({"first": first, "after_resend": dev.interval_ms, "user": [c.decode() for c in got_cmds],
                  "answers": [list(p) for p in out], "replies": dev.counts["replies"]}))
"""


def test_a_command_frame_is_acted_on_once_per_id_and_answered(tmp_path) -> None:
    res = run_mp_json(COMMANDS, heapsize="256k", args=[str(tmp_path / "ctr")])
    assert res["first"] == 30000 and res["after_resend"] == 1234
    assert res["user"] == ["lamp=on"] and res["replies"] == 2
    assert res["answers"] == [[3, 0, 0, 0, 7], [3, 0, 0, 0, 7], [3, 0, 0, 0, 8]]
