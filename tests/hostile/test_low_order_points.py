"""Low-order public keys (RFC 7748 section 6.1) from a hostile relay.

Found by the differential fuzz test (tests/fuzz/test_differential.py): for a
low-order point libsodium returns -1 without writing its output, and
``NaclBackend.x25519`` used to return whatever its reused output buffer
held, i.e. the previous DH result of the same process, possibly another
session's secret, instead of the all-zero value the core checks for.
"""

from __future__ import annotations

import os

import pytest

from device import envelope as E
from moteseal.crypto.backend_nacl import NaclBackend
from device.errors import AuthError
from device.noise import dh
from micropython_port.backend import MicroBackend

from .world import PEER, World

P = 2 ** 255 - 19
LOW_ORDER = [0, 1, 325606250916557431795983626356110631294008115727848805560023387167927233504,
             39382357235489614581723060781553021112529911719440698176882885853963445705823,
             P - 1, P, P + 1]


@pytest.mark.parametrize("backend", [NaclBackend(), MicroBackend()], ids=["nacl", "micro"])
@pytest.mark.parametrize("u", LOW_ORDER)
def test_a_low_order_point_gives_zeros_not_a_stale_secret(backend, u):
    earlier = backend.x25519(os.urandom(32), backend.x25519_base(os.urandom(32)))
    out = backend.x25519(os.urandom(32), u.to_bytes(32, "little"))
    assert out == bytes(32) and out != earlier
    with pytest.raises(AuthError):
        dh(backend, os.urandom(32), u.to_bytes(32, "little"))


@pytest.mark.parametrize("u", LOW_ORDER)
def test_low_order_ephemerals_from_the_relay_are_refused_on_both_sides(u):
    w = World()
    w.handshake(b"sensor-1")
    # Message 1 with a low-order e, right after the peer computed real DHs.
    hs1 = w.hs1(b"sensor-1")
    env = E.decode(hs1)
    forged = hs1[:env.msg_off] + u.to_bytes(32, "little") + env.msg[32:]
    w.up(forged)
    assert w.peer_errors["AuthError"] == 1 and w.directory.refusals == {"auth": 1}
    # Message 2 with a low-order e for the device's pending handshake.
    hs2 = w.up(hs1)
    env2 = E.decode(hs2)
    bad = E.encode(E.HEAD_HS2, PEER, b"sensor-1", env2.sid, u.to_bytes(32, "little") + env2.msg[32:])
    assert w.down(b"sensor-1", bad) == "AuthError"
    w.exchange(b"sensor-1", now=1)
    w.check()
