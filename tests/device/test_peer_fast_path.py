"""PeerSessions Rule 9: the data fast path is a shortcut with the general
path's verdicts. Two peers in the same state (same keys, same ephemeral)
get the same envelopes; one as ``bytes`` (the fast path may take them), the
other as ``bytearray`` (never the fast path). Every result, error, reply and
later state must agree."""

import random

from device import envelope as E
from device.errors import RemoteError
from device.peer import NonpersistingDirectory, PeerSessions
from moteseal.crypto.backend_nacl import NaclBackend
from tests.pair import Pair

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"


class Twins:
    def __init__(self, **opts):
        self.pair = Pair(SUITE, **opts)
        eph = self.pair.backend.random_bytes(32)
        self.peers = []
        for _ in range(2):
            b = NaclBackend()
            b.fixed_ephemeral_key_for_testing_only = [eph]
            d = NonpersistingDirectory([self.pair.static])
            d.add(b"sensor-1", self.pair.psk)
            self.peers.append(PeerSessions(b, b"hub", d, suite=SUITE, **opts))
        hs1 = self.pair.device.handshake(b"")
        replies = [p.receive(hs1).reply for p in self.peers]
        assert replies[0] == replies[1]
        self.pair.device.receive(replies[0])
        self.general_calls = 0
        general = self.peers[0]._general

        def counting(data, now):
            self.general_calls += 1
            return general(data, now)
        self.peers[0]._general = counting

    def both(self, data, now=None):
        return _outcome(self.peers[0], bytes(data), now), \
            _outcome(self.peers[1], bytearray(data), now)


def _outcome(peer, data, now):
    try:
        r = peer.receive(data, now)
    except RemoteError as e:
        return ("error", type(e).__name__, str(e), getattr(e, "reply", None))
    return ("ok", r.kind, r.device_id, r.payload, r.reply, r.early)


def _state(peer):
    return [(e[0], e[2], e[1].window.hi, bytes(e[1].window._bits)) for e in
            peer._sessions.get(b"sensor-1", [])]


def test_valid_data_takes_the_fast_path_and_agrees():
    t = Twins()
    for i in range(40):
        env = t.pair.device.send(b"reading %d" % i)
        a, b = t.both(env, now=float(i))
        assert a == b and a[1] == "data"
    assert t.general_calls == 0
    assert _state(t.peers[0]) == _state(t.peers[1])


def test_replays_and_mutations_get_the_general_paths_verdicts():
    t = Twins(window=64, rekey_interval=64)
    rng = random.Random(7)
    sent = [t.pair.device.send(bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
            for _ in range(150)]
    rng.shuffle(sent)
    for env in sent:
        cases = [env, env]  # the second one is a replay
        for _ in range(4):
            m = bytearray(env)
            m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
            cases.append(bytes(m))
        cases.append(env[:rng.randrange(len(env))])
        cases.append(env + b"\x00")
        for c in cases:
            a, b = t.both(c, now=1.0)
            assert a == b, (c.hex(), a, b)
        assert _state(t.peers[0]) == _state(t.peers[1])


def test_non_canonical_heads_are_refused_as_by_the_general_path():
    t = Twins()
    for _ in range(30):
        t.pair.device.send(b"x")  # nonces past 24: two-byte heads
    env = t.pair.device.send(b"reading")
    d = E.decode(env)
    head = env[:d.msg_off]
    msg = env[d.msg_off:]
    nonce_at = head.rindex(bytes((24, d.nonce)))
    long_nonce = head[:nonce_at] + bytes((25, 0, d.nonce)) + head[nonce_at + 2:]
    assert d.msg_len < 24  # a one-byte bstr head, re-encoded below in two
    long_len = head[:-1] + bytes((0x58, d.msg_len))
    for c in (long_nonce + msg, long_len + msg, env):
        a, b = t.both(c, now=2.0)
        assert a == b
    assert a[1] == "data"


def test_a_revoked_device_is_answered_by_the_general_path():
    t = Twins(recheck=0.5)
    env = t.pair.device.send(b"one")
    assert t.both(env, now=0.0)[0][1] == "data"
    for p in t.peers:
        p.directory.revoke(b"sensor-1")
    env = t.pair.device.send(b"two")
    a, b = t.both(env, now=1.0)  # past recheck: Rule 4 drops the session
    assert a == b and a[1] == "hint"
    assert t.peers[0]._fast == {}
