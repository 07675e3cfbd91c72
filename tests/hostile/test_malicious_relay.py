"""A malicious relay between devices and their peer (issue 8).

The relay (``world.World.up``/``down``) is what a compromised gateway, broker
or network controls: it may replay, reorder, drop, duplicate, truncate, flip,
re-address and forge envelopes, and answer handshakes itself. For each
attack the test asserts what the device and the peer do, and every test ends
with ``World.check()``: the relay's view holds no plaintext, and every
payload either application received is a genuine one, sent by that sender to
that receiver, delivered once. Then the relay turns honest and traffic must
recover.
"""

from __future__ import annotations

import random

import pytest

from device import envelope as E
from device.errors import AuthError, LocalError
from device.noise import NKInitiator, NKResponder
from device.session import EV_COUNTER_BEHIND, EV_DATA, EV_HANDSHAKE, EV_NONE, EV_REHANDSHAKE

from .world import HOUR, PEER, World, flips, hint, rewrite

PSK_SUITES = ["Noise_NKpsk0_25519_ChaChaPoly_SHA256", "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s"]
ALL_SUITES = PSK_SUITES + ["Noise_NK_25519_ChaChaPoly_SHA256"]
S1, S2 = b"sensor-1", b"sensor-2"


def sessions_of(w: World, dev: bytes) -> list[tuple[int, int]]:
    """The peer's sessions for ``dev`` as (sid, transport identity)."""
    return [(sid, id(tr)) for sid, tr in w.peer.sessions(dev)]


# -- replays ------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_replayed_message1_is_refused_now_and_hours_later(suite):
    w = World(suite=suite)
    hs1 = w.hs1(S1, now=0)
    w.down(S1, w.up(hs1, now=0), now=0)
    before = sessions_of(w, S1)
    for now in (1, HOUR, 48 * HOUR):
        reply = w.up(hs1, now=now)
        # The refusal is session.py Rule 8's counter notice: a message 2 of
        # the replayed handshake, unreadable without its ephemeral; the
        # device, not waiting for it, drops it as unexpected.
        assert E.decode(reply).type == E.HS2
        assert w.down(S1, reply, now=now) == "DecodeError"
    assert w.peer_errors["ReplayError"] == 3
    assert w.directory.refusals == {"replay": 3}
    assert sessions_of(w, S1) == before  # the replay replaced no session
    assert len(w.peer_app) == 1  # the 0-RTT reading, once
    w.exchange(S1, now=49 * HOUR)
    w.check()


def test_replayed_message1_after_a_peer_restart_is_refused():
    w = World()
    hs1 = w.hs1(S1)
    w.down(S1, w.up(hs1))
    w.restart_peer()  # sessions gone, durable counters kept
    w.up(hs1, now=HOUR)
    assert w.peer_errors["ReplayError"] == 1 and w.peer.sessions(S1) == []
    assert len(w.peer_app) == 1
    w.exchange(S1, now=2 * HOUR)
    w.check()


def test_message1_held_back_and_delivered_late_is_delivered_once_or_refused():
    w = World()
    held = w.hs1(S1, now=0)  # the relay swallows it; the device tries again
    fresh = w.hs1(S1, now=10)
    assert w.down(S1, w.up(fresh, now=10), now=10) == EV_HANDSHAKE
    w.up(held, now=HOUR)  # its counter is below the one accepted since
    assert w.peer_errors["ReplayError"] == 1
    # The other order: the late one first is a genuine message delivered once;
    # its answer no longer matches what the device waits for.
    held = w.hs1(S1, now=20)
    fresh = w.hs1(S1, now=21)
    late_reply = w.up(held, now=22)
    assert w.down(S1, late_reply, now=22) == "DecodeError"
    assert w.down(S1, w.up(fresh, now=23), now=23) == EV_HANDSHAKE
    assert w.up(held, now=24) is not None and w.peer_errors["ReplayError"] == 2
    assert len(w.peer_app) == 3
    w.exchange(S1, now=30)
    w.check()


