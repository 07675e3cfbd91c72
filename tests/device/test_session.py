"""Sessions in envelopes: 0-RTT message 1 and its counter, binding of the
routing header, hints, reboots, refusals, and atomic failure."""

import pytest

from device import envelope as E
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.counter_file import FileCounterStore
from device.errors import AuthError, DecodeError, LocalError, RemoteError, ReplayError
from device.session import (EV_DATA, EV_HANDSHAKE, EV_NONE, EV_REFUSED, EV_REHANDSHAKE,
                            DeviceSession)
from tests.pair import Pair

ALL = ["Noise_NK_25519_ChaChaPoly_SHA256", "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
       "Noise_NK_25519_ChaChaPoly_BLAKE2s", "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s"]


@pytest.mark.parametrize("suite", ALL)
def test_zero_rtt_reading_then_both_directions(suite):
    p = Pair(suite)
    r = p.handshake(b"t=21.5")
    assert (r.kind, r.device_id, r.payload) == ("hs1", b"sensor-1", b"t=21.5")
    assert p.peer.receive(p.device.send(b"up")).payload == b"up"
    assert p.device.receive(p.peer.send(b"sensor-1", b"down")) == (EV_DATA, b"down")


def test_replayed_msg1_is_rejected_and_counted():
    p = Pair()
    hs1 = p.device.handshake(b"reading")
    p.peer.receive(hs1)
    with pytest.raises(ReplayError) as e:
        p.peer.receive(hs1)
    assert p.directory.refusals == {"replay": 1}
    # The answer is session.py Rule 8's authenticated counter notice (a
    # message 2 that makes no session), not a bare refusal hint.
    assert E.decode(e.value.reply).type == E.HS2
    assert len(p.peer.sessions(b"sensor-1")) == 1


def test_message1_counter_is_monotonic_across_reboots():
    p = Pair()
    p.handshake()
    p.device.handshake()  # lost message 1: its counter is burnt, never reused
    rebooted = p.new_device()
    r = p.peer.receive(rebooted.handshake(b"after reboot"))
    assert r.payload == b"after reboot"
    assert p.directory.counters[b"sensor-1"] >= 2


