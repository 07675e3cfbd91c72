"""Forged "refused" hints (reason 2) and pinned-key overlap (issue 8).

A refusal hint is unauthenticated. A device that gets one for its pending
handshake ends that attempt (``EV_REFUSED``) and its next handshake tries
its next pinned key, so a relay can end attempts (no worse than dropping
message 2) and can steer a device that pins two keys during a rotation
overlap to the older one. These tests pin what that can and cannot buy the
relay; docs/security.md draws the consequence (remove a key you believe
compromised from the pins at once; keep a PSK suite).
"""

from __future__ import annotations

import pytest

from device import envelope as E
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import AuthError
from device.noise import NKResponder
from device.session import EV_HANDSHAKE, EV_NONE, EV_REFUSED, EV_REHANDSHAKE, DeviceSession
from device.peer import NonpersistingDirectory, PeerSessions

from .world import PEER, World, hint

S1 = b"sensor-1"


def test_a_forged_refusal_only_ends_the_pending_attempt():
    w = World()
    w.handshake(S1)
    live = w.devices[S1].sid
    hs1 = w.hs1(S1)
    pending = E.decode(hs1).sid
    # About other sessions, including the live one: ignored.
    for sid in range(24):
        if sid != pending:
            assert w.down(S1, hint(S1, sid, E.HINT_REFUSED), now=10) in (EV_NONE, EV_REHANDSHAKE)
    assert w.devices[S1].handshaking
    assert w.down(S1, hint(S1, pending, E.HINT_REFUSED), now=10) == EV_REFUSED
    assert not w.devices[S1].handshaking
    assert w.devices[S1].sid == live  # the live session is untouched
    assert w.up(w.data_up(S1, now=11), now=11) is None
    w.exchange(S1, now=20)
    w.check()


def _overlap(suite):
    """A peer that rotated its key (serves new and old) and a device that
    pins both, newest first."""
    w = World(suite=suite)
    old = w.static
    new = w.backend.generate_keypair()
    w.directory = NonpersistingDirectory([new, old])
    psk = w.psks[S1]
    if psk is not None:
        w.directory.add(S1, psk)
    w.peer = PeerSessions(w.backend, PEER, w.directory, suite=suite)
    dev = DeviceSession(w.backend, S1, PEER, [new[1], old[1]], psk,
                        Msg1Counter(NonpersistingCounterStore()), suite=suite)
    w.devices[S1] = dev
    return w, new, old


@pytest.mark.parametrize("suite", ["Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                                   "Noise_NK_25519_ChaChaPoly_SHA256"])
def test_forged_refusals_steer_a_two_key_device_to_its_older_pin(suite):
    w, new, old = _overlap(suite)
    psk = w.psks[S1]
    hs1 = w.devices[S1].handshake(b"", 0)
    env = E.decode(hs1)
    prologue = E.PROLOGUE + hs1[:env.msg_off]
    # The first attempt is sealed to the newest pin: the old key cannot read it.
    with pytest.raises(AuthError):
        NKResponder(w.backend, old, psk, prologue, suite).read_message(env.msg)
    assert w.down(S1, hint(S1, env.sid, E.HINT_REFUSED), now=1) == EV_REFUSED
    hs1 = w.devices[S1].handshake(b"", 2)
    env = E.decode(hs1)
    prologue = E.PROLOGUE + hs1[:env.msg_off]
    # The next is sealed to the older pin. A relay holding the old private
    # key (the reason it was rotated out) but not the PSK learns nothing ...
    if psk is not None:
        with pytest.raises(AuthError):
            NKResponder(w.backend, old, w.backend.random_bytes(32), prologue,
                        suite).read_message(env.msg)
        return
    # ... but with plain NK the old key is all it takes to play the peer.
    mallory = NKResponder(w.backend, old, None, prologue, suite)
    assert mallory.read_message(env.msg)[:4] == b"\0\0\0\x01"
    reply = E.encode(E.HEAD_HS2, PEER, S1, env.sid, mallory.write_message(b"I am hub"))
    assert w.down(S1, reply, now=3) == EV_HANDSHAKE  # documented in docs/security.md


def test_with_both_keys_served_honest_traffic_survives_forged_refusals():
    w, new, old = _overlap("Noise_NKpsk0_25519_ChaChaPoly_SHA256")
    for i in range(5):  # every attempt refused by the relay; pins cycle
        hs1 = w.devices[S1].handshake(b"", i)
        assert w.down(S1, hint(S1, E.decode(hs1).sid, E.HINT_REFUSED), now=i) == EV_REFUSED
    w.exchange(S1, now=10)  # the peer serves both keys: either pin completes
    w.check()