@pytest.mark.parametrize("suite", PSK_SUITES)
def test_replayed_transport_messages_are_delivered_once_now_and_hours_later(suite):
    w = World(suite=suite)
    w.handshake(S1)
    ups = [w.data_up(S1, now=1) for _ in range(5)]
    downs = [w.data_down(S1, now=1) for _ in range(5)]
    for env in ups:
        assert w.up(env, now=1) is None
    for env in downs:
        assert w.down(S1, env, now=1) == EV_DATA
    for now in (2, HOUR, 30 * HOUR):
        for env in ups:
            assert w.up(env, now=now) is None
        for env in downs:
            assert w.down(S1, env, now=now) == "ReplayError"
    assert w.peer_errors["ReplayError"] == 15 and w.device_errors["ReplayError"] == 15
    assert len(w.peer_app) == 1 + 5 and len(w.device_app[S1]) == 5
    w.exchange(S1, now=31 * HOUR)
    w.check()


def test_replay_after_the_session_age_limit_gets_an_expiry_hint_not_data():
    w = World(peer_opts={"max_age": HOUR}, max_age=HOUR)
    w.handshake(S1, now=0)
    env = w.data_up(S1, now=1)
    w.up(env, now=1)
    reply = w.up(env, now=2 * HOUR)
    assert E.decode(reply).reason == E.HINT_SESSION_EXPIRED
    assert len(w.peer_app) == 2
    # The device's own session is spent too; it handshakes again.
    assert w.devices[S1].transport.expired(2 * HOUR)
    w.devices[S1].transport = None
    w.exchange(S1, now=2 * HOUR)
    w.check()


def test_replayed_old_session_traffic_after_a_rehandshake_is_not_delivered():
    w = World()
    w.handshake(S1, now=0)
    old_up, old_down = w.data_up(S1, now=0), w.data_down(S1, now=0)
    w.up(old_up)
    w.down(S1, old_down)
    for i in range(3):  # three used sessions later, both sides have forgotten the first
        w.handshake(S1, now=10 + i)
        assert w.up(w.data_up(S1, now=10 + i), now=10 + i) is None
    assert w.up(old_up, now=HOUR) is not None  # an unknown-session hint
    assert w.peer_errors["hint"] == 1
    # The device has moved on: the old session's data and the hint about it are ignored.
    assert w.down(S1, old_down, now=HOUR) == "DecodeError"
    assert w.down(S1, hint(S1, E.decode(old_up).sid), now=HOUR) == EV_NONE
    assert len(w.peer_app) == 2 + 3 * 2 and w.device_app[S1] == [w.device_app[S1][0]]
    w.exchange(S1, now=HOUR + 1)
    w.check()


# -- reorder, drop, duplicate ---------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_reordered_dropped_and_duplicated_traffic_arrives_at_most_once(seed):
    rng = random.Random(seed)
    w = World(window=64, peer_opts={"window": 64})
    w.handshake(S1)
    ups = [w.data_up(S1) for _ in range(200)]
    downs = [w.data_down(S1) for _ in range(200)]
    for stream, deliver in ((ups, lambda e: w.up(e)), (downs, lambda e: w.down(S1, e))):
        carried = [e for e in stream if rng.random() > 0.1]  # drop 10 %
        carried += [rng.choice(stream) for _ in range(40)]  # 40 duplicates
        # Reorder: each message moves up to 100 places (beyond the 64 window).
        keyed = sorted(((i + rng.uniform(0, 100), e) for i, e in enumerate(carried)),
                       key=lambda t: t[0])
        for _, e in keyed:
            deliver(e)
    # Whatever was refused, it was refused as a replay (duplicate or too old).
    assert set(w.peer_errors) <= {"ReplayError"} and set(w.device_errors) <= {"ReplayError"}
    assert len(w.peer_app) > 100 and len(w.device_app[S1]) > 100
    w.exchange(S1, now=1)
    w.check()  # nothing twice


