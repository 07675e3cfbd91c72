"""Refusals do the same work whatever their reason (device/peer.py Rule 4):
an observer timing the peer's answer to message 1 cannot tell a
provisioned id from an unknown or revoked one. Asserted by counting the
primitive operations each refusal performs, not by wall time."""

from __future__ import annotations

from collections import Counter

import pytest

from device.counter import Msg1Counter, NonpersistingCounterStore
from device.errors import AuthError
from device.peer import NonpersistingDirectory, PeerSessions
from device.session import DeviceSession
from moteseal.crypto.backend_nacl import NaclBackend


class CountingBackend(NaclBackend):
    """The real backend, counting every primitive call by name."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def x25519(self, priv, pub):
        self.calls["x25519"] += 1
        return super().x25519(priv, pub)

    def x25519_base(self, priv):
        self.calls["x25519_base"] += 1
        return super().x25519_base(priv)

    def cipher(self, key):
        self.calls["cipher"] += 1
        return _Counted(super().cipher(key), self.calls, "aead.")

    def hash(self, name):
        return _Counted(super().hash(name), self.calls, "hash.")


class _Counted:
    def __init__(self, inner, calls, prefix):
        self._inner, self._calls, self._prefix = inner, calls, prefix

    def __getattr__(self, name):
        v = getattr(self._inner, name)
        if not callable(v):
            return v

        def call(*a, **kw):
            self._calls[self._prefix + name] += 1
            return v(*a, **kw)
        return call


@pytest.mark.parametrize("statics", [1, 2], ids=["one-key", "rotation-overlap"])
def test_unknown_revoked_and_bad_psk_refusals_do_the_same_work(statics):
    plain = NaclBackend()
    keys = [plain.generate_keypair() for _ in range(statics)]
    d = NonpersistingDirectory(keys)
    d.add(b"sensor-1", plain.random_bytes(32))
    d.add(b"sensor-3", plain.random_bytes(32))
    d.revoked.add(b"sensor-3")
    be = CountingBackend()
    peer = PeerSessions(be, b"hub", d)

    def refusal_work(device_id):
        # A message 1 under a PSK the peer does not hold for that id.
        dev = DeviceSession(plain, device_id, b"hub", keys[0][1], plain.random_bytes(32),
                            Msg1Counter(NonpersistingCounterStore()))
        msg1 = dev.handshake(b"reading")
        be.calls.clear()
        with pytest.raises(AuthError) as e:
            peer.receive(msg1)
        assert e.value.reply is not None
        return e.value.reason, Counter(be.calls)

    known = refusal_work(b"sensor-1")  # provisioned, wrong PSK
    unknown = refusal_work(b"sensor-2")  # never provisioned
    revoked = refusal_work(b"sensor-3")
    assert [known[0], unknown[0], revoked[0]] == ["auth", "unknown-device", "revoked"]
    assert known[1]["x25519"] == statics  # one es per candidate key: real work
    assert unknown[1] == known[1]
    assert revoked[1] == known[1]
    assert d.refusals == {"auth": 1, "unknown-device": 1, "revoked": 1}
