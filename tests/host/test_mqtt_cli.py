"""The commands a user runs, as subprocesses: keygen and provision a peer
and sensors, create their broker accounts, then `moteseal gateway run`,
`moteseal peer listen --json` and `moteseal device simulate`."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.cli_fleet import CLI, make_fleet, run

pytestmark = pytest.mark.mosquitto

SENSORS = ["s-1", "s-2"]



def test_provisioned_sensors_talk_to_a_listening_peer(tmp_path, mosquitto, gateway_process):
    broker = mosquitto(accounts={"gw": "gateway", "hub": "device"})
    env, reg = make_fleet(tmp_path, broker, SENSORS)
    gateway_process(broker)
    out_path = tmp_path / "peer.out"
    with open(out_path, "w") as out:
        peer = subprocess.Popen(CLI + ["peer", "listen", "--registry", reg, "--port", str(broker.port),
                                       "--password-file", str(tmp_path / "hub.mqtt"), "--json"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        time.sleep(1.0)
        assert peer.poll() is None, out_path.read_text()
        sim = run("device", "simulate", "--bundle-dir", str(tmp_path / "bundles"), "--count", "2",
                  "--interval", "0.2", "--seconds", "3", "--state-dir", str(tmp_path / "state"),
                  "--json", env=env)
        assert sim.returncode == 0, sim.stdout + sim.stderr
        summary = json.loads(sim.stdout.splitlines()[-1])
        assert summary["event"] == "summary" and summary["readings"] >= 10
        time.sleep(1.0)
    finally:
        peer.terminate()
        peer.wait(10)
    lines = [json.loads(line) for line in out_path.read_text().splitlines() if line.startswith("{")]
    tele = [r for r in lines if r["event"] == "telemetry"]
    for s in SENSORS:
        mine = [r for r in tele if r["device"] == s]
        assert len(mine) >= 5, lines
        assert mine[0]["via"] == "hs1" and "seq" in mine[0]["reading"]
    # The counters persisted: a second run continues above the first run's counter.
    assert all((tmp_path / "state" / f"{s}.counter").exists() for s in SENSORS)


def test_reading_sizes_do_not_depend_on_the_values():
    """Canonical CBOR would shrink round floats to 16 bits, and the envelope
    length would then tell an observer that a reading was a round value."""
    from moteseal.sim.simulate import decode_reading, encode_reading
    a, b = encode_reading(7, 21.0, 50.0, 3000), encode_reading(7, 21.37, 50.3, 3000)
    assert len(a) == len(b)
    assert decode_reading(a) == {"seq": 7, "t": 21.0, "rh": 50.0, "bat": 3000}
