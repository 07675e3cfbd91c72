"""Every cacophony vector for NK, NKpsk0 and NKpsk2, in both roles, with the
handshake hash and the transport messages (implicit nonces = explicit nonces
counted from 0 in each direction, with no rekey inside the vector)."""

import json

import pytest

from moteseal.crypto.backend_nacl import NaclBackend
from device.errors import AuthError, HandshakeFailed, LocalError
from device.noise import SUITES, NKInitiator, NKResponder

H = bytes.fromhex


def _vectors(shared_vectors):
    with open(shared_vectors / "vectors" / "noise_nk_cacophony.json") as f:
        return json.load(f)["vectors"]


def _pair(v):
    bi, br = NaclBackend(), NaclBackend()
    bi.fixed_ephemeral_key_for_testing_only = [H(v["init_ephemeral"])]
    br.fixed_ephemeral_key_for_testing_only = [H(v["resp_ephemeral"])]
    ipsk = H(v["init_psks"][0]) if v.get("init_psks") else None
    rpsk = H(v["resp_psks"][0]) if v.get("resp_psks") else None
    rs = H(v["resp_static"])
    init = NKInitiator(bi, H(v["init_remote_static"]), psk=ipsk,
                       prologue=H(v["init_prologue"]), suite=v["protocol_name"])
    resp = NKResponder(br, (rs, br.x25519_base(rs)), psk=rpsk,
                       prologue=H(v["resp_prologue"]), suite=v["protocol_name"])
    return init, resp


def pytest_generate_tests(metafunc):
    if "vector" in metafunc.fixturenames:
        from pathlib import Path
        import os
        shared = Path(os.environ.get("MOTESEAL_SHARED") or Path(__file__).resolve().parents[3] / "shared")
        vs = _vectors(shared)
        metafunc.parametrize("vector", vs, ids=[v["protocol_name"] for v in vs])


def test_the_vector_file_covers_every_supported_suite(shared_vectors):
    assert sorted(v["protocol_name"] for v in _vectors(shared_vectors)) == sorted(SUITES)


def test_vector_initiator_and_responder_roles(vector):
    init, resp = _pair(vector)
    m = vector["messages"]
    # Initiator role: our message 1 is byte-identical; responder role: we read it.
    msg1 = init.write_message(H(m[0]["payload"]))
    assert msg1.hex() == m[0]["ciphertext"]
    assert resp.read_message(H(m[0]["ciphertext"])) == H(m[0]["payload"])
    msg2 = resp.write_message(H(m[1]["payload"]))
    assert msg2.hex() == m[1]["ciphertext"]
    assert init.read_message(H(m[1]["ciphertext"])) == H(m[1]["payload"])
    assert init.handshake_hash.hex() == vector["handshake_hash"]
    assert resp.handshake_hash.hex() == vector["handshake_hash"]
    ti, tr = init.into_transport(), resp.into_transport()
    for k, msg in enumerate(m[2:]):
        sender, receiver = (ti, tr) if k % 2 == 0 else (tr, ti)
        wire = sender.encrypt(H(msg["payload"]))
        assert wire[8:].hex() == msg["ciphertext"]
        assert int.from_bytes(wire[:8], "big") == k // 2
        # The receiver opens the vector's own ciphertext at its implicit nonce.
        out = bytearray(len(msg["payload"]) // 2 + 16)
        ct = H(msg["ciphertext"])
        n = receiver.decrypt_into(k // 2, b"", 0, ct, 0, len(ct), out, 0)
        assert bytes(out[:n]) == H(msg["payload"])


def test_a_flipped_vector_ciphertext_fails_and_the_handshake_is_final(vector):
    init, resp = _pair(vector)
    msg1 = bytearray(H(vector["messages"][0]["ciphertext"]))
    msg1[-1] ^= 1
    with pytest.raises(AuthError):
        resp.read_message(bytes(msg1))
    with pytest.raises(HandshakeFailed):
        resp.read_message(H(vector["messages"][0]["ciphertext"]))
    with pytest.raises(HandshakeFailed):
        resp.write_message(b"")


def test_messages_out_of_turn_are_caller_errors(vector):
    init, resp = _pair(vector)
    with pytest.raises(LocalError):
        init.read_message(b"\x00" * 48)
    with pytest.raises(LocalError):
        resp.write_message(b"")
    with pytest.raises(LocalError):
        init.into_transport()
