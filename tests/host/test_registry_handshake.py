"""The registry as the peer's directory at handshake time, end to end:
keys and bundles made by the real ``moteseal`` commands, a device session
built from its bundle, and ``PeerSessions`` reading the SQLite registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from device import envelope as E
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.cli.main import main
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import AuthError, ReplayError
from moteseal.keys.provision import device_session, read_bundle
from moteseal.keys.registry import Registry
from device.session import EV_DATA, EV_HANDSHAKE, EV_REFUSED, DeviceSession
from device.peer import PeerSessions


class Fleet:
    """A peer ``hub1`` whose registry, key files and bundles live in tmp."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.runner = CliRunner()
        self.reg_path = tmp / "hub1.sqlite"
        self.backend = NaclBackend()
        self.cli("keygen", "--out", str(tmp / "hub1.key"), "--registry", str(self.reg_path), "--peer", "hub1")

    def cli(self, *args: str, code: int = 0) -> dict:
        r = self.runner.invoke(main, [*args, "--json"], env={"XDG_CONFIG_HOME": str(self.tmp / "cfg")})
        assert r.exit_code == code, r.output
        return json.loads(r.stdout.strip().splitlines()[-1])

    def provision(self, dev: str, *extra: str) -> Path:
        out = self.tmp / f"{dev}.bundle"
        self.cli("provision", dev, "--registry", str(self.reg_path), "--out", str(out), "--link", "none", *extra)
        return out

    def device(self, bundle: Path) -> DeviceSession:
        return device_session(self.backend, read_bundle(bundle), Msg1Counter(NonpersistingCounterStore()))

    def peer(self) -> tuple[PeerSessions, Registry]:
        reg = Registry(self.reg_path)
        return PeerSessions(self.backend, b"hub1", reg), reg


def handshake(dev: DeviceSession, peer: PeerSessions, payload: bytes = b"reading") -> bytes:
    r = peer.receive(dev.handshake(payload))
    assert dev.receive(r.reply)[0] == EV_HANDSHAKE
    return r.payload


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_provisioned_device_talks_to_the_peer_through_the_registry(fleet: Fleet) -> None:
    dev = fleet.device(fleet.provision("s1"))
    peer, reg = fleet.peer()
    try:
        assert handshake(dev, peer, b"t=21.5") == b"t=21.5"
        assert peer.receive(dev.send(b"up")).payload == b"up"
        assert dev.receive(peer.send(b"s1", b"down")) == (EV_DATA, b"down")
        rec = reg.get(b"s1")
        assert rec.counter == 0 and rec.last_key_state == "current"
    finally:
        reg.close()


def test_revoked_device_is_refused_at_its_next_message1(fleet: Fleet) -> None:
    dev = fleet.device(fleet.provision("s1"))
    peer, reg = fleet.peer()
    try:
        handshake(dev, peer)
        fleet.cli("registry", "revoke", "s1", "--registry", str(fleet.reg_path), "--reason", "stolen")
        with pytest.raises(AuthError) as e:  # the running peer sees it at once
            peer.receive(dev.handshake(b"again"))
        assert e.value.reason == "revoked"
        assert E.decode(e.value.reply).reason == E.HINT_REFUSED
    finally:
        reg.close()
    shown = fleet.cli("registry", "show", "s1", "--registry", str(fleet.reg_path))
    assert shown["revoked"] and shown["revoke_reason"] == "stolen"
    listed = fleet.cli("registry", "list", "--registry", str(fleet.reg_path))
    assert [(d["device_id"], d["refused"]) for d in listed["devices"]] == [("s1", 1)]
    assert {r["reason"]: r["count"] for r in shown["refusals"]} == {"revoked": 1}


def test_reprovisioned_device_old_psk_is_refused_and_new_one_works(fleet: Fleet) -> None:
    old = fleet.device(fleet.provision("s1"))
    peer, reg = fleet.peer()
    try:
        handshake(old, peer)
        new = fleet.device(fleet.provision("s1", "--replace"))
        with pytest.raises(AuthError) as e:
            peer.receive(old.handshake())
        assert e.value.reason == "auth"
        assert handshake(new, peer, b"fresh") == b"fresh"  # counter reset with the new PSK
    finally:
        reg.close()


def test_unknown_device_is_a_hard_stop(fleet: Fleet) -> None:
    b = read_bundle(fleet.provision("s1"))
    stranger = DeviceSession(fleet.backend, b"s9", b"hub1", b.peer_keys[0], b.psk,
                             Msg1Counter(NonpersistingCounterStore()))
    peer, reg = fleet.peer()
    try:
        with pytest.raises(AuthError) as e:
            peer.receive(stranger.handshake())
        assert e.value.reason == "unknown-device"
        assert {r["device_id"]: r["reason"] for r in reg.refusals()} == {"(unknown)": "unknown-device"}
    finally:
        reg.close()
    listed = fleet.cli("registry", "list", "--registry", str(fleet.reg_path))
    assert listed["refused_unknown"] == 1 and listed["devices"][0]["refused"] == 0


