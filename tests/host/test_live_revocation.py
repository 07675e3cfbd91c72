"""Revocation, replacement and retirement end *live* sessions (device.peer
Rule 4): another process changes the registry with the real ``moteseal``
command while a ``PeerSessions`` on that registry holds a working session;
at the next re-check (``recheck`` = 0.5 s of the peer's clock) the device's
data is no longer delivered and downlink to it stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import AuthError, LocalError
from device.peer import DEFAULT_RECHECK, PeerSessions
from device.session import EV_DATA, EV_HANDSHAKE, EV_REHANDSHAKE, DeviceSession
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.keys.provision import device_session, read_bundle
from moteseal.keys.registry import Registry

CLI = [sys.executable, "-m", "moteseal.cli.main"]


class Hub:
    """Registry, keys and bundles in tmp, changed only through the CLI in
    child processes; one peer (``PeerSessions`` on a ``Registry``) in this one."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.reg_path = tmp / "hub1.sqlite"
        (tmp / "none.toml").write_text("")
        self.env = dict(os.environ, MOTESEAL_CONFIG=str(tmp / "none.toml"))
        self.backend = NaclBackend()
        self.cli("keygen", "--out", str(tmp / "hub1.key"), "--peer", "hub1")
        self.reg = Registry(self.reg_path)
        self.peer = PeerSessions(self.backend, b"hub1", self.reg)
        self.now = 1000.0

    def cli(self, *args: str) -> None:
        r = subprocess.run(CLI + [*args, "--registry", str(self.reg_path)], capture_output=True,
                           text=True, timeout=120, env=self.env)
        assert r.returncode == 0, r.stdout + r.stderr

    def provision(self, dev: str, *extra: str) -> DeviceSession:
        out = self.tmp / f"{dev}-{len(list(self.tmp.glob('*.bundle')))}.bundle"
        self.cli("provision", dev, "--out", str(out), "--link", "none", *extra)
        return device_session(self.backend, read_bundle(out), Msg1Counter(NonpersistingCounterStore()))

    def tick(self) -> float:
        """The peer's clock moves on by one re-check interval."""
        self.now += DEFAULT_RECHECK
        return self.now

    def handshake(self, dev: DeviceSession) -> None:
        r = self.peer.receive(dev.handshake(b"hello", self.now), self.now)
        assert dev.receive(r.reply, self.now)[0] == EV_HANDSHAKE

    def talks(self, dev: DeviceSession, name: bytes) -> bool:
        """One reading up and one command down; True if both arrived."""
        up = self.peer.receive(dev.send(b"up", self.now), self.now)
        if up.kind != "data" or up.payload != b"up":
            assert up.kind == "hint" and up.payload is None
            return False
        assert dev.receive(self.peer.send(name, b"down", self.now), self.now) == (EV_DATA, b"down")
        return True

    def ended(self, dev: DeviceSession, name: bytes) -> None:
        """The session is gone: data gets a hint (the device is told to
        handshake again) and downlink raises."""
        up = self.peer.receive(dev.send(b"after", self.now), self.now)
        assert up.kind == "hint" and up.payload is None
        assert dev.receive(up.reply, self.now)[0] == EV_REHANDSHAKE
        with pytest.raises(LocalError, match="no session"):
            self.peer.send(name, b"down", self.now)
        assert self.peer.sessions(name) == []


@pytest.fixture
def hub(tmp_path: Path):
    h = Hub(tmp_path)
    try:
        yield h
    finally:
        h.reg.close()


def test_a_revocation_by_another_process_ends_the_live_session(hub: Hub) -> None:
    s1, s2 = hub.provision("s1"), hub.provision("s2")
    hub.handshake(s1)
    hub.handshake(s2)
    assert hub.talks(s1, b"s1") and hub.talks(s2, b"s2")
    hub.cli("provision", "s3", "--out", str(hub.tmp / "s3.bundle"), "--link", "none")
    hub.tick()
    assert hub.talks(s1, b"s1")  # an unrelated change ends nothing
    hub.cli("registry", "revoke", "s1", "--reason", "stolen")
    hub.tick()
    hub.ended(s1, b"s1")
    with pytest.raises(AuthError) as e:  # and it cannot come back
        hub.peer.receive(s1.handshake(b"again", hub.now), hub.now)
    assert e.value.reason == "revoked"
    assert hub.talks(s2, b"s2")  # the other device is untouched


def test_a_replacement_by_another_process_ends_the_old_psks_session(hub: Hub) -> None:
    old = hub.provision("s1")
    hub.handshake(old)
    assert hub.talks(old, b"s1")
    new = hub.provision("s1", "--replace")
    hub.tick()
    hub.ended(old, b"s1")
    with pytest.raises(AuthError):
        hub.peer.receive(old.handshake(b"old psk", hub.now), hub.now)
    hub.handshake(new)
    assert hub.talks(new, b"s1")


def test_a_forced_retirement_by_another_process_ends_sessions_on_that_key(hub: Hub) -> None:
    s1 = hub.provision("s1")  # pins only the first key
    hub.handshake(s1)
    hub.cli("rotate", "--out", str(hub.tmp / "hub1-2.key"))
    hub.tick()
    assert hub.talks(s1, b"s1")  # the overlap keeps it working
    s2 = hub.provision("s2")  # pins both, handshakes on the new one
    hub.handshake(s2)
    hub.cli("rotate", "--retire", "--force")
    hub.tick()
    hub.ended(s1, b"s1")
    assert hub.talks(s2, b"s2")


def test_sessions_are_rechecked_at_most_every_recheck_interval(hub: Hub) -> None:
    """The re-check costs one cheap read per interval, not one per message:
    within the interval the old view stands; at its end the change shows."""
    s1 = hub.provision("s1")
    hub.handshake(s1)
    assert hub.talks(s1, b"s1")
    hub.cli("registry", "revoke", "s1")
    hub.now += DEFAULT_RECHECK / 2
    assert hub.talks(s1, b"s1")
    hub.now += DEFAULT_RECHECK / 2
    hub.ended(s1, b"s1")
