"""``moteseal peer listen`` as a child process on a real Mosquitto, with a
test client playing the gateway.

Its sessions age out: ``[peer] max_session_age`` (default 24 h) ends a
session that is never re-handshaken; its data then gets an expiry hint.

On a registry whose disk fills up (a real tmpfs, mounted here; needs root),
while the disk is full the peer keeps running and fails closed: a message 1
whose counter cannot be stored gets no message 2 and no delivery, and is
reported (``unstored``) and counted. When space returns, the next message 1
goes through with no restart, and the refusal count reaches the registry.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device import envelope as E
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.session import EV_HANDSHAKE
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.keys.provision import device_session, read_bundle

pytestmark = pytest.mark.mosquitto

CLI = [sys.executable, "-m", "moteseal.cli.main"]
DOWN, UP = "moteseal/v1/down/hub", "moteseal/v1/up/hub"  # the peer's inbox and outbox


@pytest.fixture
def small_disk(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def wait_for(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_peer_listen_survives_a_full_disk_fails_closed_and_recovers(
        tmp_path: Path, small_disk: Path, mosquitto, mqtt_client) -> None:
    env = dict(os.environ, MOTESEAL_CONFIG=str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    reg = str(small_disk / "hub.sqlite")

    def cli(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    cli("keygen", "--out", str(tmp_path / "hub.key"), "--peer", "hub", "--registry", reg)
    cli("provision", "s1", "--registry", reg, "--out", str(tmp_path / "s1.bundle"), "--link", "none")
    broker = mosquitto(accounts={"gw": "gateway", "hub": "device"})
    (tmp_path / "hub.mqtt").write_text(broker.passwords["hub"])
    gw = mqtt_client(broker, "gw")  # plays the gateway: writes the peer's inbox, reads its outbox
    gw.subscribe(UP)
    backend = NaclBackend()
    store = NonpersistingCounterStore()

    def device():
        return device_session(backend, read_bundle(tmp_path / "s1.bundle"), Msg1Counter(store))

    out_path = tmp_path / "peer.out"
    with open(out_path, "w") as out:
        peer = subprocess.Popen(CLI + ["peer", "listen", "--registry", reg, "--port", str(broker.port),
                                       "--password-file", str(tmp_path / "hub.mqtt"), "--json"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        # A working handshake first (retried until the peer has subscribed).
        for _ in range(20):
            dev = device()
            gw.publish(DOWN, dev.handshake(b"before"))
            got = gw.collect(1, timeout=1.0)
            if got:
                break
        assert got and dev.receive(got[0][1])[0] == EV_HANDSHAKE, out_path.read_text()

        filler = fill(small_disk)
        dev = device()
        gw.publish(DOWN, dev.handshake(b"while full"))
        assert wait_for(lambda: any(r["event"] == "unstored" for r in reports(out_path))), \
            out_path.read_text()
        assert gw.quiet(1.0) == []  # no message 2: the counter is not stored, so no session
        assert peer.poll() is None, out_path.read_text()
        assert "Traceback" not in out_path.read_text()
        assert len([r for r in reports(out_path) if r["event"] == "telemetry"]) == 1  # "before" only

        filler.unlink()  # space returns
        dev = device()
        gw.publish(DOWN, dev.handshake(b"after"))
        got = gw.collect(1, timeout=20)
        assert got, out_path.read_text()
        env2 = E.Envelope().decode_into(got[0][1], len(got[0][1]), E.envelope_limit(1024))
        assert env2.type == E.HS2
        assert dev.receive(got[0][1])[0] == EV_HANDSHAKE
        assert wait_for(lambda: len([r for r in reports(out_path) if r["event"] == "telemetry"]) == 2)
        assert peer.poll() is None
    finally:
        peer.terminate()
        peer.wait(10)
    assert peer.returncode == 0, out_path.read_text()
    tele = [r for r in reports(out_path) if r["event"] == "telemetry"]
    assert [r["via"] for r in tele] == ["hs1", "hs1"]  # "before" and "after"; "while full" never
    shown = json.loads(cli("registry", "show", "s1", "--registry", reg, "--json").stdout)
    assert {"reason": "unstored", "count": 1} in [{"reason": r["reason"], "count": r["count"]}
                                                   for r in shown["refusals"]]


def test_peer_listen_ends_sessions_older_than_the_configured_max_session_age(
        tmp_path: Path, mosquitto, mqtt_client) -> None:
    (tmp_path / "peer.toml").write_text("[peer]\nmax_session_age = 1\n")
    env = dict(os.environ, MOTESEAL_CONFIG=str(tmp_path / "peer.toml"))
    reg = str(tmp_path / "hub.sqlite")
    for args in (["keygen", "--out", str(tmp_path / "hub.key"), "--peer", "hub", "--registry", reg],
                 ["provision", "s1", "--registry", reg, "--out", str(tmp_path / "s1.bundle"),
                  "--link", "none"]):
        r = subprocess.run(CLI + args, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    broker = mosquitto(accounts={"gw": "gateway", "hub": "device"})
    (tmp_path / "hub.mqtt").write_text(broker.passwords["hub"])
    gw = mqtt_client(broker, "gw")
    gw.subscribe(UP)
    backend = NaclBackend()
    store = NonpersistingCounterStore()
    out_path = tmp_path / "peer.out"
    with open(out_path, "w") as out:
        peer = subprocess.Popen(CLI + ["peer", "listen", "--registry", reg, "--port", str(broker.port),
                                       "--password-file", str(tmp_path / "hub.mqtt"), "--json"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(20):
            dev = device_session(backend, read_bundle(tmp_path / "s1.bundle"), Msg1Counter(store))
            gw.publish(DOWN, dev.handshake(b"hello"))
            got = gw.collect(1, timeout=1.0)
            if got:
                break
        assert got and dev.receive(got[0][1])[0] == EV_HANDSHAKE, out_path.read_text()
        started = time.monotonic()
        gw.publish(DOWN, dev.send(b"young"))
        assert gw.quiet(0.3) == []  # delivered, nothing to answer
        time.sleep(max(0.0, started + 1.5 - time.monotonic()))  # past the 1 s age limit
        gw.publish(DOWN, dev.send(b"too old"))
        got = gw.collect(1, timeout=20)
        assert got, out_path.read_text()
        hint = E.Envelope().decode_into(got[0][1], len(got[0][1]))
        assert hint.type == E.HINT and hint.reason == E.HINT_SESSION_EXPIRED
    finally:
        peer.terminate()
        peer.wait(10)
    events = [(r["event"], r.get("via")) for r in reports(out_path)]
    assert events == [("telemetry", "hs1"), ("telemetry", "data"), ("hint_sent", None)], events


def test_the_default_max_session_age_is_a_day_and_the_environment_overrides_it(tmp_path: Path) -> None:
    from moteseal.config import ConfigError, load_config
    (tmp_path / "empty.toml").write_text("")
    assert load_config(tmp_path / "empty.toml", env={}).get("peer", "max_session_age") == 86400
    cfg = load_config(tmp_path / "empty.toml", env={"MOTESEAL_PEER_MAX_SESSION_AGE": "600"})
    assert cfg.get("peer", "max_session_age") == 600
    (tmp_path / "bad.toml").write_text("[peer]\nmax_session_age = 0\n")
    with pytest.raises(ConfigError, match=r"\[peer\] max_session_age"):
        load_config(tmp_path / "bad.toml", env={})