def test_counter_store_is_written_once_per_chunk(tmp_path):
    store = NonpersistingCounterStore()
    c = Msg1Counter(store, chunk=10)
    values = [c.next() for _ in range(25)]
    assert values == list(range(25)) and store.writes == 3
    # Reboot: resumes at the stored ceiling, skipping the unused rest.
    assert Msg1Counter(store, chunk=10).next() == 30
    f = FileCounterStore(str(tmp_path / "ctr"))
    c = Msg1Counter(f, chunk=4)
    assert [c.next() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert f.load() == 8 and Msg1Counter(FileCounterStore(str(tmp_path / "ctr"))).next() == 8


def test_damaged_counter_file_is_not_silently_reset(tmp_path):
    (tmp_path / "ctr").write_text("garbage")
    with pytest.raises(OSError):
        FileCounterStore(str(tmp_path / "ctr")).load()


def _tamper_positions(env):
    return range(len(env))


def test_tamper_at_every_byte_of_a_data_envelope_is_rejected():
    p = Pair()
    p.handshake()
    good = p.device.send(b"reading")
    for pos in _tamper_positions(good):
        for bit in (0x01, 0x80):
            bad = bytearray(good)
            bad[pos] ^= bit
            try:
                r = p.peer.receive(bytes(bad))
            except RemoteError:
                continue
            assert r.payload is None  # at most an unknown-session hint
    assert p.peer.receive(good).payload == b"reading"  # the good one still decrypts


def test_tamper_at_every_byte_of_message1_is_rejected():
    p = Pair()
    good = p.device.handshake(b"0rtt")
    for pos in range(len(good)):
        bad = bytearray(good)
        bad[pos] ^= 0x04
        with pytest.raises(RemoteError):
            p.peer.receive(bytes(bad))
    assert p.peer.receive(good).payload == b"0rtt"


def test_rerouted_envelope_fails_authentication():
    """A relay that rewrites the source id to another provisioned device."""
    p = Pair()
    p.directory.add(b"sensor-2", p.psk)  # even with the same PSK
    p.handshake()
    env = E.decode(p.device.send(b"x"))
    forged = E.encode(E.HEAD_DATA, b"sensor-2", b"hub", env.sid, env.msg, nonce=env.nonce)
    r = p.peer.receive(forged)
    assert r.kind == "hint" and r.payload is None
    hs1 = E.decode(p.new_device().handshake(b"x"))
    forged = E.encode(E.HEAD_HS1, b"sensor-2", b"hub", hs1.sid, hs1.msg)
    with pytest.raises(AuthError):
        p.peer.receive(forged)


def test_wrong_psk_unknown_device_and_revoked_are_refused_with_reasons():
    p = Pair()
    other = DeviceSession(p.backend, b"sensor-1", b"hub", p.static[1], bytes(32),
                          Msg1Counter(NonpersistingCounterStore(100)))
    with pytest.raises(AuthError):
        p.peer.receive(other.handshake())
    stranger = DeviceSession(p.backend, b"sensor-9", b"hub", p.static[1], p.psk,
                             Msg1Counter(NonpersistingCounterStore()))
    with pytest.raises(AuthError):
        p.peer.receive(stranger.handshake())
    p.directory.revoked.add(b"sensor-1")
    with pytest.raises(AuthError):
        p.peer.receive(p.device.handshake())
    assert p.directory.refusals == {"auth": 1, "unknown-device": 1, "revoked": 1}


def test_device_with_a_wrong_pinned_key_cannot_complete():
    p = Pair()
    impostor = p.backend.generate_keypair()
    dev = DeviceSession(p.backend, b"sensor-1", b"hub", impostor[1], p.psk,
                        Msg1Counter(NonpersistingCounterStore()))
    with pytest.raises(AuthError):
        p.peer.receive(dev.handshake())
    # And a relay answering with its own static key cannot forge message 2.
    from device.peer import NonpersistingDirectory, PeerSessions
    d = NonpersistingDirectory([impostor])
    d.add(b"sensor-1", p.psk)
    mitm = PeerSessions(p.backend, b"hub", d)
    hs1 = p.device.handshake()
    with pytest.raises(AuthError):
        mitm.receive(hs1)


def test_forged_message2_fails_and_the_device_can_start_over():
    p = Pair()
    hs1 = p.device.handshake()
    reply = bytearray(p.peer.receive(hs1).reply)
    reply[-1] ^= 1
    with pytest.raises(AuthError):
        p.device.receive(bytes(reply))
    assert not p.device.handshaking
    p.handshake()
    assert p.peer.receive(p.device.send(b"ok")).payload == b"ok"


def test_low_order_ephemeral_in_message1_is_refused():
    p = Pair("Noise_NK_25519_ChaChaPoly_SHA256")
    env = E.decode(p.device.handshake(b"x"))
    for point in (bytes(32), (1).to_bytes(32, "little"),
                  bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")):
        forged = E.encode(E.HEAD_HS1, b"sensor-1", b"hub", env.sid, point + env.msg[32:])
        with pytest.raises(AuthError):
            p.peer.receive(forged)


def test_unknown_session_hint_and_rate_limited_rehandshake():
    p = Pair(hint_interval=10)
    p.handshake()
    fresh_peer_side = Pair()  # a peer that restarted and lost its sessions
    fresh_peer_side.directory = p.directory
    from device.peer import PeerSessions
    restarted = PeerSessions(p.backend, b"hub", p.directory)
    r = restarted.receive(p.device.send(b"x"))
    assert r.kind == "hint"
    assert p.device.receive(r.reply, now=100)[0] == EV_REHANDSHAKE
    assert p.device.receive(r.reply, now=105)[0] == EV_NONE  # forged hints cannot force a storm
    assert p.device.receive(r.reply, now=111)[0] == EV_REHANDSHAKE
    r = restarted.receive(p.device.handshake(b"again"))
    assert p.device.receive(r.reply)[0] == EV_HANDSHAKE
    assert restarted.receive(p.device.send(b"y")).payload == b"y"


def test_in_flight_data_from_the_previous_session_still_decrypts():
    p = Pair()
    p.handshake()
    old = p.device.send(b"old")
    p.handshake()
    assert p.peer.receive(p.device.send(b"new")).payload == b"new"
    assert p.peer.receive(old).payload == b"old"


def test_envelope_for_someone_else_is_refused():
    p = Pair()
    p.handshake()
    with pytest.raises(DecodeError):
        p.device.receive(E.encode(E.HEAD_HINT, b"hub", b"sensor-2", 0, 0))
    with pytest.raises(LocalError):
        Pair().device.send(b"no session yet")


def test_peer_session_table_is_bounded():
    p = Pair("Noise_NK_25519_ChaChaPoly_SHA256", max_devices=3)
    for i in range(5):
        d = DeviceSession(p.backend, b"anon-%d" % i, b"hub", p.static[1], None,
                          Msg1Counter(NonpersistingCounterStore()), suite=p.peer.suite)
        p.peer.receive(d.handshake())
    assert len(p.peer._sessions) == 3
    assert p.peer.sessions(b"anon-0") == [] and p.peer.sessions(b"anon-4")


def test_a_refused_handshake_says_so_and_tries_the_next_pinned_key():
    p = Pair()
    retired = p.backend.generate_keypair()
    dev = DeviceSession(p.backend, b"sensor-1", b"hub", [retired[1], p.static[1]], p.psk,
                        Msg1Counter(NonpersistingCounterStore()))
    with pytest.raises(AuthError) as e:
        p.peer.receive(dev.handshake(b"r"))
    assert dev.receive(e.value.reply)[0] == EV_REFUSED and not dev.handshaking
    assert dev.peer_static == p.static[1]
    r = p.peer.receive(dev.handshake(b"r2"))
    assert dev.receive(r.reply)[0] == EV_HANDSHAKE and r.payload == b"r2"


def test_sessions_refuse_nkpsk2_whose_message1_authenticates_nobody():
    with pytest.raises(LocalError, match="NKpsk2"):
        Pair("Noise_NKpsk2_25519_ChaChaPoly_SHA256")
    p = Pair()
    with pytest.raises(LocalError, match="NKpsk2"):
        DeviceSession(p.backend, b"s", b"hub", p.static[1], p.psk,
                      Msg1Counter(NonpersistingCounterStore()),
                      suite="Noise_NKpsk2_25519_ChaChaPoly_SHA256")


def test_handshakes_whose_message2_is_lost_do_not_push_out_a_working_session():
    p = Pair()
    p.handshake()
    assert p.peer.receive(p.device.send(b"confirmed")).payload == b"confirmed"
    for _ in range(5):  # five new attempts; every message 2 is lost
        p.peer.receive(p.device.handshake())
    assert len(p.peer.sessions(b"sensor-1")) == 2
    assert p.peer.receive(p.device.send(b"still here")).payload == b"still here"
    assert p.device.receive(p.peer.send(b"sensor-1", b"down"))[0] == EV_DATA
