"""A device whose message-1 counter store was wiped recovers
(device/session.py Rule 8) without weakening replay protection."""

import pytest

from device import envelope as E
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import AuthError, DecodeError, ReplayError
from device.session import EV_COUNTER_BEHIND, EV_DATA, EV_HANDSHAKE, DeviceSession
from tests.pair import Pair


def _run_up(p, handshakes):
    for _ in range(handshakes):
        p.handshake()
    return p.directory.counters[b"sensor-1"]


def _wiped_device(p):
    """The same provisioning after the counter file was lost: counting
    restarts at 0."""
    store = NonpersistingCounterStore()
    return store, DeviceSession(p.backend, b"sensor-1", b"hub", p.static[1], p.psk,
                                Msg1Counter(store, chunk=4), suite=p.peer.suite)


@pytest.mark.parametrize("suite", ["Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                                   "Noise_NK_25519_ChaChaPoly_BLAKE2s"])
def test_a_device_with_a_wiped_counter_store_recovers_in_one_more_handshake(suite):
    p = Pair(suite)
    highest = _run_up(p, 40)  # the peer holds counter 39 for this device
    store, dev = _wiped_device(p)
    with pytest.raises(ReplayError) as e:
        p.peer.receive(dev.handshake(b"lost reading"))
    assert e.value.reason == "replay"
    assert dev.receive(e.value.reply) == (EV_COUNTER_BEHIND, b"")
    assert not dev.handshaking and dev.transport is None
    # The next handshake's counter is past the peer's: accepted.
    r = p.peer.receive(dev.handshake(b"after recovery"))
    assert r.payload == b"after recovery"
    assert p.directory.counters[b"sensor-1"] == highest + 1
    assert store.value > highest + 1  # the jump was made durable before use
    assert dev.receive(r.reply)[0] == EV_HANDSHAKE
    assert p.peer.receive(dev.send(b"up")).payload == b"up"
    assert dev.receive(p.peer.send(b"sensor-1", b"down")) == (EV_DATA, b"down")


def test_replay_protection_is_unchanged():
    p = Pair()
    dev = p.device
    hs1 = dev.handshake(b"reading")
    r = p.peer.receive(hs1)
    dev.receive(r.reply)
    # A captured message 1 replayed: refused, no session made, payload not
    # delivered; the notice goes to a device that has no use for it.
    with pytest.raises(ReplayError) as e:
        p.peer.receive(hs1)
    assert [s[0] for s in p.peer.sessions(b"sensor-1")] == [dev.sid]
    with pytest.raises(DecodeError):  # no handshake pending: "unexpected"
        dev.receive(e.value.reply)
    # And the notice cannot be replayed into a later handshake of the device
    # (it is bound to the ephemeral of the attempt it answers).
    dev.handshake()
    notice = bytearray(e.value.reply)
    with pytest.raises((AuthError, DecodeError)):
        dev.receive(bytes(notice))


def test_a_forged_notice_moves_no_counter():
    # Without the peer's static key (and PSK) a message 2 cannot be made:
    # a forged one fails authentication and the counter stays put.
    p = Pair()
    store, dev = _wiped_device(p)
    hs1 = dev.handshake()
    env = E.decode(hs1)
    forged = E.encode(E.HEAD_HS2, b"hub", b"sensor-1", env.sid, bytes(32 + 5 + 16))
    with pytest.raises(AuthError):
        dev.receive(forged)
    assert store.value == 4  # only the first chunk reserved
    r = p.peer.receive(dev.handshake())
    assert r.kind == "hs1"

