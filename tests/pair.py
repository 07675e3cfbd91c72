"""An in-memory pair harness (after h11's tests/helpers.py ConnectionPair):
a device session and a peer joined by a lossy link that can drop,
duplicate, reorder, flip bits in and truncate envelopes."""

from __future__ import annotations

import random

from moteseal.crypto.backend_nacl import NaclBackend
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import RemoteError
from device.session import DeviceSession
from device.peer import NonpersistingDirectory, PeerSessions


class Pair:
    def __init__(self, suite="Noise_NKpsk0_25519_ChaChaPoly_SHA256", **opts):
        self.backend = NaclBackend()
        self.static = self.backend.generate_keypair()
        self.psk = None if "_NK_" in suite else self.backend.random_bytes(32)
        self.directory = NonpersistingDirectory([self.static])
        if self.psk:
            self.directory.add(b"sensor-1", self.psk)
        self.store = NonpersistingCounterStore()
        self.peer = PeerSessions(self.backend, b"hub", self.directory, suite=suite, **opts)
        self.device = self.new_device(**opts)

    def new_device(self, **opts):
        """A device as after a reboot: same provisioning, same counter store."""
        return DeviceSession(self.backend, b"sensor-1", b"hub", self.static[1], self.psk,
                             Msg1Counter(self.store), suite=self.peer.suite, **opts)

    def handshake(self, payload=b""):
        r = self.peer.receive(self.device.handshake(payload))
        self.device.receive(r.reply)
        return r


class LossyLink:
    """Applies seeded faults to a list of envelopes; remembers which intact
    envelopes it delivered."""

    def __init__(self, seed, drop=0.1, dup=0.1, flip=0.05, trunc=0.05, reorder=True):
        self.rng = random.Random(seed)
        self.drop, self.dup, self.flip, self.trunc, self.reorder = drop, dup, flip, trunc, reorder

    def carry(self, envelopes):
        out = []
        for i, e in enumerate(envelopes):
            r = self.rng.random()
            if r < self.drop:
                continue
            if r < self.drop + self.flip:
                b = bytearray(e)
                b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
                out.append((i, bytes(b), False))
                continue
            if r < self.drop + self.flip + self.trunc:
                out.append((i, e[: self.rng.randrange(len(e))], False))
                continue
            out.append((i, e, True))
            if self.rng.random() < self.dup:
                out.append((i, e, True))
        if self.reorder:
            # Bounded reordering: each item moves at most 16 places.
            keyed = [(k + self.rng.uniform(0, 16), x) for k, x in enumerate(out)]
            out = [x for _, x in sorted(keyed, key=lambda t: t[0])]
        return out


def deliver(peer, carried):
    """Feeds carried envelopes to the peer; returns (delivered payloads, errors)."""
    got, errors = [], []
    for _, e, _ in carried:
        try:
            r = peer.receive(e)
        except RemoteError as err:
            errors.append(type(err).__name__)
            continue
        if r.payload is not None:
            got.append(r.payload)
        else:
            errors.append(r.kind)  # e.g. a hint for a flipped session id
    return got, errors
