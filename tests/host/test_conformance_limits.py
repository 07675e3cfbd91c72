"""The vector runner's message limits are Noise's (section 3), per message
kind: a transport message may carry 65535 - 16 bytes of payload, more than
a handshake message's 65535 - 32 - 16."""

from __future__ import annotations

import os

import pytest
from noise.connection import Keypair, NoiseConnection

from moteseal.conformance.runner import run_vectors
from moteseal.crypto.backend_nacl import NaclBackend

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
# noiseprotocol warns that a fixed ephemeral key is for tests: this is one.
pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs")


def _vector(transport_sizes):
    """A vector made by the independent ``noiseprotocol`` package: NK
    handshake, then transport messages of the given payload sizes,
    alternating initiator -> responder -> initiator ..."""
    b = NaclBackend()
    rs_priv, rs_pub = b.generate_keypair()
    ie, re_ = os.urandom(32), os.urandom(32)
    psk = os.urandom(32)
    sides = []
    for initiator, eph in ((True, ie), (False, re_)):
        c = NoiseConnection.from_name(SUITE.encode())
        c.set_as_initiator() if initiator else c.set_as_responder()
        if initiator:
            c.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs_pub)
        else:
            c.set_keypair_from_private_bytes(Keypair.STATIC, rs_priv)
        c.set_psks(psk)
        c.set_prologue(b"")
        c.set_keypair_from_private_bytes(Keypair.EPHEMERAL, eph)
        c.start_handshake()
        sides.append(c)
    init, resp = sides
    msgs = []
    m1 = init.write_message(b"one")
    resp.read_message(m1)
    m2 = resp.write_message(b"two")
    init.read_message(m2)
    msgs += [{"payload": b"one".hex(), "ciphertext": m1.hex()},
             {"payload": b"two".hex(), "ciphertext": m2.hex()}]
    for i, n in enumerate(transport_sizes):
        w, r = (init, resp) if i % 2 == 0 else (resp, init)
        pt = os.urandom(n)
        ct = w.encrypt(pt)
        assert r.decrypt(ct) == pt
        msgs.append({"payload": pt.hex(), "ciphertext": ct.hex()})
    return {"vectors": [{
        "protocol_name": SUITE, "init_prologue": "", "resp_prologue": "",
        "init_psks": [psk.hex()], "resp_psks": [psk.hex()],
        "init_ephemeral": ie.hex(), "resp_ephemeral": re_.hex(),
        "resp_static": rs_priv.hex(), "init_remote_static": rs_pub.hex(),
        "handshake_hash": init.get_handshake_hash().hex(),
        "messages": msgs}]}


def _run(doc):
    lines = []
    counts = run_vectors(doc, NaclBackend, lines.append)
    return counts, lines


@pytest.mark.parametrize("size", [65487 + 1, 65535 - 16])
def test_transport_messages_up_to_noises_limit_pass_in_both_roles(size):
    # Both directions: each role reads one long message and writes one.
    counts, lines = _run(_vector([size, size]))
    assert counts == [2, 0, 0], lines


def test_a_message_over_noises_limit_is_named_invalid_not_rejected():
    doc = _vector([100, 100])
    m = doc["vectors"][0]["messages"][2]
    m["payload"] = "00" * (65535 - 16 + 1)
    m["ciphertext"] = "00" * (65535 + 1)
    counts, lines = _run(doc)
    assert counts == [0, 2, 0]
    for line in lines:
        assert "message 3 is longer than Noise's 65535-byte message limit" in line, line
        assert "rejected" not in line
