"""``moteseal vectors generate``: deterministic, checked by the runner, and
byte-checked here against independent code: cbor2 for the envelopes and the
``noiseprotocol`` package for the handshake, the transport keys, the rekey
chain and every ciphertext (docs/conformance.md)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import cbor2
import pytest
from click.testing import CliRunner
from noise.connection import Keypair, NoiseConnection

from moteseal.conformance import vectorgen
from moteseal.cli.main import main
from device.session import SESSION_SUITES as SUITES


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return vectorgen.generate()


def _vec(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in doc["vectors"] if v["name"] == name)


def _run(tmp_path: Path, doc: dict[str, Any]) -> tuple[int, list[str]]:
    path = tmp_path / "v.json"
    path.write_text(vectorgen.dumps(doc))
    r = CliRunner().invoke(main, ["vectors", "run", str(path)])
    return r.exit_code, r.output.splitlines()


def test_generate_writes_the_same_file_every_time(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for p in (a, b):
        r = CliRunner().invoke(main, ["vectors", "generate", "--out", str(p)])
        assert r.exit_code == 0, r.output
        assert "16 passed, 0 failed, 0 skipped" in r.output
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(a.read_text())["moteseal_vectors"] == 1


def test_generate_to_an_unwritable_path_is_a_usage_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["vectors", "generate", "--out", str(tmp_path / "no" / "x.json")])
    assert r.exit_code == 2
    assert "x.json" in r.output


def test_the_generated_file_passes_the_runner(tmp_path: Path, doc: dict[str, Any]) -> None:
    code, lines = _run(tmp_path, doc)
    assert code == 0
    assert lines[-1] == f"{2 * len(doc['vectors'])} passed, 0 failed, 0 skipped"
    assert sorted({v["protocol_name"] for v in doc["vectors"]}) == sorted(SUITES)


def test_every_envelope_is_canonical_cbor_with_the_stated_fields(doc: dict[str, Any]) -> None:
    for v in doc["vectors"]:
        dev, peer = v["device_id"].encode(), v["peer_id"].encode()
        sid = v["hs1"]["sid"]
        hs1 = bytes.fromhex(v["hs1"]["envelope"])
        assert cbor2.loads(hs1) == [4, dev, peer, sid, bytes.fromhex(v["hs1"]["noise_message"])]
        assert cbor2.dumps(cbor2.loads(hs1)) == hs1
        header = hs1[:len(hs1) - len(v["hs1"]["noise_message"]) // 2]
        assert bytes.fromhex(v["hs1"]["prologue"]) == b"moteseal/v1" + header
        hs2 = bytes.fromhex(v["hs2"]["envelope"])
        assert cbor2.loads(hs2)[:4] == [5, peer, dev, sid]
        for s in v["sends"]:
            env = bytes.fromhex(s["envelope"])
            src, dst = (dev, peer) if s["from"] == "initiator" else (peer, dev)
            ct = bytes.fromhex(s["ciphertext"])
            assert cbor2.loads(env) == [6, src, dst, sid, s["nonce"], ct]
            assert cbor2.dumps(cbor2.loads(env)) == env
            assert bytes.fromhex(s["ad"]) + ct == env
            assert s["epoch"] == s["nonce"] // v["rekey_interval"]


def _noiseprotocol_keys(v: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Replays the vector's handshake with noiseprotocol; returns its
    initiator-side cipher object and the i2r and r2i split keys."""
    suite = v["protocol_name"].encode()
    init, resp = NoiseConnection.from_name(suite), NoiseConnection.from_name(suite)
    init.set_as_initiator()
    resp.set_as_responder()
    init.set_keypair_from_private_bytes(Keypair.EPHEMERAL, bytes.fromhex(v["init_ephemeral"]))
    resp.set_keypair_from_private_bytes(Keypair.EPHEMERAL, bytes.fromhex(v["resp_ephemeral"]))
    init.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes.fromhex(v["peer_static_public"]))
    resp.set_keypair_from_private_bytes(Keypair.STATIC, bytes.fromhex(v["resp_static"]))
    warnings.filterwarnings("ignore", "One of ephemeral keypairs")  # fixed on purpose
    for c in (init, resp):
        c.set_prologue(bytes.fromhex(v["hs1"]["prologue"]))
        if "psk" in v:
            c.set_psks(bytes.fromhex(v["psk"]))
        c.start_handshake()
    hs1 = v["hs1"]
    msg1 = init.write_message(hs1["counter"].to_bytes(4, "big") + bytes.fromhex(hs1["payload"]))
    assert msg1.hex() == hs1["noise_message"]
    resp.read_message(msg1)
    msg2 = resp.write_message(b"")
    assert v["hs2"]["envelope"].endswith(msg2.hex())
    init.read_message(msg2)
    assert init.get_handshake_hash().hex() == v["handshake_hash"]
    p = init.noise_protocol
    return p.cipher_state_encrypt.cipher, p.cipher_state_encrypt.k, p.cipher_state_decrypt.k


