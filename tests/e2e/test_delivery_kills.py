"""Nothing lost, end to end: simulated sensors (``moteseal device simulate``
with retention) and a MicroPython device (``micropython_port/main.py`` from
its ``.mpy`` flash build, retention in its fixed outbox) send a fixed number
of readings through a real Mosquitto and ``moteseal gateway run`` to
``moteseal peer listen --store``, while the peer is killed with SIGKILL three
times and the gateway once. Afterwards the peer's store holds every reading
of every device exactly once, in order.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import cbor2
import pytest

from moteseal.flash.build import build
from tests.cli_fleet import CLI, make_fleet, run
from tests.gateway_proc import stop_process
from tests.mp_helpers import mp_binary

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython, pytest.mark.timeout(240)]

DEVICES = [f"k-{i}" for i in range(10)]
READINGS = 200
MP_DEVICE = "mp-1"
# One reading every 100 ms; an outage (a peer restart, the gateway's) lasts
# about 2 s, so 64 retained readings cover it with room (no eviction).
MP_READINGS = 100
MP_RETAIN = 64



class Peer:
    """``moteseal peer listen --store`` as a process that can be SIGKILLed."""

    def __init__(self, args: list[str], out: Path, env: dict[str, str]) -> None:
        self.args, self.out, self.env = args, out, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.out, "a") as f:
            self.proc = subprocess.Popen(CLI + self.args, stdout=f, stderr=subprocess.STDOUT,
                                         env=self.env)

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.out.read_text()[-2000:]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)


def _stored(store: Path) -> dict[str, list[int]]:
    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT device, body FROM readings ORDER BY id").fetchall()
    finally:
        db.close()
    out: dict[str, list[int]] = {}
    for device, body in rows:
        out.setdefault(device, []).append(cbor2.loads(body)["seq"])
    return out


def test_every_reading_arrives_exactly_once_through_peer_and_gateway_kills(
        tmp_path: Path, mosquitto, gateway_process) -> None:
    broker = mosquitto(accounts={"gw": "gateway", "hub": "device"})
    env, reg = make_fleet(tmp_path, broker, DEVICES)
    # The MicroPython device: provisioned like the others, apart from the
    # simulator's bundle directory, and run from its flash build.
    password = broker.add(MP_DEVICE, "device")
    mp_bundle = tmp_path / f"{MP_DEVICE}.bundle"
    r = run("provision", MP_DEVICE, "--registry", reg, "--out", str(mp_bundle), "--link", "mqtt",
            "--host", "127.0.0.1", "--port", str(broker.port), "--username", MP_DEVICE,
            env=dict(env, MOTESEAL_LINK_PASSWORD=password))
    assert r.returncode == 0, r.stdout + r.stderr
    flash = tmp_path / "flash"
    build(mp_bundle, flash, "x64")
    gw = gateway_process(broker)
    store = tmp_path / "readings.sqlite"
    peer = Peer(["peer", "listen", "--registry", reg, "--port", str(broker.port),
                 "--password-file", str(tmp_path / "hub.mqtt"), "--json", "--store", str(store)],
                tmp_path / "peer.out", env)
    peer.start()
    sim_out = tmp_path / "sim.out"
    with open(sim_out, "w") as f:
        sim = subprocess.Popen(
            CLI + ["device", "simulate", "--bundle-dir", str(tmp_path / "bundles"),
                   "--interval", "0.05", "--readings", str(READINGS), "--retain", "255",
                   "--seconds", "150", "--state-dir", str(tmp_path / "state"), "--json"],
            stdout=f, stderr=subprocess.STDOUT, env=env)
    mp_out = tmp_path / "mp.out"
    with open(mp_out, "w") as f:
        mp = subprocess.Popen(
            [mp_binary(), str(flash / "main.py"), "--bundle", str(mp_bundle),
             "--state", str(tmp_path / "mp.ctr"), "--count", str(MP_READINGS),
             "--interval-ms", "100", "--retain", str(MP_RETAIN), "--resend-s", "2",
             "--drain-ms", "60000", "--run-ms", "120000"],
            stdout=f, stderr=subprocess.STDOUT, cwd=flash,
            env={"MICROPYPATH": f"{flash}:.frozen", "PATH": "/usr/bin:/bin"})
    try:
        time.sleep(2.0)
        for _ in range(3):  # the peer dies mid-stream, three times
            peer.kill()
            time.sleep(0.5)
            peer.start()
            time.sleep(2.0)
        gw.kill()  # and the gateway once
        time.sleep(0.5)
        gw.start()
        assert sim.wait(160) == 0, sim_out.read_text()[-3000:]
        assert mp.wait(120) == 0, mp_out.read_text()[-3000:]
    finally:
        for p in (sim, mp):
            if p.poll() is None:
                p.kill()
                p.wait(10)
        peer.stop()
    summary = json.loads(sim_out.read_text().splitlines()[-1])
    assert summary["event"] == "summary", summary
    assert summary["evicted"] == 0 and summary["unacknowledged"] == 0, summary
    assert summary["resent"] > 0, summary  # the kills really cost the peer readings in flight
    stored = _stored(store)
    for d in DEVICES:
        assert stored.get(d) == list(range(READINGS)), (d, stored.get(d, [])[:20])
    # The MicroPython device: every reading acknowledged, none evicted, and
    # each in the store once, in order; the kills cost it readings in flight.
    mp_summary = json.loads(mp_out.read_text().splitlines()[-1])
    assert mp_summary["event"] == "summary", mp_summary
    assert mp_summary["readings"] == MP_READINGS and mp_summary["evicted"] == 0, mp_summary
    assert mp_summary["resent"] > 0, mp_summary
    assert stored.get(MP_DEVICE) == list(range(MP_READINGS)), stored.get(MP_DEVICE, [])[:20]
