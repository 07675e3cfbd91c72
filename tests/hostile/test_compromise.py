"""What a later key compromise exposes from recorded traffic (issue 8,
docs/security.md "Forward secrecy" and "A stolen device").

The relay records everything. Later the attacker obtains the peer's static
private key (and the registry's PSKs with it), or steals one device (its
PSK, pinned key and counter file).
"""

from __future__ import annotations

import pytest

from device import envelope as E
from device.errors import AuthError
from device.noise import NKResponder

from .world import PEER, World

S1, S2 = b"sensor-1", b"sensor-2"
# The session suites (device/session.py Rule 6 refuses NKpsk2 for sessions).
SUITES = ["Noise_NKpsk0_25519_ChaChaPoly_SHA256", "Noise_NK_25519_ChaChaPoly_SHA256"]


def _record(suite):
    w = World(suite=suite)
    reading = w.secret(S1, PEER)
    hs1 = w.devices[S1].handshake(reading, 0)
    hs2 = w.up(hs1)
    w.down(S1, hs2)
    data = w.data_up(S1)
    w.up(data)
    return w, reading, hs1, data


@pytest.mark.parametrize("suite", SUITES)
def test_message1_payloads_lack_forward_secrecy_against_the_peer_key(suite):
    w, reading, hs1, _ = _record(suite)
    env = E.decode(hs1)
    prologue = E.PROLOGUE + hs1[:env.msg_off]
    # Later: the peer's static key leaks, with the registry (PSKs) beside it.
    psk = w.psks[S1]
    thief = NKResponder(w.backend, w.static, psk, prologue, suite)
    assert thief.read_message(env.msg)[4:] == reading


@pytest.mark.parametrize("suite", SUITES)
def test_transport_traffic_keeps_forward_secrecy_against_the_peer_key(suite):
    w, reading, hs1, data = _record(suite)
    env = E.decode(hs1)
    prologue = E.PROLOGUE + hs1[:env.msg_off]
    thief = NKResponder(w.backend, w.static, w.psks[S1], prologue, suite)
    thief.read_message(env.msg)
    thief.write_message(b"")  # the thief's own ephemeral: ee differs from the real one
    tr = thief.into_transport()
    d = E.decode(data)
    out = bytearray(max(0, d.msg_len - 16))
    with pytest.raises(AuthError):
        tr.decrypt_into(d.nonce, data, d.msg_off, data, d.msg_off, d.msg_len, out, 0)


def test_with_only_the_static_key_nkpsk0_message1_stays_closed():
    w, reading, hs1, _ = _record("Noise_NKpsk0_25519_ChaChaPoly_SHA256")
    env = E.decode(hs1)
    prologue = E.PROLOGUE + hs1[:env.msg_off]
    with pytest.raises(AuthError):
        NKResponder(w.backend, w.static, w.backend.random_bytes(32), prologue,
                    w.suite).read_message(env.msg)


def test_a_stolen_device_reads_no_recorded_traffic_and_speaks_only_as_itself():
    w = World(devices=(S1, S2))
    reading = w.secret(S1, PEER)
    hs1 = w.devices[S1].handshake(reading, 0)
    w.down(S1, w.up(hs1))
    env = E.decode(hs1)
    prologue = E.PROLOGUE + hs1[:env.msg_off]
    # The thief has sensor-1's PSK and the peer's public key, not its private key.
    fake_peer = w.backend.generate_keypair()
    with pytest.raises(AuthError):
        NKResponder(w.backend, fake_peer, w.psks[S1], prologue, w.suite).read_message(env.msg)
    # It can handshake as sensor-1 (that is what the stolen PSK is for; revoke it) ...
    from device.counter import Msg1Counter, NonpersistingCounterStore
    from device.session import DeviceSession
    thief = DeviceSession(w.backend, S1, PEER, w.static[1], w.psks[S1],
                          Msg1Counter(NonpersistingCounterStore(10_000)), suite=w.suite)
    assert w.up(thief.handshake(b"stolen", 1)) is not None
    assert w.peer_app[-1] == (S1, b"stolen")
    # ... but not as sensor-2, and not once sensor-1 is revoked.
    as_s2 = DeviceSession(w.backend, S2, PEER, w.static[1], w.psks[S1],
                          Msg1Counter(NonpersistingCounterStore(10_000)), suite=w.suite)
    w.up(as_s2.handshake(b"", 2))
    w.directory.revoked.add(S1)
    w.up(thief.handshake(b"", 3))
    assert w.directory.refusals == {"auth": 1, "revoked": 1}
