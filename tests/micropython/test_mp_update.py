"""Transfers in the MicroPython device application (``micropython_port/app.py``
Rule 7, ``micropython_port/update.py``), on the real unix port with real
files: ``Device`` against an in-interpreter ``PeerSessions``, over a link
that keeps what the device sends.

Every transfer frame goes through the device's session: a flipped bit and
a replayed manifest envelope are dropped there (counted as bad envelopes),
before the receiver. A file is installed once; a wrong piece (the hash does
not match), an older version and a truncated transfer (then aborted) are
refused and leave the installed file as it was. A "reboot" (a new Device
over the same files) resumes from what the part file holds. The heap a
piece costs is measured.
"""

from __future__ import annotations

import pytest

from moteseal.hub import transfer as H
from tests.mp_helpers import MP_PEER, run_mp_json

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(120)]

SCRIPT = """
import sys, json, gc, hashlib
from micropython_port.app import Device
from device import transfer as T

""" + MP_PEER + """

class Link:
    def __init__(self):
        self.out = []

    def send(self, buf, n):
        self.out.append(bytes(buf[:n]))

    def poll(self, timeout_ms):
        pass


def boot():
    dev = Device((b"mote-1", b"hub", [pub], psk, SUITE, {"kind": "mqtt", "port": 1}),
                 "ctr", None, None, None, None, 4)
    dev.link = Link()
    dev.step()
    r = peer.receive(dev.link.out.pop())
    m2 = bytearray(r.reply)
    dev._envelope(m2, len(m2))
    dev.link.out.clear()
    dev.step()  # a reading on the new session: the peer sends on it from now on
    for e in dev.link.out:
        peer.receive(e)
    dev.link.out.clear()
    return dev


def down(dev, frame):
    env = bytearray(peer.send(b"mote-1", bytes(frame)))
    dev._envelope(env, len(env))
    return env


def statuses(dev):
    dev.resend()
    got = []
    for e in dev.link.out:
        p = peer.receive(e).payload
        if p and p[0] == 18:
            got.append(list(T.parse_status(p, len(p))))
    dev.link.out.clear()
    return got


def pieces(tid, data, start=0, stop=None):
    off = start
    stop = len(data) if stop is None else stop
    while off < stop:
        k = min(65, len(data) - off)
        yield off, bytes([17]) + tid.to_bytes(4, "big") + off.to_bytes(4, "big") + data[off:off + k]
        off += k


def send_all(dev, tid, data, version, name=b"cfg.bin", wrong_at=-1, stop=None):
    sha = hashlib.sha256(data).digest()
    down(dev, T.encode_manifest(tid, version, len(data), 0, sha, name))
    seen = statuses(dev)
    if seen[-1][1] != 0:
        return seen
    for off, f in pieces(tid, data, 0, stop):
        if off == wrong_at:
            f = f[:-1] + bytes([f[-1] ^ 0xFF])
        down(dev, f)
        seen += statuses(dev)
    return seen


out = {}
dev = boot()
v1 = bytes((i * 13) & 0xFF for i in range(3000))
s = send_all(dev, 1, v1, 5)
out["install"] = s[-1]
out["file_ok"] = open("cfg.bin", "rb").read() == v1

# The heap a piece costs (gc off, so nothing is collected in between).
v2 = bytes((i * 7) & 0xFF for i in range(3000))
sha2 = hashlib.sha256(v2).digest()
down(dev, T.encode_manifest(2, 6, len(v2), 0, sha2, b"cfg.bin"))
statuses(dev)
envs = [bytearray(peer.send(b"mote-1", f)) for _, f in pieces(2, v2, 0, 65 * 20)]
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
for e in envs:
    dev._envelope(e, len(e))
a1 = gc.mem_alloc()
gc.enable()
out["per_piece"] = (a1 - a0) // len(envs)
gc.collect()
out["mem_free_during"] = gc.mem_free()
out["mem_alloc_during"] = gc.mem_alloc()

# A flipped bit and a replayed envelope: dropped by the session.
bad0 = dev.counts["bad_envelopes"]
held = dev.xfer.offset
e = bytearray(peer.send(b"mote-1", list(pieces(2, v2, held, held + 1))[0][1]))
e[-20] ^= 1
dev._envelope(e, len(e))
replay = bytearray(envs[3])
dev._envelope(replay, len(replay))
out["dropped"] = [dev.counts["bad_envelopes"] - bad0, dev.xfer.offset == held]

# A reboot: a new Device over the same files resumes at what .part holds.
dev = boot()
down(dev, T.encode_manifest(2, 6, len(v2), 0, sha2, b"cfg.bin"))
st = statuses(dev)
out["resume"] = st[-1]
for off, f in pieces(2, v2, st[-1][3]):
    down(dev, f)
    st += statuses(dev)
out["resumed_install"] = st[-1]
out["v2_ok"] = open("cfg.bin", "rb").read() == v2

# Refusals: a wrong piece (hash), an older version, a replayed manifest
# under a new id (the same version), a truncated transfer then aborted.
v3 = bytes(2000)
out["hash"] = send_all(dev, 3, v3, 7, wrong_at=650)[-1]
out["older"] = send_all(dev, 4, v3, 5)[-1]
out["same"] = send_all(dev, 5, v2, 6)[-1]
send_all(dev, 6, v3, 8, stop=1000)
import os
out["part_len"] = os.stat(".part")[6]
down(dev, bytes([19]) + (6).to_bytes(4, "big"))
out["abort"] = statuses(dev)[-1]
out["after"] = [open("cfg.bin", "rb").read() == v2, sorted(n for n in os.listdir(".") if n[0] == ".")]
out["xstate"] = json.load(open(".xstate"))
print(json.dumps(out))
"""


