"""Interop with the independent ``noiseprotocol`` package, both roles, all
suites, transport messages included (its nonces set explicitly)."""

import os

import pytest
from noise.connection import Keypair, NoiseConnection

from moteseal.crypto.backend_nacl import NaclBackend
from device.noise import SUITES, NKInitiator, NKResponder

SUITES_THEIRS = [s for s in SUITES]


def _theirs(suite, initiator, static=None, remote=None, psk=None, prologue=b"p"):
    c = NoiseConnection.from_name(suite.encode())
    c.set_as_initiator() if initiator else c.set_as_responder()
    if static is not None:
        c.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if remote is not None:
        c.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    if psk is not None:
        c.set_psks(psk)
    c.set_prologue(prologue)
    c.start_handshake()
    return c


@pytest.mark.parametrize("suite", SUITES_THEIRS)
def test_we_initiate_noiseprotocol_responds(suite):
    b = NaclBackend()
    priv, pub = b.generate_keypair()
    psk = None if "_NK_" in suite else os.urandom(32)
    ours = NKInitiator(b, pub, psk=psk, prologue=b"p", suite=suite)
    theirs = _theirs(suite, False, static=priv, psk=psk)
    assert theirs.read_message(ours.write_message(b"hello")) == b"hello"
    assert ours.read_message(theirs.write_message(b"world")) == b"world"
    assert theirs.get_handshake_hash() == ours.handshake_hash
    t = ours.into_transport()
    for i in range(5):
        wire = t.encrypt(b"up %d" % i)
        assert int.from_bytes(wire[:8], "big") == i
        theirs.noise_protocol.cipher_state_decrypt.n = i  # explicit nonce on their side
        assert theirs.decrypt(wire[8:]) == b"up %d" % i
        ct = theirs.encrypt(b"down %d" % i)
        out = bytearray(len(ct))
        n = t.decrypt_into(i, b"", 0, ct, 0, len(ct), out, 0)
        assert bytes(out[:n]) == b"down %d" % i


@pytest.mark.parametrize("suite", SUITES_THEIRS)
def test_noiseprotocol_initiates_we_respond(suite):
    b = NaclBackend()
    priv, pub = b.generate_keypair()
    psk = None if "_NK_" in suite else os.urandom(32)
    ours = NKResponder(b, (priv, pub), psk=psk, prologue=b"p", suite=suite)
    theirs = _theirs(suite, True, remote=pub, psk=psk)
    assert ours.read_message(theirs.write_message(b"0-rtt")) == b"0-rtt"
    assert theirs.read_message(ours.write_message(b"ok")) == b"ok"
    assert theirs.get_handshake_hash() == ours.handshake_hash
    t = ours.into_transport()
    # Out of order on our side: their nonces 0..4 delivered as 3, 0, 4, 1, 2.
    cts = [theirs.encrypt(b"m%d" % i) for i in range(5)]
    for i in (3, 0, 4, 1, 2):
        out = bytearray(16)
        n = t.decrypt_into(i, b"", 0, cts[i], 0, len(cts[i]), out, 0)
        assert bytes(out[:n]) == b"m%d" % i
    wire = t.encrypt(b"reply")
    assert theirs.decrypt(wire[8:]) == b"reply"
