"""Restoring a registry backup does not re-open message-1 replay.

A backup holds older message-1 counters, so every message 1 a relay
recorded since the backup passes the counter check again after a restore.
``moteseal registry backup`` marks every device in the copy and
``moteseal registry restore`` marks every device it restores (so a copy
made either way is safe); for a marked device the peer holds the 0-RTT
payload until the device confirms the session with data, which a replayed
message 1 never can (``device.peer`` Rule 6, docs/keys.md "Backup and
restore")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import ReplayError
from device.peer import PeerSessions
from device.session import EV_HANDSHAKE, DeviceSession
from moteseal.cli.main import main
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.keys.provision import device_session, read_bundle
from moteseal.keys.registry import Registry


class Hub:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.runner = CliRunner()
        self.reg_path = tmp / "hub1.sqlite"
        self.backend = NaclBackend()
        self.cli("keygen", "--out", str(tmp / "hub1.key"), "--peer", "hub1")
        self.cli("provision", "s1", "--out", str(tmp / "s1.bundle"), "--link", "none")
        self.store = NonpersistingCounterStore()  # the device's flash: survives reboots

    def cli(self, *args: str, code: int = 0) -> dict:
        r = self.runner.invoke(main, [*args, "--registry", str(self.reg_path), "--json"],
                               env={"MOTESEAL_CONFIG": "", "XDG_CONFIG_HOME": str(self.tmp / "cfg")})
        assert r.exit_code == code, r.output
        return json.loads(r.stdout.strip().splitlines()[-1])

    def device(self) -> DeviceSession:
        return device_session(self.backend, read_bundle(self.tmp / "s1.bundle"), Msg1Counter(self.store))


def backup(hub: Hub, how: str) -> Path:
    out = hub.tmp / "backup.sqlite"
    if how == "command":
        assert hub.cli("registry", "backup", str(out))["devices"] == 1
        assert (out.stat().st_mode & 0o777) == 0o600
    else:  # a plain file copy of the (closed) registry
        shutil.copy2(hub.reg_path, out)
    return out


def restore(hub: Hub, copy: Path, how: str) -> None:
    if how == "command":
        assert hub.cli("registry", "restore", str(copy))["devices"] == 1
    else:  # copied back by hand while the peer is stopped
        shutil.copy2(copy, hub.reg_path)


@pytest.mark.parametrize("made, restored", [("command", "command"), ("command", "copy"),
                                             ("copy", "command")])
def test_message1s_recorded_since_a_backup_are_not_delivered_again_after_its_restore(
        tmp_path: Path, made: str, restored: str) -> None:
    hub = Hub(tmp_path)
    copy = backup(hub, made)
    dev = hub.device()
    recorded = []
    reg = Registry(hub.reg_path)
    peer = PeerSessions(hub.backend, b"hub1", reg)
    for i in range(3):  # accepted, delivered once, and recorded by the relay
        env = dev.handshake(b"reading-%d" % i)
        recorded.append(env)
        r = peer.receive(env)
        assert r.payload == b"reading-%d" % i
        assert dev.receive(r.reply)[0] == EV_HANDSHAKE
        assert peer.receive(dev.send(b"data-%d" % i)).payload == b"data-%d" % i
    reg.close()

    restore(hub, copy, restored)
    reg = Registry(hub.reg_path)
    try:
        assert reg.get(b"s1").counter == -1  # the counter really went back
        peer = PeerSessions(hub.backend, b"hub1", reg)
        delivered = []
        for env in recorded * 2:
            try:
                r = peer.receive(env)
            except ReplayError:
                continue
            assert r.kind == "hs1" and r.payload is None and r.early is None  # held, not delivered
            delivered.append(r.payload)
        assert delivered == [None] * 3
        # The genuine device: its reading waits for its first data, then
        # both arrive, in order.
        dev = hub.device()  # rebooted; same counter store
        r = peer.receive(dev.handshake(b"fresh"))
        assert r.payload is None
        assert dev.receive(r.reply)[0] == EV_HANDSHAKE
        d = peer.receive(dev.send(b"confirm"))
        assert (d.early, d.payload) == (b"fresh", b"confirm")
        assert not reg.restored(b"s1")
        # Confirmed: the counter is above every recorded message 1 again, and
        # 0-RTT is delivered at once as before.
        for env in recorded:
            with pytest.raises(ReplayError):
                peer.receive(env)
        r = peer.receive(dev.handshake(b"later"))
        assert r.payload == b"later"
    finally:
        reg.close()


def test_restore_refuses_another_peers_registry_and_changes_nothing(tmp_path: Path) -> None:
    hub = Hub(tmp_path)
    r = hub.runner.invoke(main, ["keygen", "--out", str(tmp_path / "p2.key"), "--peer", "p2",
                                 "--registry", str(tmp_path / "p2.sqlite")],
                          env={"MOTESEAL_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert r.exit_code == 0, r.output
    out = hub.cli("registry", "restore", str(tmp_path / "p2.sqlite"), code=3)
    assert "a backup of peer p2, not of hub1" in json.dumps(out)
    reg = Registry(hub.reg_path)
    try:
        assert [d.device_id for d in reg.list_devices()] == [b"s1"] and not reg.restored(b"s1")
    finally:
        reg.close()
