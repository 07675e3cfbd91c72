"""Transfers end to end (docs/protocol.md, "Transfers"): the hub (its
Python API and ``moteseal push``/``moteseal update``), real Mosquitto, a
real ``moteseal gateway run``, and a MicroPython device running its flash
build (``.mpy``) on the unix port (in ``HEAP``: the other device tests'
heap plus what the receiver needs).

- A 100 KiB file arrives intact and is swapped in once while the link
  (the gateway) is cut twice and the device is killed and restarted once
  (it resumes from what its flash holds).
- Pushed again (the same version, an older one), with a wrong piece from
  the hub (the hash does not match) and truncated then aborted, it is
  refused and the installed file stays as it is.
- An application update is staged, applied at the next boot, and rolled
  back at the boot after when the new application cannot reach the hub
  within its trial; one that reaches the hub is kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from moteseal.flash.build import build, parse_features
from moteseal.hub.transfer import F_APP, pack_app
from tests.cli_fleet import run
from tests.hub_world import HubThread, cut_link, hub_fleet, telemetry, transfer_state
from tests.polling import wait_until
from tests.mp_helpers import mp_binary

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython, pytest.mark.timeout(600)]

DEVICE = "mote-1"
# The device's heap: DEVICE_HEAP (76k, tests/micropython/test_mp_device.py)
# plus the receiver, which loads at the first transfer frame (device.transfer,
# micropython_port.update and their objects: about 8 KiB on the 64-bit unix
# port). Measured: 88k runs this file; 84k runs out of heap at that import.
HEAP = os.environ.get("MOTESEAL_TEST_TRANSFER_HEAP", "88k")
SIZE = 100 * 1024
# The device's flash build ships updates (an opt-in feature: `--features default,updates`).
UPDATES = parse_features("default,updates")


class Mote:
    """``micropython main.py`` from a flash directory (its working directory
    is the device's flash), one process per boot."""

    def __init__(self, flash: Path, bundle: Path, state: Path) -> None:
        self.flash, self.bundle, self.state = flash, bundle, state
        self.proc: subprocess.Popen | None = None
        self.boots = 0

    def boot(self, *args: str, heap: str = HEAP) -> "Mote":
        self.boots += 1
        out = open(self.flash.parent / f"boot{self.boots}.out", "w")
        env = {"MICROPYPATH": f"{self.flash}:.frozen", "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen(
            [mp_binary(), "-X", f"heapsize={heap}", str(self.flash / "main.py"),
             "--bundle", str(self.bundle), "--state", str(self.state), "--interval-ms", "1000",
             "--run-ms", "300000", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.flash)
        return self

    def events(self, boot: int | None = None) -> list[dict[str, Any]]:
        text = (self.flash.parent / f"boot{boot or self.boots}.out").read_text()
        return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc


@pytest.fixture
def world(tmp_path: Path, mosquitto, gateway_process):
    env, gw, bundle = hub_fleet(tmp_path, mosquitto, gateway_process, DEVICE)
    flash = tmp_path / "mote" / "flash"
    build(bundle, flash, "x64", features=UPDATES)
    # 150 pieces per second: about 10 s for 100 KiB, time for the cuts
    ht = HubThread(tmp_path / "hub.toml", rate=150)
    mote = Mote(flash, bundle, tmp_path / "mote" / "ctr")
    w = {"tmp": tmp_path, "env": env, "hub": ht.hub, "gw": gw, "reports": ht.reports, "mote": mote,
         "hub_thread": ht, "bundle": bundle}
    try:
        yield w
    finally:
        mote.kill()
        ht.close()


def test_a_100k_file_survives_two_link_cuts_and_a_reboot_and_is_swapped_in_once(world) -> None:
    w, mote = world, world["mote"]
    data = bytes((i * 131 + (i >> 9)) & 0xFF for i in range(SIZE))
    mote.boot()
    assert wait_until(lambda: telemetry(w, DEVICE), 60), mote.events()
    row = w["hub"].push(DEVICE, data, b"data.bin", version=3)
    assert wait_until(lambda: transfer_state(w, row).get("offset", 0) >= 20 * 1024,
                      120), transfer_state(w, row)
    cuts = [cut_link(w, row)]
    assert wait_until(lambda: transfer_state(w, row).get("offset", 0) >= 45 * 1024,
                      120), transfer_state(w, row)
    mote.kill()  # the reboot: what flash holds is the resume point
    held = (mote.flash / ".part").stat().st_size
    assert 0 < held < SIZE and not (mote.flash / "data.bin").exists()
    n = len(w["reports"])
    mote.boot()
    assert wait_until(lambda: telemetry(w, DEVICE, n), 60)
    assert wait_until(lambda: transfer_state(w, row).get("offset", 0) >= 75 * 1024,
                      120), transfer_state(w, row)
    cuts.append(cut_link(w, row))
    assert all(c < SIZE for c in cuts), cuts  # both cuts fell inside the transfer
    assert wait_until(lambda: transfer_state(w, row).get("state") in ("installed", "refused", "timeout"),
                      180), transfer_state(w, row)
    st = transfer_state(w, row)
    assert st["state"] == "installed" and st["offset"] == SIZE, st
    assert (mote.flash / "data.bin").read_bytes() == data
    assert not (mote.flash / ".part").exists() and not (mote.flash / ".xfer").exists()
    done = [r for r in w["reports"] if r["event"] == "transfer_installed"]
    assert len(done) == 1
    # Resumed, not restarted: the hub sent the file's pieces once, plus at
    # most a window (16) again per cut or reboot (a restart from zero after
    # the reboot would add the ~700 pieces of the first 45 KiB).
    assert done[0]["pieces"] < -(-SIZE // 65) + 4 * 16 + 50, done[0]
    xstate = json.loads((mote.flash / ".xstate").read_text())
    assert xstate["v"] == {"data.bin": 3}
    # Telemetry kept flowing while the transfer ran, and the hub's events
    # hold its progress, not one status per 8 pieces.
    assert telemetry(w, DEVICE, n)
    assert not any(r["event"] == "transfer_status" for r in w["reports"])
    assert any(r["event"] == "transfer_started" for r in w["hub"].events)

    # The same version again (a replayed manifest under a new id), an older
    # one, through `moteseal push`: refused, the installed file untouched.
    other = w["tmp"] / "other.bin"
    other.write_bytes(b"not this" * 100)
    for v in ("3", "2"):
        r = run("push", DEVICE, str(other), "--as", "data.bin", "--version", v, "--config",
                str(w["tmp"] / "hub.toml"), "--wait", "60", "--json", env=w["env"])
        assert r.returncode == 1, r.stdout + r.stderr
        got = json.loads(r.stdout)
        assert (got["state"], got["reason"]) == ("refused", "old_version"), got
    assert (mote.flash / "data.bin").read_bytes() == data
    # A wrong piece from the hub (one byte of the piece at offset 650, every
    # time it is sent): the device's hash does not match, nothing installed.
    svc = w["hub"].transfers
    real = svc._send

    def wrong_piece(device: str, frame: bytes) -> Any:
        if frame[0] == 0x11 and int.from_bytes(frame[5:9], "big") == 650:
            frame = frame[:-1] + bytes([frame[-1] ^ 1])
        return real(device, frame)

    svc._send = wrong_piece
    row = w["hub"].push(DEVICE, bytes(3000), b"data.bin", version=4)
    assert wait_until(lambda: transfer_state(w, row).get("state") == "refused",
                      60), transfer_state(w, row)
    assert transfer_state(w, row)["reason"] == "hash_mismatch"
    assert (mote.flash / "data.bin").read_bytes() == data
    assert wait_until(lambda: not (mote.flash / ".part").exists(), 10)

    # A truncated transfer (nothing beyond 1300 bytes gets through), then
    # aborted: nothing installed, the partial file gone.
    def truncate(device: str, frame: bytes) -> Any:
        if frame[0] == 0x11 and int.from_bytes(frame[5:9], "big") >= 1300:
            return None
        return real(device, frame)

    svc._send = truncate
    row = w["hub"].push(DEVICE, bytes(3000), b"data.bin", version=5)
    assert wait_until(lambda: transfer_state(w, row).get("offset") == 1300, 60), transfer_state(w, row)
    assert (mote.flash / ".part").stat().st_size == 1300
    assert w["hub"].abort(row)
    assert wait_until(lambda: transfer_state(w, row).get("state") == "aborted",
                      30), transfer_state(w, row)
    assert wait_until(lambda: not (mote.flash / ".part").exists(), 30)
    assert (mote.flash / "data.bin").read_bytes() == data
    svc._send = real
    assert json.loads((mote.flash / ".xstate").read_text())["v"] == {"data.bin": 3}

    # A bad name is refused at the CLI, before anything is queued.
    r = run("push", DEVICE, str(other), "--as", "../x", "--config", str(w["tmp"] / "hub.toml"),
            env=w["env"])
    assert r.returncode == 2 and "name" in r.stderr, r.stderr


def test_an_application_update_that_cannot_reach_the_hub_rolls_back(world) -> None:
    w, mote = world, world["mote"]
    flash = mote.flash
    old = {p: p.read_bytes() for p in flash.rglob("*.mpy")}
    # The "new" application: the same sources built with line numbers and
    # long messages (different .mpy bytes, the same behaviour).
    new_dir = w["tmp"] / "new-flash"
    build(w["bundle"], new_dir, "x64", debug=True, features=UPDATES)
    mote.boot()
    assert wait_until(lambda: telemetry(w, DEVICE), 60)
    r = run("update", DEVICE, str(new_dir), "--version", "10", "--config",
            str(w["tmp"] / "hub.toml"), "--wait", "240", "--json", env=w["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["state"] == "staged"
    mote.kill()
    # The hub goes away: the new application cannot reach its peer.
    w["hub_thread"].close()
    mote.boot("--trial-s", "3")
    assert mote.wait(60) == 4  # gave up after its trial
    assert {"event": "update", "detail": "trial"} in mote.events()
    changed = [p for p in old if p.read_bytes() != old[p]]
    assert changed  # the new files were in place during the trial
    assert all(Path(str(p) + ".old").exists() for p in changed)
    mote.boot("--trial-s", "3")
    time.sleep(3)
    mote.kill()
    assert {"event": "update", "detail": "rolled_back"} in mote.events()
    assert all(p.read_bytes() == old[p] for p in old)  # the old application is back
    assert not list(flash.rglob("*.old")) and not list(flash.rglob("*.new"))
    xstate = json.loads((flash / ".xstate").read_text())
    assert xstate["bad"] == 10 and "trial" not in xstate and "app" not in xstate["v"]


def test_an_application_update_that_reaches_the_hub_is_kept(world) -> None:
    w, mote = world, world["mote"]
    flash = mote.flash
    new_dir = w["tmp"] / "new-flash"
    build(w["bundle"], new_dir, "x64", debug=True, features=UPDATES)
    new = {p.relative_to(new_dir): p.read_bytes() for p in new_dir.rglob("*.mpy")}
    mote.boot()
    assert wait_until(lambda: telemetry(w, DEVICE), 60)
    row = w["hub"].push(DEVICE, pack_app(new_dir), b"app", version=20, flags=F_APP)
    assert wait_until(lambda: transfer_state(w, row).get("state") == "staged",
                      240), transfer_state(w, row)
    mote.kill()
    n = len(w["reports"])
    mote.boot("--trial-s", "60", heap="128k")  # applies it (a debug build); the hub is there
    assert wait_until(lambda: telemetry(w, DEVICE, n), 60)
    assert wait_until(lambda: "app" in json.loads((flash / ".xstate").read_text())["v"], 30)
    mote.kill()
    assert {"event": "update", "detail": "trial"} in mote.events()
    assert all((flash / p).read_bytes() == b for p, b in new.items())  # the new files stay
    assert not list(flash.rglob("*.old")) and not list(flash.rglob("*.new"))
    assert json.loads((flash / ".xstate").read_text())["v"] == {"app": 20}
    # The same version again is refused: staged once, kept, never re-applied.
    row = w["hub"].push(DEVICE, pack_app(new_dir), b"app", version=20, flags=F_APP)
    mote.boot(heap="128k")  # the new application is a debug build: line numbers cost heap
    assert wait_until(lambda: transfer_state(w, row).get("state") == "refused",
                      120), transfer_state(w, row)
    assert transfer_state(w, row)["reason"] == "old_version"