def test_replay_stays_refused_after_a_peer_restart(fleet: Fleet) -> None:
    dev = fleet.device(fleet.provision("s1"))
    hs1 = dev.handshake(b"once")
    peer, reg = fleet.peer()
    try:
        peer.receive(hs1)
    finally:
        reg.close()
    peer, reg = fleet.peer()  # restarted peer: the counter came from disk
    try:
        with pytest.raises(ReplayError) as e:
            peer.receive(hs1)
        assert e.value.reason == "replay"
    finally:
        reg.close()


def test_rotation_overlap_then_retirement(fleet: Fleet) -> None:
    early = fleet.device(fleet.provision("early"))  # pins only the old key
    rot = fleet.cli("rotate", "--registry", str(fleet.reg_path), "--out", str(fleet.tmp / "hub1-2.key"))
    assert [d["device_id"] for d in rot["devices_on_old_key"]] == ["early"]
    late_bundle = fleet.provision("late")
    b = read_bundle(late_bundle)
    assert b.peer_keys[0].hex() == rot["rotated_to"] and len(b.peer_keys) == 2  # pins both, newest first
    late = fleet.device(late_bundle)

    peer, reg = fleet.peer()
    try:
        assert len(reg.statics()) == 2
        handshake(early, peer, b"old key")  # the peer answers on both keys
        handshake(late, peer, b"new key")
        assert reg.get(b"early").last_key_state == "previous"
        assert reg.get(b"late").last_key_state == "current"
    finally:
        reg.close()
    listed = fleet.cli("registry", "list", "--registry", str(fleet.reg_path), "--old-key")
    assert [d["device_id"] for d in listed["devices"]] == ["early"]

    # Retiring is refused while "early" pins only the old key ...
    refused = fleet.cli("rotate", "--registry", str(fleet.reg_path), "--retire", code=3)
    assert "early" in refused["error"]
    # ... so re-provision it (a reflash), then retire.
    early2 = fleet.device(fleet.provision("early", "--replace"))
    fleet.cli("rotate", "--registry", str(fleet.reg_path), "--retire")

    peer, reg = fleet.peer()
    try:
        assert len(reg.statics()) == 1
        handshake(late, peer, b"still fine")
        handshake(early2, peer, b"reflashed")
        # A device still on the old key (the unflashed old firmware) is refused.
        with pytest.raises(AuthError) as e:
            peer.receive(early.handshake(b"old key after retire"))
        assert e.value.reason == "auth"
    finally:
        reg.close()


def test_old_key_refused_after_forced_retirement(fleet: Fleet) -> None:
    stuck = fleet.device(fleet.provision("stuck"))
    fleet.cli("rotate", "--registry", str(fleet.reg_path), "--out", str(fleet.tmp / "n.key"))
    fleet.cli("rotate", "--registry", str(fleet.reg_path), "--retire", "--force")
    peer, reg = fleet.peer()
    try:
        with pytest.raises(AuthError) as e:
            peer.receive(stuck.handshake())
        assert e.value.reason == "auth"  # same PSK, but no live static key opens it
        assert reg.refusals(b"stuck")[0]["reason"] == "auth"
    finally:
        reg.close()


def test_device_with_a_wrong_pinned_key_cannot_complete_and_says_why(fleet: Fleet, tmp_path: Path) -> None:
    bundle = read_bundle(fleet.provision("s1"))
    impostor_pub = NaclBackend().generate_keypair()[1]
    dev = DeviceSession(fleet.backend, b"s1", b"hub1", impostor_pub, bundle.psk,
                        Msg1Counter(NonpersistingCounterStore()))
    peer, reg = fleet.peer()
    try:
        with pytest.raises(AuthError) as e:
            peer.receive(dev.handshake(b"x"))
        assert e.value.reason == "auth"
        hint = E.decode(e.value.reply)
        assert (hint.type, hint.reason) == (E.HINT, E.HINT_REFUSED)  # the device learns it was refused
        assert dev.receive(e.value.reply)[0] == EV_REFUSED and dev.transport is None
    finally:
        reg.close()
    shown = fleet.cli("registry", "show", "s1", "--registry", str(fleet.reg_path))
    assert {r["reason"]: r["count"] for r in shown["refusals"]} == {"auth": 1}
    # The bundle's own pinned key is the one whose fingerprint the operator compares.
    fpr = fleet.cli("fingerprint", str(fleet.tmp / "s1.bundle"))
    pub = fleet.cli("fingerprint", str(fleet.tmp / "hub1.pub"))
    assert fpr["keys"][0]["safety_number"] == pub["keys"][0]["safety_number"]
    assert impostor_pub.hex() not in json.dumps(fpr)
