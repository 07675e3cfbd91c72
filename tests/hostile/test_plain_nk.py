"""What plain NK (``Noise_NK_...``, no PSK) gives against a malicious relay,
exactly as docs/security.md states it.

Plain NK senders are anonymous, so the peer cannot keep anybody from opening
sessions. It can keep them from hurting sessions that work: a session the
device has confirmed (sent data on) is never evicted by unconfirmed ones
(``device.peer`` Rule 5). What it cannot give: replay protection for the
0-RTT payload of a message 1 under an id the registry does not hold (the
registry keeps counters only for devices it holds, so forged ids cannot grow
it); such a message 1 is delivered each time it is replayed.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import ReplayError
from device.peer import PeerSessions
from device.session import DeviceSession
from moteseal.cli.main import main
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.keys.provision import read_bundle
from moteseal.keys.registry import Registry

from .world import PEER, World

NK = "Noise_NK_25519_ChaChaPoly_SHA256"
S1, S2 = b"sensor-1", b"sensor-2"


def anonymous(w: World, dev: bytes) -> DeviceSession:
    """Anybody who knows the peer's public key: no PSK, its own counter."""
    return DeviceSession(w.backend, dev, PEER, w.static[1], None,
                         Msg1Counter(NonpersistingCounterStore()), suite=NK)


def confirmed_sessions(w: World) -> dict[bytes, list[tuple[int, int]]]:
    return {d: [(sid, tr.send_nonce) for sid, tr in w.peer.sessions(d)] for d in (S1, S2)}


def test_a_plain_nk_flood_under_fresh_ids_evicts_no_confirmed_session():
    w = World(devices=(S1, S2), suite=NK, peer_opts={"max_devices": 8})
    for dev in (S1, S2):
        w.exchange(dev, now=0)  # handshake + data up: confirmed
    before = confirmed_sessions(w)
    for i in range(200):
        ghost = anonymous(w, b"ghost-%d" % i)
        assert w.up(ghost.handshake(b""), now=1) is not None  # accepted: anonymous by design
    assert len(w.peer._sessions) <= 8
    assert confirmed_sessions(w) == before
    for dev in (S1, S2):  # and they still work both ways without a new handshake
        got = len(w.peer_app)
        assert w.up(w.data_up(dev, now=2), now=2) is None and len(w.peer_app) == got + 1
        w.exchange(dev, now=3)
    w.check()


def test_when_every_slot_holds_a_confirmed_session_new_message1s_are_refused_busy():
    w = World(devices=(S1, S2), suite=NK, peer_opts={"max_devices": 2})
    for dev in (S1, S2):
        w.exchange(dev, now=0)
    before = confirmed_sessions(w)
    for i in range(20):
        w.up(anonymous(w, b"ghost-%d" % i).handshake(b""), now=1)
    assert w.directory.refusals == {"busy": 20}
    assert confirmed_sessions(w) == before
    for dev in (S1, S2):
        w.exchange(dev, now=2)
    w.check()


def test_plain_nk_message1_under_an_id_the_registry_lacks_is_delivered_each_time_it_is_replayed(
        tmp_path: Path):
    """The documented limit: no counter is kept for ids the registry does not
    hold, so their 0-RTT payloads have no replay protection; a provisioned
    plain-NK device's do."""
    runner = CliRunner()
    reg_path = tmp_path / "hub.sqlite"

    def cli(*args: str) -> None:
        r = runner.invoke(main, [*args, "--registry", str(reg_path), "--json"],
                          env={"MOTESEAL_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
        assert r.exit_code == 0, r.output

    cli("keygen", "--out", str(tmp_path / "hub.key"), "--peer", "hub")
    cli("provision", "known", "--suite", NK, "--out", str(tmp_path / "known.bundle"), "--link", "none")
    backend = NaclBackend()
    pin = read_bundle(tmp_path / "known.bundle").pinned_keys(b"hub")
    # (Built by hand: moteseal.keys.provision.device_session passes a plain-NK
    # bundle's unused PSK on, which NK refuses.)
    known, stranger = (DeviceSession(backend, dev, b"hub", pin, None,
                                     Msg1Counter(NonpersistingCounterStore()), suite=NK)
                       for dev in (b"known", b"stranger"))
    reg = Registry(reg_path)
    try:
        peer = PeerSessions(backend, b"hub", reg, suite=NK)
        recorded = stranger.handshake(b"open the valve")
        got = [peer.receive(recorded, float(t)).payload for t in range(3)]
        assert got == [b"open the valve"] * 3  # delivered on every replay
        assert reg.refusals() == []
        mine = known.handshake(b"t=20")
        assert peer.receive(mine, 10.0).payload == b"t=20"
        for t in range(3):
            try:
                peer.receive(mine, 11.0 + t)
            except ReplayError as e:
                assert e.reason == "replay"
            else:
                raise AssertionError("a provisioned device's message 1 was replayed")
        assert [(r["device_id"], r["reason"], r["count"]) for r in reg.refusals()] == [("known", "replay", 3)]
    finally:
        reg.close()
