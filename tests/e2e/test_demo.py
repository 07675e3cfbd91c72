"""`moteseal demo` runs end to end on the hub and stops cleanly, after
--seconds and on Ctrl-C: the dashboard's URL is printed and answers while it
runs, a tampered and a replayed envelope are refused, and its text output
fits 80 columns with timestamps, units and fixed decimals."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

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
    lines = [x for x in lines if not x["event"].startswith("summary_")]
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
    assert "summary" in [json.loads(x)["event"] for x in rest.splitlines()[-3:]]
    assert not port_open(port)


def test_demo_runs_on_the_hub_serves_its_dashboard_and_refuses_forgeries():
    proc = subprocess.Popen(CLI + ["demo", "--sensors", "2", "--seconds", "12", "--interval", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    fleet = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            m = re.search(r"dashboard at (http://127\.0\.0\.1:\d+/)", line)
            if m and fleet is None:
                # Reachable while the demo runs, and it is the hub's own dashboard.
                deadline = time.monotonic() + 20
                while fleet is None or not fleet["devices"]:
                    fleet = json.loads(urllib.request.urlopen(m.group(1) + "api/fleet", timeout=10).read())
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.3)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "\n".join(lines)
    assert proc.returncode == 0, text + err
    assert fleet is not None and fleet["peer"] == "hub", text
    assert {d["device"] for d in fleet["devices"]} >= {"sensor-01"}, fleet
    # The forgeries, each refused by the hub for its own reason.
    assert re.search(r"hub +sensor-\d\d +tampered envelope refused: AuthError", text), text
    assert re.search(r"hub +sensor-\d\d +replayed envelope refused: (ReplayError|duplicate)", text), text
    # Every line fits 80 columns; lines start with a UTC time; readings carry
    # units and fixed decimals.
    assert all(len(x) <= 80 for x in lines), max(lines, key=len)
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3}  ", x) for x in lines[1:]), text
    readings = [x for x in lines if " #" in x and " t " in x]
    assert readings and all(re.search(r"t -?\d+\.\d\d °C  rh \d+\.\d %  bat \d+ mV$", x)
                            for x in readings), readings[:3]
    # No phrase is repeated on every line of a kind (the old "(ciphertext;
    # routed by header)" tail): the words after the ids vary or are data.
    relayed = [x for x in lines if "  gateway  " in x and " > " in x]
    assert relayed and all(re.search(r"(hs1|hs2|data|hint) +\d+ B$", x) for x in relayed)
    assert "ciphertext" not in text and "decrypted (" not in text
