"""The transport phase: explicit nonces, the replay window, rekey epochs,
limits, atomic failure, and a lossy link."""

import pytest
from hypothesis import given, settings, strategies as st

from device.errors import (AuthError, BufferTooSmall, DecodeError, MessageTooLarge,
                           ReplayError, SessionExpired)
from device.replay import ReplayWindow
from tests.pair import LossyLink, Pair, deliver


def transports(**limits):
    from moteseal.crypto.backend_nacl import NaclBackend
    from device.noise import NKInitiator, NKResponder
    b = NaclBackend()
    s = b.generate_keypair()
    i = NKInitiator(b, s[1], psk=bytes(32))
    r = NKResponder(b, s, psk=bytes(32))
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    return i.into_transport(**limits), r.into_transport(**limits)


def test_reordered_messages_inside_the_window_decrypt_once():
    a, b = transports()
    wires = [a.encrypt(b"%d" % i) for i in range(100)]
    order = list(range(100))
    order[10:30] = reversed(order[10:30])
    for i in order:
        assert b.decrypt(wires[i]) == b"%d" % i
    for i in (0, 50, 99):
        with pytest.raises(ReplayError):
            b.decrypt(wires[i])


def test_messages_older_than_the_window_are_rejected():
    a, b = transports(window=64)
    wires = [a.encrypt(b"x") for _ in range(200)]
    b.decrypt(wires[199])
    with pytest.raises(ReplayError, match="older"):
        b.decrypt(wires[199 - 64])
    assert b.decrypt(wires[199 - 63]) == b"x"


def test_a_loss_never_desynchronises():
    a, b = transports(rekey_interval=64, window=64)
    wires = [a.encrypt(b"%d" % i) for i in range(600)]
    for i in (0, 1, 250, 251, 599):  # long gaps, across several rekeys
        assert b.decrypt(wires[i]) == b"%d" % i


def test_reordering_across_a_rekey_boundary():
    a, b = transports(rekey_interval=16, window=16)
    wires = [a.encrypt(b"%d" % i) for i in range(40)]
    for i in (17, 16, 18, 14, 15, 33, 31, 32, 30):
        assert b.decrypt(wires[i]) == b"%d" % i
    with pytest.raises(ReplayError):
        b.decrypt(wires[3])  # two epochs back: too old


def test_rekey_changes_the_key():
    a, b = transports(rekey_interval=8, window=8)
    a2, _ = transports(rekey_interval=1 << 16)
    w = [a.encrypt(b"same") for _ in range(9)]
    # Same plaintext, nonce 0 vs nonce 8 under different epochs: the epoch-1 key is
    # Rekey(k); opening nonce 8 with the epoch-0 key would fail.
    assert b.decrypt(w[8]) == b"same"


def test_a_far_future_nonce_is_refused_without_state_change():
    a, b = transports(rekey_interval=8, window=8)
    wire = bytearray(a.encrypt(b"x"))
    wire[:8] = (8 * 100).to_bytes(8, "big")
    with pytest.raises(DecodeError):
        b.decrypt(bytes(wire))
    assert b.window.hi == -1


def test_failed_decrypt_changes_nothing():
    a, b = transports(rekey_interval=8, window=8)
    wires = [a.encrypt(b"%d" % i) for i in range(12)]
    bad = bytearray(wires[9])
    bad[-1] ^= 0x80
    with pytest.raises(AuthError):
        b.decrypt(bytes(bad))
    assert b.window.hi == -1 and b._r_epoch == 0
    assert b.decrypt(wires[9]) == b"9"
    assert b.decrypt(wires[3]) == b"3"


@pytest.mark.parametrize("pos", range(8 + 5 + 16))
def test_tamper_at_every_byte_of_a_bare_transport_message(pos):
    a, b = transports()
    wire = bytearray(a.encrypt(b"hello"))
    wire[pos] ^= 0x01
    with pytest.raises((AuthError, DecodeError, ReplayError)):
        b.decrypt(bytes(wire))
    assert b.window.hi == -1


def test_limits():
    a, b = transports(max_messages=3, max_age=10, now=100, max_payload=8)
    with pytest.raises(MessageTooLarge):
        a.encrypt(b"123456789")
    with pytest.raises(SessionExpired):
        a.encrypt(b"x", now=111)
    for _ in range(3):
        a.encrypt(b"x", now=105)
    with pytest.raises(SessionExpired):
        a.encrypt(b"x")
    assert a.expired()
    a, b = transports()
    with pytest.raises(BufferTooSmall):
        a.encrypt_into(b"", 0, b"xx", 0, 2, bytearray(17), 0)
    assert a.send_nonce == 0


def test_truncated_bare_message():
    a, b = transports()
    with pytest.raises(DecodeError):
        b.decrypt(a.encrypt(b"")[:23])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=200),
       st.sampled_from([8, 64, 128]))
def test_replay_window_accepts_each_fresh_nonce_exactly_once(nonces, size):
    w = ReplayWindow(size)
    accepted = set()
    hi = -1
    for n in nonces:
        fresh = n not in accepted and n > hi - size
        try:
            w.check(n)
        except ReplayError:
            assert not fresh
            continue
        assert fresh
        w.commit(n)
        accepted.add(n)
        hi = max(hi, n)


@pytest.mark.parametrize("seed", range(8))
def test_lossy_link_delivers_every_intact_message_exactly_once(seed):
    p = Pair(window=64)
    p.handshake()
    sent = [p.device.send(b"reading %d" % i) for i in range(300)]
    carried = LossyLink(seed).carry(sent)
    got, errors = deliver(p.peer, carried)
    intact = {i for i, _, ok in carried if ok}
    # Everything intact arrives exactly once (reordering stays inside the window).
    assert sorted(got) == sorted(b"reading %d" % i for i in intact)
    assert len(got) == len(set(got))
    # Everything else was refused with a remote error, never delivered.
    assert len(errors) == len(carried) - len(got)