def test_transfers_on_the_micropython_device_install_resume_and_refuse(tmp_path) -> None:
    r = run_mp_json(SCRIPT, heapsize="256k", cwd=tmp_path, timeout=100)
    assert r["install"][1] == H.ST_INSTALLED and r["file_ok"]
    assert r["dropped"] == [2, True]
    assert r["resume"][1:3] == [H.ST_RECEIVING, H.R_RESUME] and r["resume"][3] == 65 * 20
    assert r["resumed_install"][1] == H.ST_INSTALLED and r["v2_ok"]
    assert r["hash"][1:3] == [H.ST_REFUSED, H.R_HASH]
    assert r["older"][1:3] == [H.ST_REFUSED, H.R_OLD_VERSION]
    assert r["same"][1:3] == [H.ST_REFUSED, H.R_OLD_VERSION]
    assert r["part_len"] == 1040
    assert r["abort"][1] == H.ST_ABORTED
    assert r["after"] == [True, [".xstate"]]  # installed file untouched, no part left
    assert r["xstate"]["v"] == {"cfg.bin": 6}
    # The heap figure (docs/micropython.md): what one piece allocates on
    # its way through session, receiver and file.
    print("per piece", r["per_piece"], "bytes; mem_free", r["mem_free_during"])
    assert r["per_piece"] < 256


DAMAGED = """
import json, os
from device import transfer as T
from micropython_port.update import receiver
man = T.encode_manifest(3, 1, 100, 0, bytes(32), b"f.bin")
with open(".xfer", "wb") as f:
    f.write(man)
os.mkdir(".part")  # unreadable as a file: flash that fails
rx = receiver(65)
out = [rx.man is None]
os.rmdir(".part")
with open(".xfer", "wb") as f:
    f.write(b"\\x10garbage")  # a damaged manifest
rx = receiver(65)
out.append(rx.man is None)
out.append(sorted(n for n in os.listdir(".") if n[0] == "."))
print(json.dumps(out))
"""


def test_a_damaged_transfer_on_flash_is_dropped_not_raised(tmp_path) -> None:
    """A device whose transfer state cannot be read starts without it (the
    hub's next manifest starts the transfer again) instead of failing in the
    link's receive callback."""
    r = run_mp_json(DAMAGED, cwd=tmp_path)
    assert r[0] is True and r[1] is True
    assert ".xfer" not in r[2]
