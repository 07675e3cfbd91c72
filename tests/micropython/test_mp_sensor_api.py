"""The device application API on the real MicroPython unix port: user code
adds fields through ``read(w)`` (``device.reading.ReadingWriter``) and gets
commands at ``on_command(buf, n)``, without editing the library.

- the writer alone allocates nothing for int, bool, byte-string and ASCII
  text fields (``micropython.heap_lock``);
- the whole device, with a ``read`` of int fields, sends 50 readings from
  the reading to the socket and back through the PUBACK with the heap
  locked, and the CPython peer shows every field;
- a command other than ``interval=`` reaches ``on_command``, and a
  ``read`` that raises skips one reading instead of stopping the device.
"""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import pytest

from tests.micropython.test_mp_device import (  # noqa: F401  (fixtures)
    DEVICE, Fleet, Peer, _mqtt_bundle, fleet, mqtt_setup)
from tests.mp_helpers import mp_binary, run_mp_json
from tests.serial_fixtures import wait_for

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(240)]

WRITER_LOCKED = """
import json, micropython
from device.reading import ReadingWriter
buf = bytearray(96)
w = ReadingWriter(buf)
def fill(k):
    for i in range(k):
        w.begin(0)
        w.int("up", 12)
        w.int("seq", i)
        w.int("t_cC", -2150)
        w.int("p_Pa", 101325)
        w.bool("door", True)
        w.text("st", "ok")
        w.bytes("id", b"\\x01\\x02")
        n = w.end()
    return n
n = fill(1)  # n exists before the lock: a new global would grow the dict
micropython.heap_lock()
try:
    n = fill(100)
finally:
    micropython.heap_unlock()
print(json.dumps(bytes(buf[:n]).hex()))
"""


def test_reading_writer_allocates_nothing_on_micropython() -> None:
    import cbor2
    hexed = run_mp_json(WRITER_LOCKED, heapsize="64k")
    assert cbor2.loads(bytes.fromhex(hexed)) == {"up": 12, "seq": 99, "t_cC": -2150, "p_Pa": 101325,
                                                 "door": True, "st": "ok", "id": b"\x01\x02"}


LOCKED_SENSOR = """
import sys, gc, json, micropython
import micropython_port.main as M
bundle = M.load_bundle(sys.argv[1])
from micropython_port.app import Device
raw = [2150]
def read(w):
    raw[0] += 1
    w.int("t_cC", raw[0])
    w.int("rh_pm", 415)
    w.bool("door", False)
cmds = []
def on_command(buf, n):
    cmds.append(bytes(buf[:n]))
dev = Device(bundle, sys.argv[2], None, None, read, on_command)
dev.interval_ms = 0
dev.link.open()
dev.step()
assert dev.wait_session(10000)
for _ in range(3):
    dev.step()
    dev.link.poll(20)

def locked(k):
    n = 0
    for _ in range(k):
        if dev.step():
            n += 1
        dev.link.poll(0)
    return n

n = 0
gc.collect()
micropython.heap_lock()
try:
    n = locked(50)
finally:
    micropython.heap_unlock()
dev.link.flush(5000)
print(json.dumps({"ready": 1}))
# Commands: the peer sends one after "ready"; poll until it arrives.
import time
t = time.ticks_ms()
while not cmds and time.ticks_diff(time.ticks_ms(), t) < 15000:
    dev.link.poll(50)
print(json.dumps({"locked": n, "counts": dev.counts, "cmds": [c.decode() for c in cmds],
                  "interval_ms": dev.interval_ms}))
"""


def test_device_with_int_fields_allocates_nothing_and_the_peer_shows_them(
        mqtt_setup, fleet, tmp_path) -> None:  # noqa: F811
    broker, peer = mqtt_setup
    flash = fleet.flash("mqtt")
    script = tmp_path / "sensor.py"
    script.write_text(LOCKED_SENSOR)
    proc = subprocess.Popen([mp_binary(), "-X", "heapsize=256k", str(script),
                             str(_mqtt_bundle(fleet, broker)), str(tmp_path / "ctr")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=flash,
                            env={"MICROPYPATH": f"{flash}:.frozen", "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert json.loads(first) == {"ready": 1}, first + proc.stderr.read()
        assert wait_for(lambda: len(peer.telemetry()) == 54, timeout=20)
        # Two commands: the built-in interval one, then the user's.
        peer.link.send(peer.listener.sessions.send(DEVICE.encode(), b"interval_ms=7"))
        peer.link.send(peer.listener.sessions.send(DEVICE.encode(), b"led=on"))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    res = json.loads(out.splitlines()[-1])
    assert res["locked"] == 50 and res["counts"]["data"] == 53
    assert res["cmds"] == ["led=on"] and res["interval_ms"] == 7
    tele = peer.telemetry()
    assert [r["reading"]["seq"] for r in tele] == list(range(54))
    assert [r["reading"]["t_cC"] for r in tele] == list(range(2151, 2205))
    assert all(r["reading"]["rh_pm"] == 415 and r["reading"]["door"] is False for r in tele)
    assert list(tele[0]["reading"]) == ["up", "seq", "t_cC", "rh_pm", "door"]


FAILING_READ = """
import sys, json
import micropython_port.main as M
calls = [0]
def read(w):
    calls[0] += 1
    if calls[0] == 2:
        raise OSError(19)  # an I2C sensor that did not answer
    if calls[0] == 3:
        w.bytes("blob", b"x" * 200)  # larger than the reading buffer
    w.int("n", calls[0])
M.main(sys.argv, read=read)
"""


def test_a_failing_read_skips_one_reading_and_is_named(mqtt_setup, fleet, tmp_path) -> None:  # noqa: F811
    broker, peer = mqtt_setup
    flash = fleet.flash("mqtt")
    script = tmp_path / "failing.py"
    script.write_text(FAILING_READ)
    p = subprocess.run([mp_binary(), "-X", "heapsize=96k", str(script), "--bundle",
                        str(_mqtt_bundle(fleet, broker)), "--state", str(tmp_path / "ctr"),
                        "--count", "5", "--interval-ms", "0", "--linger-ms", "200"],
                       capture_output=True, text=True, timeout=120, cwd=flash,
                       env={"MICROPYPATH": f"{flash}:.frozen", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    fails = [ln for ln in lines if ln["event"] == "read_failed"]
    assert [f["detail"] for f in fails] == ["OSError", "LocalError"]
    summary = lines[-1]
    assert summary["read_errors"] == 2 and summary["readings"] == 3
    assert wait_for(lambda: len(peer.telemetry()) == 3, timeout=20)
    assert [r["reading"]["n"] for r in peer.telemetry()] == [1, 4, 5]