def test_dropped_messages_never_desynchronise():
    w = World()
    w.handshake(S1)
    for i in range(100):
        up, down = w.data_up(S1), w.data_down(S1)
        if i % 7 == 0:
            continue  # the relay drops both
        assert w.up(up) is None and w.down(S1, down) == EV_DATA
    w.exchange(S1, now=1)
    w.check()


# -- truncation and bit flips ---------------------------------------------------


def test_truncated_envelopes_are_refused_and_change_nothing():
    w = World()
    hs1 = w.hs1(S1)
    hs2 = w.up(hs1)
    for k in range(len(hs2)):
        assert w.down(S1, hs2[:k]) == "DecodeError"
    assert w.down(S1, hs2) == EV_HANDSHAKE  # the handshake survived every prefix
    tr = w.devices[S1].transport
    for k in range(len(hs1)):
        w.up(hs1[:k])
    up, down = w.data_up(S1), w.data_down(S1)
    hi_peer = w.peer.sessions(S1)[0][1].window.hi
    hi_dev = tr.window.hi
    for k in range(len(up)):
        w.up(up[:k])
        assert w.down(S1, down[:k]) == "DecodeError"
    assert w.peer.sessions(S1)[0][1].window.hi == hi_peer and tr.window.hi == hi_dev
    assert set(w.peer_errors) == {"DecodeError"}
    assert w.up(up) is None and w.down(S1, down) == EV_DATA
    w.check()


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_no_single_bit_flip_in_any_envelope_is_accepted(suite):
    w = World(suite=suite)
    hs1 = w.hs1(S1)
    for _, bad in flips(hs1):
        w.up(bad)
    # In PSK suites nothing came through; with plain NK a flipped src makes
    # the prologue differ, so nothing came through either.
    assert w.peer_app == [] and w.peer.sessions(S1) == []
    hs2 = w.up(hs1)
    assert len(w.peer_app) == 1
    # Flips in hs2: a flip in the routing header is refused before the
    # handshake is touched; a flip in the Noise message kills this attempt.
    killed = 0
    for i in range(len(hs2) * 8):
        bad = bytearray(hs2)
        bad[i // 8] ^= 1 << (i % 8)
        r = w.down(S1, bytes(bad))
        assert r in ("DecodeError", "AuthError"), r
        if r == "AuthError":
            killed += 1
            assert not w.devices[S1].handshaking
            hs2 = w.up(w.hs1(S1))  # the device starts over
    assert killed == E.decode(hs2).msg_len * 8  # every bit of e and of the tag
    assert w.down(S1, hs2) == EV_HANDSHAKE
    up, down = w.data_up(S1), w.data_down(S1)
    n_app = len(w.peer_app)
    for _, bad in flips(up):
        reply = w.up(bad)
        assert reply is None or E.decode(reply).type == E.HINT
    for _, bad in flips(down):
        assert w.down(S1, bad) in ("DecodeError", "AuthError")
    assert len(w.peer_app) == n_app and w.device_app[S1] == []
    assert w.up(up) is None and w.down(S1, down) == EV_DATA
    w.check()


# -- re-addressing ----------------------------------------------------------------


def test_swapped_source_and_destination_are_refused():
    w = World()
    w.handshake(S1)
    up, down = w.data_up(S1), w.data_down(S1)
    # The device's own message reflected back to it, re-addressed as from the peer.
    assert w.down(S1, rewrite(up, src=PEER, dst=S1)) == "AuthError"
    # And the peer's message reflected back to the peer.
    w.up(rewrite(down, src=S1, dst=PEER))
    # Reflected without re-addressing: not for the receiver.
    assert w.down(S1, up) == "DecodeError"
    w.up(down)
    # hs1 reflected to the device, hs2 reflected to the peer.
    hs1 = w.hs1(S1)
    hs2 = w.up(hs1)
    assert w.down(S1, rewrite(hs1, src=PEER, dst=S1)) == "DecodeError"
    w.up(rewrite(hs2, src=S1, dst=PEER))
    assert w.peer_errors["AuthError"] == 1 and w.peer_errors["DecodeError"] == 2
    assert w.down(S1, hs2) == EV_HANDSHAKE
    # Both sides keep the previous session, so traffic in flight across the
    # re-handshake still opens.
    assert w.up(up) is None and w.down(S1, down) == EV_DATA
    w.exchange(S1, now=1)
    w.check()


def test_rerouted_envelopes_are_refused_by_every_other_receiver():
    w = World(devices=(S1, S2))
    w.handshake(S1)
    w.handshake(S2)
    up1, down1 = w.data_up(S1), w.data_down(S1)
    # sensor-1's upstream message presented as sensor-2's (same sid or not).
    for sid in range(24):
        reply = w.up(rewrite(up1, src=S2, sid=sid))
        assert reply is None or E.decode(reply).reason == E.HINT_UNKNOWN_SESSION
    # The peer's message for sensor-1 delivered to sensor-2.
    s2_sid = w.devices[S2].sid
    assert w.down(S2, rewrite(down1, dst=S2, sid=s2_sid)) == "AuthError"
    assert w.down(S2, down1) == "DecodeError"
    # sensor-1's message 1 presented as sensor-2's.
    w.up(rewrite(w.hs1(S1), src=S2))
    assert w.directory.refusals == {"auth": 1}
    assert w.peer_app.count((S2, b"")) == 0 and len(w.peer_app) == 2
    # A second peer (other keys, same id) is not the pinned one.
    other = World(devices=(S1,))
    other.psks[S1] = w.psks[S1]
    other.directory.add(S1, w.psks[S1])
    w.devices[S1].transport = None
    assert other.up(w.hs1(S1)) is not None
    assert other.peer_app == [] and other.directory.refusals == {"auth": 1}
    assert other.up(up1) is not None and other.peer_errors["hint"] == 1
    for d in (S1, S2):
        w.exchange(d, now=1)
    w.view += other.view  # what the relay showed the other peer, it saw too
    w.check()


def test_a_data_envelope_spliced_into_another_session_is_refused():
    w = World()
    w.handshake(S1)
    old = w.data_up(S1)
    w.handshake(S1, now=1)
    new_sid = w.devices[S1].sid
    assert w.up(rewrite(old, sid=new_sid)) is None
    assert w.peer_errors["AuthError"] == 1 and len(w.peer_app) == 2
    # Renumbering the nonce of a genuine message does not make it fresh.
    env = w.data_up(S1)
    assert w.up(env) is None
    for nonce in (1, 5, 1000):
        w.up(rewrite(env, nonce=nonce))
    assert w.peer_errors["AuthError"] == 4 and len(w.peer_app) == 3
    w.check()


# -- a relay that plays the peer ---------------------------------------------------


@pytest.mark.parametrize("suite", PSK_SUITES)
@pytest.mark.parametrize("knows_psk", [False, True])
def test_a_relay_with_its_own_static_key_can_neither_read_nor_answer_message1(suite, knows_psk):
    w = World(suite=suite)
    dev = w.devices[S1]
    mallory = w.backend.generate_keypair()
    psk = w.psks[S1] if knows_psk else w.backend.random_bytes(32)
    hs1 = w.hs1(S1)
    env = E.decode(hs1)
    prologue = E.PROLOGUE + hs1[:env.msg_off]
    # Reading message 1 needs the pinned peer's private key.
    with pytest.raises(AuthError):
        NKResponder(w.backend, mallory, psk, prologue, suite).read_message(env.msg)
    # Answering it with a handshake of its own (its own initiator, the same
    # header, the PSK if it has it) gives a message 2 the device refuses.
    mine = NKInitiator(w.backend, mallory[1], psk, prologue, suite)
    resp = NKResponder(w.backend, mallory, psk, prologue, suite)
    resp.read_message(mine.write_message(b"\0\0\0\x63"))
    forged = E.encode(E.HEAD_HS2, PEER, S1, env.sid, resp.write_message(b"you are mine"))
    assert w.down(S1, forged) == "AuthError"
    assert dev.transport is None and not dev.handshaking
    assert w.device_app[S1] == []
    w.exchange(S1, now=1)
    w.check()


def test_plain_nk_with_a_relay_key_fails_at_the_device_too():
    w = World(suite="Noise_NK_25519_ChaChaPoly_SHA256")
    mallory = w.backend.generate_keypair()
    hs1 = w.hs1(S1)
    env = E.decode(hs1)
    prologue = E.PROLOGUE + hs1[:env.msg_off]
    suite = w.suite
    with pytest.raises(AuthError):
        NKResponder(w.backend, mallory, None, prologue, suite).read_message(env.msg)
    mine = NKInitiator(w.backend, mallory[1], None, prologue, suite)
    resp = NKResponder(w.backend, mallory, None, prologue, suite)
    resp.read_message(mine.write_message(b"\0\0\0\x63"))
    forged = E.encode(E.HEAD_HS2, PEER, S1, env.sid, resp.write_message(b""))
    assert w.down(S1, forged) == "AuthError"
    w.exchange(S1, now=1)
    w.check()


def test_a_stale_message2_with_a_reused_session_id_only_costs_a_retry():
    w = World()
    old_hs2 = w.up(w.hs1(S1))
    w.down(S1, old_hs2)
    w.reboot(S1)  # no live session; the counter resumes at the next chunk (4)
    for _ in range(20):  # counters 4..23 (sid = counter mod 24): counter 24 reuses sid 0
        w.hs1(S1)
    genuine = w.up(w.devices[S1].handshake(b""))
    assert E.decode(genuine).sid == E.decode(old_hs2).sid
    assert w.down(S1, old_hs2) == "AuthError"  # the stale answer kills this attempt
    assert w.down(S1, genuine) == "DecodeError"  # ... which is over
    w.exchange(S1, now=1)  # and the device simply starts over
    w.check()


def test_a_new_handshake_never_reuses_the_live_session_id():
    w = World()
    w.handshake(S1)
    live = w.devices[S1].sid
    for _ in range(40):  # attempts the relay swallows
        hs1 = w.hs1(S1)
        assert E.decode(hs1).sid != live
    # The consequence if it did: the relay lets that attempt reach the peer,
    # kills it at the device with a forged message 2, and the device's live
    # session is then refused by the peer without a hint.
    w.up(hs1)
    forged = E.encode(E.HEAD_HS2, PEER, S1, E.decode(hs1).sid, bytes(48))
    assert w.down(S1, forged) == "AuthError"
    n = len(w.peer_app)
    assert w.up(w.data_up(S1)) is None and len(w.peer_app) == n + 1
    w.check()


def test_downlink_sent_while_message2_is_lost_still_reaches_the_device():
    w = World()
    w.handshake(S1)
    w.up(w.hs1(S1))  # the relay drops the answer
    assert w.up(w.data_up(S1)) is None  # the device still talks on its session
    assert w.down(S1, w.data_down(S1)) == EV_DATA
    w.check()


# -- forged hints and floods --------------------------------------------------------


def test_forged_unknown_session_hints_cause_at_most_one_handshake_per_interval():
    w = World(hint_interval=5)
    w.handshake(S1, now=0)
    sid = w.devices[S1].sid
    events = [w.down(S1, hint(S1, sid, reason), now=10 + i / 1000)
              for i in range(1000) for reason in (0, 1, 2)]
    assert events.count(EV_REHANDSHAKE) == 1 and events.count(EV_NONE) == 2999
    # Over 60 seconds of the device's clock: at most one per 5 seconds.
    events = [w.down(S1, hint(S1, sid), now=20 + i / 10) for i in range(600)]
    assert events.count(EV_REHANDSHAKE) <= 60 // 5 + 1
    # The hint tore nothing down: the current session still works both ways.
    assert w.up(w.data_up(S1, now=90), now=90) is None
    assert w.down(S1, w.data_down(S1, now=90), now=90) == EV_DATA
    w.check()


def test_forged_hints_about_other_sessions_or_devices_are_ignored():
    w = World(devices=(S1, S2))
    w.handshake(S1)
    sid = w.devices[S1].sid
    for other in range(24):
        if other != sid:
            assert w.down(S1, hint(S1, other), now=100) == EV_NONE
    assert w.down(S1, hint(S2, sid), now=100) == "DecodeError"  # addressed to sensor-2
    assert w.down(S1, E.encode(E.HEAD_HINT, S2, S1, sid, 0), now=100) == "DecodeError"
    assert w.rehandshake_requests[S1] == 0
    w.exchange(S1, now=101)
    w.check()


def test_a_handshake_flood_changes_no_session():
    w = World(devices=(S1, S2))
    w.handshake(S1)
    w.directory.revoked.add(S2)
    hs1 = w.hs1(S1)
    w.up(hs1)
    before = sessions_of(w, S1)
    rng = random.Random(1)
    for i in range(300):
        w.up(hs1, now=i)  # verbatim replays
        forged = bytearray(hs1)
        forged[-rng.randrange(1, 60)] ^= 1 + rng.randrange(255)
        w.up(bytes(forged), now=i)  # forged under sensor-1's id
        w.up(rewrite(hs1, src=b"ghost-%d" % i), now=i)  # devices nobody provisioned
    for _ in range(20):
        w.up(w.hs1(S2))  # a revoked device
    assert w.directory.refusals == {"replay": 300, "auth": 300, "unknown-device": 300,
                                    "revoked": 20}
    assert sessions_of(w, S1) == before
    assert w.peer.sessions(S2) == [] and w.peer.sessions(b"ghost-7") == []
    assert len(w.peer_app) == 2
    w.exchange(S1, now=1000)
    w.check()


def test_plain_nk_senders_are_anonymous_as_documented():
    """docs/security.md: with plain NK anyone who knows the peer's public key
    can send message 1 under any id and counter; the counter then stops only
    verbatim replays. This pins that documented limit."""
    w = World(suite="Noise_NK_25519_ChaChaPoly_SHA256")
    w.handshake(S1)
    # Mallory builds a message 1 from scratch under sensor-1's id with a high counter.
    hdr = bytearray(E.HEADER_MAX_BYTES)
    off = E.encode_header_into(hdr, E.HEAD_HS1, S1, PEER, 5, -1, 32 + 4 + 5 + 16)
    header = bytes(hdr[:off])
    mine = NKInitiator(w.backend, w.static[1], None, E.PROLOGUE + header, w.suite)
    forged = header + mine.write_message(b"\x00\x10\x00\x00" + b"fake!")
    assert w.up(forged) is not None
    assert w.peer_app[-1] == (S1, b"fake!")  # accepted: plain NK cannot tell
    # ... and the genuine device's next counter is now below the forged one:
    # refused once, with the peer's authenticated counter notice (session.py
    # Rule 8), after which the device's counter is past the forged one.
    notice = w.up(w.hs1(S1))
    assert w.directory.refusals == {"replay": 1}
    assert w.down(S1, notice) == EV_COUNTER_BEHIND
    w.handshake(S1)
    assert w.directory.counters[S1] == 0x100000 + 1
    # The same attack on NKpsk0 is refused.
    v = World()
    mine = NKInitiator(v.backend, v.static[1], v.backend.random_bytes(32),
                       E.PROLOGUE + header, v.suite)
    v.up(header + mine.write_message(b"\x00\x10\x00\x00" + b"fake!"))
    assert v.peer_app == [] and v.directory.refusals == {"auth": 1}
    v.exchange(S1, now=1)
    w.assert_no_plaintext_revealed()


def test_nkpsk2_is_refused_for_sessions_because_its_message1_authenticates_nobody():
    """With NKpsk2 the PSK enters only at message 2, so anyone who knows the
    peer's public key could forge a 0-RTT reading and a high counter for any
    device; the session layer therefore refuses that suite outright."""
    with pytest.raises(LocalError, match="NKpsk2"):
        World(suite="Noise_NKpsk2_25519_ChaChaPoly_SHA256")
