"""`moteseal demo` runs end to end and stops cleanly, after --seconds and on Ctrl-C."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.mosquitto

CLI = [sys.executable, "-m", "moteseal.cli.main"]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_shows_decrypted_readings_next_to_what_the_gateway_saw():
    r = subprocess.run(CLI + ["demo", "--sensors", "2", "--seconds", "4", "--interval", "0.5", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    port = next(x["port"] for x in lines if x["event"] == "broker")
    relayed = [x for x in lines if x["event"] == "relayed"]
    decrypted = [x for x in lines if x["event"] == "decrypted"]
    assert {x["device"] for x in decrypted} == {"sensor-01", "sensor-02"}
    assert {x["kind"] for x in relayed} >= {"hs1", "hs2", "data"}
    # The gateway's view holds ids, kinds and sizes only.
    assert all(set(x) == {"who", "event", "src", "dst", "kind", "size"} for x in relayed)
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["decrypted"] == len(decrypted)
    assert summary["dropped"] == 0
    assert not port_open(port), "the demo's broker is still running"


def test_demo_stops_cleanly_on_ctrl_c():
    proc = subprocess.Popen(CLI + ["demo", "--sensors", "1", "--interval", "0.2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            rec = json.loads(line)
            if rec["event"] == "broker":
                port = rec["port"]
            if rec["event"] == "decrypted":
                break
        assert port is not None
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(rest.splitlines()[-1])["event"] == "summary"
    assert not port_open(port)
