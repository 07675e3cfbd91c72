"""`moteseal peer listen` as an operator reads it: each line starts with the
UTC time and the device; a refused device is named, and a device
provisioned for another suite than the peer runs is told apart from a
forgery. The peer's MQTT password comes from the file `broker add-device
--password-file` wrote (nobody copies it by hand)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "moteseal.cli.main"]
OTHER_SUITE = "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s"


def run(*args: str, env: dict) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_peer_lines_are_timed_and_name_a_device_refused_for_its_suite(tmp_path, mosquitto,
                                                                      gateway_process) -> None:
    from device.noise import DEFAULT_SUITE

    assert DEFAULT_SUITE != OTHER_SUITE
    broker = mosquitto(accounts={"gw": "gateway"})
    env = dict(os.environ, PYTHONPATH=str(ROOT), MOTESEAL_CONFIG="", MOTESEAL_PASSPHRASE="",
               XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_DATA_HOME=str(tmp_path / "data"))
    run("broker", "add-device", "hub1", "--dir", str(broker.workdir), "--pid-file", str(broker.pid_file),
        "--password-file", str(tmp_path / "hub1.mqtt"), "--owner", "", env=env)
    reg = str(tmp_path / "hub1.sqlite")
    run("keygen", "--out", str(tmp_path / "hub1.key"), "--peer", "hub1", "--registry", reg, env=env)
    (tmp_path / "b").mkdir()
    for dev, suite in (("good-1", DEFAULT_SUITE), ("other-1", OTHER_SUITE)):
        pw = tmp_path / f"{dev}.mqtt"
        run("broker", "add-device", dev, "--dir", str(broker.workdir), "--pid-file", str(broker.pid_file),
            "--password-file", str(pw), "--owner", "", env=env)
        run("provision", dev, "--registry", reg, "--out", str(tmp_path / "b" / f"{dev}.bundle"),
            "--suite", suite, "--link", "mqtt", "--host", "127.0.0.1", "--port", str(broker.port),
            "--username", dev, env=dict(env, MOTESEAL_LINK_PASSWORD=pw.read_text().strip()))
    gateway_process(broker, peers=["hub1"])
    out_path = tmp_path / "peer.out"
    with open(out_path, "w") as out:
        peer = subprocess.Popen(CLI + ["peer", "listen", "--registry", reg, "--port", str(broker.port),
                                       "--password-file", str(tmp_path / "hub1.mqtt")],
                                stdout=out, stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(2.0)  # subscribed by then; a late first handshake is retried anyway
        assert peer.poll() is None, out_path.read_text()
        run("device", "simulate", "--bundle-dir", str(tmp_path / "b"), "--interval", "0.3",
            "--seconds", "4", "--state-dir", str(tmp_path / "state"), env=env)
        deadline = time.monotonic() + 20
        while "refused" not in out_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        peer.terminate()
        peer.wait(10)
    lines = out_path.read_text().splitlines()
    timed = re.compile(r"^\d\d:\d\d:\d\dZ ")
    assert lines and all(timed.match(ln) for ln in lines), lines
    good = [ln for ln in lines if ln.split()[1] == "good-1"]
    assert len(good) >= 3 and " hs1 " in good[0], lines
    refused = [ln for ln in lines if "refused" in ln]
    assert refused, lines
    for ln in refused:
        assert ln.split()[1] == "other-1", ln  # no more "?": the line names the device
        assert f"provisioned for {OTHER_SUITE}" in ln and f"this peer runs {DEFAULT_SUITE}" in ln, ln