def test_every_ciphertext_matches_noiseprotocol_under_the_epoch_key(doc: dict[str, Any]) -> None:
    for v in doc["vectors"]:
        cipher, k_i2r, k_r2i = _noiseprotocol_keys(v)
        for s in v["sends"]:
            k = k_i2r if s["from"] == "initiator" else k_r2i
            # noiseprotocol's cipher object uses the key it was last initialized with.
            for _ in range(s["epoch"]):  # Noise section 11.3 Rekey(), once per epoch
                cipher.initialize(k)
                k = cipher.rekey(k)
            cipher.initialize(k)
            ct = cipher.encrypt(k, s["nonce"], bytes.fromhex(s["ad"]), bytes.fromhex(s["payload"]))
            assert ct.hex() == s["ciphertext"], (v["name"], s["from"], s["nonce"])


def test_the_vectors_cover_every_decision(doc: dict[str, Any]) -> None:
    whys = {(d["to"], d["expect"], d["why"]) for v in doc["vectors"] for d in v["deliveries"]}
    expects = {e for _, e, _ in whys}
    assert expects == {"accept", "ReplayError", "AuthError", "DecodeError", "hint"}
    reorder = _vec(doc, "reorder-duplicate-too-old")
    got = [(d["nonce"], d["expect"]) for d in reorder["deliveries"] if d["to"] == "responder"]
    assert got[:8] == [(2, "accept"), (0, "accept"), (1, "accept"), (1, "ReplayError"),
                       (5, "accept"), (3, "accept"), (12, "accept"), (4, "ReplayError")]
    rekey = _vec(doc, "rekey-boundaries")
    assert rekey["rekey_interval"] == 8 and rekey["window"] == 8
    assert {s["epoch"] for s in rekey["sends"]} >= {0, 1, 2, 4, 5, 12, 13, 14, 15}
    ahead = {d["nonce"]: d["expect"] for d in rekey["deliveries"] if d["to"] == "responder"}
    assert ahead[120] == ahead[112] == "DecodeError" and ahead[104] == "accept"
    wide = _vec(doc, "nonce-encodings")
    lens = {s["nonce"]: len(s["ad"]) // 2 for s in wide["sends"] if s["from"] == "initiator"}
    assert lens[24] == lens[0] + 1 and lens[256] == lens[0] + 2  # CBOR uint heads of 2 and 3 bytes


def test_a_wrong_expectation_or_byte_fails_that_vector(tmp_path: Path, doc: dict[str, Any]) -> None:
    bad = copy.deepcopy(doc)
    rekey = _vec(bad, "rekey-boundaries")
    i = next(i for i, d in enumerate(rekey["deliveries"]) if d.get("nonce") == 120)
    rekey["deliveries"][i]["expect"] = "accept"
    wide = _vec(bad, "nonce-encodings")
    env = bytearray.fromhex(wide["sends"][3]["envelope"])
    env[-1] ^= 1
    wide["sends"][3]["envelope"] = env.hex()
    code, lines = _run(tmp_path, bad)
    assert code == 1
    idx = {v["name"]: n for n, v in enumerate(bad["vectors"], 1)}
    s = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
    assert (f"FAIL #{idx['rekey-boundaries']} {s} rekey-boundaries responder: "
            f"delivery {i + 1}: expected accept, got DecodeError") in lines
    assert (f"FAIL #{idx['nonce-encodings']} {s} nonce-encodings initiator: "
            f"send nonce 255 envelope differs at byte {len(env) - 1}") in lines
    assert lines[-1] == f"{2 * len(bad['vectors']) - 2} passed, 2 failed, 0 skipped"


def test_the_window_model_is_not_the_replay_window() -> None:
    # The model the expectations come from, on its own (docs/protocol.md "Transport").
    m = vectorgen.WindowModel(window=8, rekey_interval=8)
    assert [m.decide(n)[0] for n in (3, 0, 3, 11, 3, 4, 12, 90, 75)] == [
        "accept", "accept", "ReplayError", "accept", "ReplayError", "accept", "accept",
        "DecodeError", "accept"]
