"""A small world for adversarial tests: devices, their peer, and a relay in
between that an attacker controls.

Every envelope crosses the relay (``up`` device -> peer, ``down`` peer ->
device), which records it in ``view``: that list is everything a malicious
gateway, broker or network could ever see. Every plaintext an endpoint sends
is a fresh random token remembered in ``secrets`` together with its sender
and receiver, so a test can check that the relay's view holds no plaintext,
that nothing delivered was forged or misrouted, and that nothing was
delivered twice.

Sans-I/O and deterministic apart from the keys and ephemerals, which come
from the real backend (every assertion holds for any keys).
"""

from __future__ import annotations

import collections
import os

from device import envelope as E
from moteseal.crypto.backend_nacl import NaclBackend
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import RemoteError
from device.noise import DEFAULT_SUITE
from device.session import EV_DATA, EV_HANDSHAKE, EV_REHANDSHAKE, DeviceSession
from device.peer import NonpersistingDirectory, PeerSessions

PEER = b"hub"
HOUR = 3600.0


class World:
    def __init__(self, devices=(b"sensor-1", b"sensor-2"), suite=DEFAULT_SUITE,
                 peer_opts=None, **device_opts):
        self.backend = NaclBackend()
        self.suite = suite
        self.static = self.backend.generate_keypair()
        self.directory = NonpersistingDirectory([self.static])
        self.peer_opts = dict(peer_opts or {})
        self.peer = PeerSessions(self.backend, PEER, self.directory, suite=suite, **self.peer_opts)
        self.device_opts = device_opts
        self.psks: dict[bytes, bytes | None] = {}
        self.stores: dict[bytes, NonpersistingCounterStore] = {}
        self.devices: dict[bytes, DeviceSession] = {}
        for d in devices:
            self.add_device(d)
        self.view: list[bytes] = []  # everything the relay ever carried
        self.secrets: dict[bytes, tuple[bytes, bytes]] = {}  # token -> (sender, receiver)
        self.peer_app: list[tuple[bytes, bytes]] = []  # (device id, payload) given to the peer's app
        self.device_app: dict[bytes, list[bytes]] = collections.defaultdict(list)
        self.peer_errors: collections.Counter[str] = collections.Counter()
        self.device_errors: collections.Counter[str] = collections.Counter()
        self.rehandshake_requests: collections.Counter[bytes] = collections.Counter()
        self.attempt_failed: set[bytes] = set()  # devices whose message 2 failed

    # -- set-up -------------------------------------------------------------

    def add_device(self, dev: bytes) -> DeviceSession:
        psk = None if "_NK_" in self.suite else self.backend.random_bytes(32)
        self.psks[dev] = psk
        if psk is not None:
            self.directory.add(dev, psk)
        self.stores[dev] = NonpersistingCounterStore()
        return self.reboot(dev)

    def reboot(self, dev: bytes) -> DeviceSession:
        """The device as after a power cycle: same provisioning and counter
        store, no session."""
        s = DeviceSession(self.backend, dev, PEER, self.static[1], self.psks[dev],
                          Msg1Counter(self.stores[dev], chunk=4), suite=self.suite,
                          **self.device_opts)
        self.devices[dev] = s
        return s

    def restart_peer(self) -> PeerSessions:
        """The peer process restarts: sessions are lost, the directory (with
        its durable message-1 counters) is kept."""
        self.peer = PeerSessions(self.backend, PEER, self.directory, suite=self.suite,
                                 **self.peer_opts)
        return self.peer

    def secret(self, sender: bytes, receiver: bytes) -> bytes:
        token = b"SECRET:" + os.urandom(12).hex().encode()
        self.secrets[token] = (sender, receiver)
        return token

    # -- honest endpoints ---------------------------------------------------

    def hs1(self, dev: bytes, now: float = 0.0, with_payload: bool = True) -> bytes:
        payload = self.secret(dev, PEER) if with_payload else b""
        return self.devices[dev].handshake(payload, now)

    def data_up(self, dev: bytes, now: float = 0.0) -> bytes:
        return self.devices[dev].send(self.secret(dev, PEER), now)

    def data_down(self, dev: bytes, now: float = 0.0) -> bytes:
        return self.peer.send(dev, self.secret(PEER, dev), now)

    # -- the relay ----------------------------------------------------------

    def up(self, env: bytes, now: float = 0.0) -> bytes | None:
        """Hands ``env`` to the peer; returns the peer's reply envelope (hs2,
        hint or refusal), or None. Records what the peer's app got."""
        self.view.append(bytes(env))
        try:
            r = self.peer.receive(env, now)
        except RemoteError as e:
            self.peer_errors[type(e).__name__] += 1
            reply = getattr(e, "reply", None)
        else:
            if r.payload is not None:
                self.peer_app.append((r.device_id, r.payload))
            else:
                self.peer_errors[r.kind] += 1
            reply = r.reply
        if reply is not None:
            self.view.append(reply)
        return reply

    def down(self, dev: bytes, env: bytes, now: float = 0.0) -> int | str:
        """Hands ``env`` to device ``dev``; returns the event or the error
        class name."""
        self.view.append(bytes(env))
        s = self.devices[dev]
        was_handshaking = s.handshaking
        try:
            ev, payload = s.receive(env, now)
        except RemoteError as e:
            self.device_errors[type(e).__name__] += 1
            if was_handshaking and not s.handshaking:
                self.attempt_failed.add(dev)  # the app will try again
            return type(e).__name__
        if ev == EV_DATA or (ev == EV_HANDSHAKE and payload):
            self.device_app[dev].append(payload)
        if ev == EV_REHANDSHAKE:
            self.rehandshake_requests[dev] += 1
        return ev

    def handshake(self, dev: bytes, now: float = 0.0) -> None:
        """An honest round trip; fails the test if it does not complete."""
        reply = self.up(self.hs1(dev, now), now)
        assert reply is not None and self.down(dev, reply, now) == EV_HANDSHAKE

    def exchange(self, dev: bytes, now: float) -> None:
        """Honest traffic as an application does it: (re-)handshake when it
        has no session, an attempt is still unanswered or its message 2
        failed, then one message each way, both of which must arrive."""
        s = self.devices[dev]
        for _ in range(3):
            if s.transport is None or s.handshaking or dev in self.attempt_failed:
                self.attempt_failed.discard(dev)
                self.handshake(dev, now)
            before = len(self.peer_app)
            reply = self.up(self.data_up(dev, now), now)
            if reply is None:
                assert len(self.peer_app) == before + 1
                break
            # The peer lost the session: a hint, and the device starts over.
            ev = self.down(dev, reply, now)
            assert ev == EV_REHANDSHAKE, ev
            self.handshake(dev, now)
            now += 1
        else:
            raise AssertionError("honest traffic did not recover")
        got = len(self.device_app[dev])
        assert self.down(dev, self.data_down(dev, now), now) == EV_DATA
        assert len(self.device_app[dev]) == got + 1

    # -- invariants ---------------------------------------------------------

    def assert_no_plaintext_revealed(self) -> None:
        assert self.secrets
        for env in self.view:
            for token in self.secrets:
                assert token not in env, "the relay saw a plaintext"

    def assert_nothing_forged_misrouted_or_twice(self) -> None:
        seen: set[bytes] = set()
        for dev, payload in self.peer_app:
            if payload == b"":
                continue  # an empty 0-RTT payload
            assert self.secrets.get(payload) == (dev, PEER), "forged or misrouted at the peer"
            assert payload not in seen, "delivered twice"
            seen.add(payload)
        for dev, payloads in self.device_app.items():
            for payload in payloads:
                assert self.secrets.get(payload) == (PEER, dev), "forged or misrouted at a device"
                assert payload not in seen, "delivered twice"
                seen.add(payload)

    def check(self) -> None:
        self.assert_no_plaintext_revealed()
        self.assert_nothing_forged_misrouted_or_twice()


# -- envelope surgery (what a relay can do to bytes) -------------------------


def rewrite(env: bytes, **fields) -> bytes:
    """Re-encodes ``env`` with some header fields replaced (src, dst, sid,
    nonce, head), keeping the message bytes: a relay's forgery."""
    e = E.decode(env)
    head = fields.get("head", e.head)
    src = fields.get("src", e.src)
    dst = fields.get("dst", e.dst)
    sid = fields.get("sid", e.sid)
    if e.type == E.HINT:
        return E.encode(head, src, dst, sid, fields.get("reason", e.reason))
    nonce = fields.get("nonce", e.nonce)
    return E.encode(head, src, dst, sid, e.msg, nonce)


def flips(env: bytes):
    """Every single-bit flip of ``env``: (bit index, altered bytes)."""
    for i in range(len(env) * 8):
        b = bytearray(env)
        b[i // 8] ^= 1 << (i % 8)
        yield i, bytes(b)


def hint(dev: bytes, sid: int, reason: int = E.HINT_UNKNOWN_SESSION) -> bytes:
    """A forged hint from the peer about session ``sid``."""
    return E.encode(E.HEAD_HINT, PEER, dev, sid, reason)
