"""A malicious relay's whole campaign at once (issue 8): every attack of
``test_malicious_relay.py``, mixed at random with honest forwarding, peer
restarts and device reboots; then the relay turns honest and traffic must
recover. Every run ends with ``World.check()`` (no plaintext on the relay,
nothing forged or doubled delivered).
"""

from __future__ import annotations

import random

import pytest

from device import envelope as E
from device.errors import RemoteError
from device.noise import NKResponder

from .world import HOUR, PEER, World, hint, rewrite

S1, S2 = b"sensor-1", b"sensor-2"


@pytest.mark.parametrize("seed", range(6))
def test_a_random_attack_campaign_then_honest_traffic_recovers(seed):
    """Three devices; the relay mixes honest forwarding with every attack
    above, chosen at random, including peer restarts and device reboots.
    Nothing but ``RemoteError`` may escape any endpoint (a LocalError would
    fail this test), nothing forged or doubled reaches an application, and
    afterwards honest traffic flows again for every device."""
    rng = random.Random(seed)
    devs = (S1, S2, b"sensor-3")
    w = World(devices=devs)
    seen_up: list[bytes] = []
    seen_down: list[tuple[bytes, bytes]] = []
    now = 0.0
    for dev in devs:
        w.handshake(dev, now)
    for step in range(600):
        now += rng.choice((0.01, 0.5, 3, 60))
        dev = rng.choice(devs)
        s = w.devices[dev]
        # Honest endpoints act.
        act = rng.random()
        if act < 0.05:
            w.reboot(dev)
            continue
        if act < 0.07:
            w.restart_peer()
            continue
        if s.transport is None or act < 0.12:
            if not s.handshaking or act < 0.1:
                env = w.hs1(dev, now)
            else:
                continue
        elif act < 0.55:
            env = w.data_up(dev, now)
        else:
            if not w.peer.sessions(dev):
                continue
            try:
                down = w.data_down(dev, now)
            except Exception as e:  # only the documented caller errors
                assert type(e).__name__ == "SessionExpired"
                continue
            seen_down.append((dev, down))
            env = None
        if env is not None:
            seen_up.append(env)
        # The relay acts on the new envelope and on anything it kept.
        attack = rng.random()
        if env is not None and attack < 0.6:
            reply = w.up(env, now)
            if reply is not None and rng.random() < 0.8:
                seen_down.append((dev, reply))
                w.down(dev, reply, now)
        elif attack < 0.7 and seen_up:
            w.up(rng.choice(seen_up), now)  # replay, maybe hours later
        elif attack < 0.8 and seen_down:
            d, e = rng.choice(seen_down)
            w.down(d, e, now)
        elif attack < 0.85 and seen_up:
            e = bytearray(rng.choice(seen_up))
            e[rng.randrange(len(e))] ^= 1 << rng.randrange(8)
            w.up(bytes(e), now)
        elif attack < 0.9 and seen_down:
            d, e = rng.choice(seen_down)
            w.down(rng.choice(devs), e[:rng.randrange(len(e) + 1)], now)
        elif attack < 0.95:
            w.down(dev, hint(dev, rng.randrange(24), rng.randrange(3)), now)
        elif seen_up:
            e = rng.choice(seen_up)
            victim = rng.choice(devs)
            try:
                w.up(rewrite(e, src=victim), now)
            except Exception:
                pass  # rewrite() itself refuses a truncated or foreign shape
        if seen_down and rng.random() < 0.5:
            d, e = rng.choice(seen_down)
            w.down(d, e, now)  # deliver late (reordered) or again (duplicated)
    # The attack stops; honest traffic recovers for everyone.
    now += 10 * HOUR
    for dev in devs:
        w.exchange(dev, now)
        now += 10
    w.check()
    assert w.peer_app and sum(len(v) for v in w.device_app.values()) > 0


def test_a_replayed_message2_never_raises_anything_but_remote_error():
    w = World()
    dev = w.devices[S1]
    hs1 = w.hs1(S1)
    env = E.decode(hs1)
    # A peer (here built by hand) that answers with a 10-byte payload.
    resp = NKResponder(w.backend, w.static, w.psks[S1], E.PROLOGUE + hs1[:env.msg_off], w.suite)
    resp.read_message(env.msg)
    hs2 = E.encode(E.HEAD_HS2, PEER, S1, env.sid, resp.write_message(b"0123456789"))
    small = bytearray(4)
    for _ in range(2):  # the genuine answer, then the relay's replay of it
        with pytest.raises(RemoteError):
            dev.receive_into(hs2, len(hs2), small, 0)
