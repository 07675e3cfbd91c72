"""``moteseal vectors run`` on CPython: the shared cacophony file, a mixed
file with unsupported protocols, tampered vectors, and the optional-field
cases of the Noise vector format (docs/conformance.md)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from moteseal.cli.main import main
from device.noise import SUITES

REPO = Path(__file__).resolve().parents[2]

# Protocols this build cannot run, with the reason the runner must give.
UNSUPPORTED = {
    "Noise_XX_25519_ChaChaPoly_SHA256": "unsupported pattern XX",
    "Noise_IK_25519_ChaChaPoly_BLAKE2s": "unsupported pattern IK",
    "Noise_NK_448_ChaChaPoly_SHA256": "unsupported DH 448",
    "Noise_NK_25519_AESGCM_SHA256": "unsupported cipher AESGCM",
    "Noise_NK_25519_ChaChaPoly_BLAKE2b": "unsupported hash BLAKE2b",
    "Noise_XXpsk3_448_AESGCM_SHA512": "unsupported pattern XXpsk3, DH 448, cipher AESGCM, hash SHA512",
    "NoisePSK_NK_25519_ChaChaPoly_SHA256": "unrecognised protocol name",
}


def shared_doc(shared_vectors: Path) -> dict[str, Any]:
    with open(shared_vectors / "vectors" / "noise_nk_cacophony.json") as f:
        return json.load(f)


def mixed_doc(shared_vectors: Path) -> dict[str, Any]:
    """The shared file plus one synthetic vector per unsupported protocol
    (their bytes are never looked at: they must be skipped first)."""
    doc = shared_doc(shared_vectors)
    template = doc["vectors"][0]
    for name in UNSUPPORTED:
        v = copy.deepcopy(template)
        v["protocol_name"] = name
        v["init_static"] = "00" * 32
        doc["vectors"].append(v)
    return doc


def run_cli(tmp_path: Path, doc: dict[str, Any] | None, *extra: str) -> tuple[int, list[str]]:
    args = ["vectors", "run", *extra]
    if doc is not None:
        path = tmp_path / "vectors.json"
        path.write_text(json.dumps(doc))
        args.append(str(path))
    r = CliRunner().invoke(main, args)
    return r.exit_code, r.output.splitlines()


def test_the_shared_file_passes_every_vector_in_both_roles(shared_vectors: Path) -> None:
    path = shared_vectors / "vectors" / "noise_nk_cacophony.json"
    # The installed entry point, as a user runs it.
    p = subprocess.run([sys.executable, "-m", "moteseal.cli.main", "vectors", "run", str(path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = p.stdout.splitlines()
    assert p.returncode == 0, p.stdout + p.stderr
    assert lines[-1] == "12 passed, 0 failed, 0 skipped"
    names = [v["protocol_name"] for v in shared_doc(shared_vectors)["vectors"]]
    expected = [f"PASS #{i} {n} {role}" for i, n in enumerate(names, 1)
                for role in ("initiator", "responder")]
    assert lines[:-1] == expected
    assert sorted(set(names)) == sorted(SUITES)


def test_unsupported_protocols_in_a_mixed_file_are_skipped_and_counted(
        tmp_path: Path, shared_vectors: Path) -> None:
    code, lines = run_cli(tmp_path, mixed_doc(shared_vectors))
    assert code == 0
    assert lines[-1] == f"12 passed, 0 failed, {2 * len(UNSUPPORTED)} skipped"
    for i, (name, reason) in enumerate(UNSUPPORTED.items(), 7):
        for role in ("initiator", "responder"):
            assert f"SKIP #{i} {name} {role}: {reason}" in lines


def test_one_changed_ciphertext_byte_fails_that_vector_with_its_reason(
        tmp_path: Path, shared_vectors: Path) -> None:
    doc = shared_doc(shared_vectors)
    v = doc["vectors"][1]  # Noise_NK_..._SHA256
    ct = bytearray.fromhex(v["messages"][1]["ciphertext"])
    ct[17] ^= 0x40
    v["messages"][1]["ciphertext"] = ct.hex()
    code, lines = run_cli(tmp_path, doc)
    assert code == 1
    name = v["protocol_name"]
    # The responder writes message 2 and sees the difference; the initiator
    # reads the changed bytes and refuses them.
    assert f"FAIL #2 {name} responder: message 2 ciphertext differs at byte 17" in lines
    assert f"FAIL #2 {name} initiator: message 2 rejected: AuthError" in lines
    assert lines[-1] == "10 passed, 2 failed, 0 skipped"


def test_a_changed_transport_ciphertext_names_its_message(tmp_path: Path,
                                                          shared_vectors: Path) -> None:
    doc = shared_doc(shared_vectors)
    v = doc["vectors"][3]
    ct = bytearray.fromhex(v["messages"][4]["ciphertext"])  # message 5, initiator -> responder
    ct[0] ^= 1
    v["messages"][4]["ciphertext"] = ct.hex()
    code, lines = run_cli(tmp_path, doc)
    assert code == 1
    assert f"FAIL #4 {v['protocol_name']} initiator: message 5 ciphertext differs at byte 0" in lines
    assert f"FAIL #4 {v['protocol_name']} responder: message 5 rejected: AuthError" in lines


def test_a_changed_payload_and_hash_are_reported(tmp_path: Path, shared_vectors: Path) -> None:
    doc = shared_doc(shared_vectors)
    doc["vectors"][0]["handshake_hash"] = "00" + doc["vectors"][0]["handshake_hash"][2:]
    v = doc["vectors"][2]
    v["messages"][0]["payload"] += "00"  # the responder reads one byte less than promised
    code, lines = run_cli(tmp_path, doc)
    assert code == 1
    n0, n2 = doc["vectors"][0]["protocol_name"], v["protocol_name"]
    assert f"FAIL #1 {n0} initiator: handshake hash differs at byte 0" in lines
    assert f"FAIL #1 {n0} responder: handshake hash differs at byte 0" in lines
    assert f"FAIL #3 {n2} responder: message 1 payload is {len(v['messages'][0]['payload']) // 2 - 1}" \
           f" bytes, vector has {len(v['messages'][0]['payload']) // 2}" in lines


def test_a_missing_handshake_hash_is_noted_not_failed(tmp_path: Path,
                                                      shared_vectors: Path) -> None:
    doc = shared_doc(shared_vectors)
    del doc["vectors"][0]["handshake_hash"]
    code, lines = run_cli(tmp_path, doc)
    assert code == 0
    name = doc["vectors"][0]["protocol_name"]
    for role in ("initiator", "responder"):
        assert f"PASS #1 {name} {role}: no handshake_hash in vector: not checked" in lines


def test_psk_lists_are_checked(tmp_path: Path, shared_vectors: Path) -> None:
    doc = shared_doc(shared_vectors)
    by_name = {v["protocol_name"]: i for i, v in enumerate(doc["vectors"])}
    psk0 = doc["vectors"][by_name["Noise_NKpsk0_25519_ChaChaPoly_SHA256"]]
    psk2 = doc["vectors"][by_name["Noise_NKpsk2_25519_ChaChaPoly_SHA256"]]
    nk = doc["vectors"][by_name["Noise_NK_25519_ChaChaPoly_SHA256"]]
    psk0["init_psks"] = psk0["init_psks"] * 2
    psk2["resp_psk"] = psk2.pop("resp_psks")[0]  # the older single-PSK spelling
    nk["resp_psks"] = psk0["resp_psks"]
    wrong = copy.deepcopy(psk2)
    wrong["init_psks"] = ["11" * 32]
    doc["vectors"].append(wrong)
    code, lines = run_cli(tmp_path, doc)
    assert code == 1
    i0 = by_name["Noise_NKpsk0_25519_ChaChaPoly_SHA256"] + 1
    i2 = by_name["Noise_NKpsk2_25519_ChaChaPoly_SHA256"] + 1
    ink = by_name["Noise_NK_25519_ChaChaPoly_SHA256"] + 1
    assert (f"FAIL #{i0} Noise_NKpsk0_25519_ChaChaPoly_SHA256 initiator: "
            "init_psks has 2 PSKs, the pattern takes 1") in lines
    assert f"PASS #{i0} Noise_NKpsk0_25519_ChaChaPoly_SHA256 responder" in lines
    assert f"PASS #{i2} Noise_NKpsk2_25519_ChaChaPoly_SHA256 responder" in lines
    assert (f"FAIL #{ink} Noise_NK_25519_ChaChaPoly_SHA256 responder: "
            "resp_psks given for a pattern without psk") in lines
    # A wrong initiator PSK under NKpsk2: message 1 is still byte-identical
    # (the PSK is mixed in at message 2), so the refusal comes at message 2.
    assert (f"FAIL #{len(doc['vectors'])} Noise_NKpsk2_25519_ChaChaPoly_SHA256 initiator: "
            "message 2 rejected: AuthError") in lines


def test_init_static_on_an_nk_vector_is_ignored_with_a_note(tmp_path: Path,
                                                            shared_vectors: Path) -> None:
    doc = shared_doc(shared_vectors)
    doc["vectors"][0]["init_static"] = "22" * 32
    del doc["vectors"][0]["init_remote_static"]
    code, lines = run_cli(tmp_path, doc)
    assert code == 0
    name = doc["vectors"][0]["protocol_name"]
    assert (f"PASS #1 {name} initiator: init_static ignored: an NK initiator has no static key; "
            "init_remote_static derived from resp_static") in lines


def test_a_malformed_vector_fails_alone(tmp_path: Path, shared_vectors: Path) -> None:
    doc = shared_doc(shared_vectors)
    del doc["vectors"][0]["resp_ephemeral"]
    doc["vectors"][1]["messages"] = doc["vectors"][1]["messages"][:1]
    doc["vectors"][2]["init_ephemeral"] = "zz"
    doc["vectors"].append(["not", "a", "vector"])
    code, lines = run_cli(tmp_path, doc)
    assert code == 1
    assert any(ln.startswith("FAIL #1 ") and ln.endswith("responder: vector lacks resp_ephemeral")
               for ln in lines)
    assert sum("vector has fewer than the 2 handshake messages" in ln for ln in lines) == 2
    assert any(ln.startswith("FAIL #3 ") and ln.endswith("initiator: init_ephemeral is not hex")
               for ln in lines)
    assert "FAIL #7 ? responder: malformed vector (not an object)" in lines
    assert lines[-1] == "8 passed, 6 failed, 0 skipped"


def test_unreadable_files_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, lines = run_cli(tmp_path, None, str(bad))
    assert code == 2
    assert lines[0].startswith(f"ERROR {bad}: ")
    code, _ = run_cli(tmp_path, None, str(tmp_path / "missing.json"))
    assert code == 2
    code, lines = run_cli(tmp_path, {"vectors": "nope"})
    assert code == 2


def test_json_output(tmp_path: Path, shared_vectors: Path) -> None:
    code, lines = run_cli(tmp_path, mixed_doc(shared_vectors), "--json")
    assert code == 0
    doc = json.loads("\n".join(lines))
    assert (doc["passed"], doc["failed"], doc["skipped"]) == (12, 0, 2 * len(UNSUPPORTED))
    assert len(doc["lines"]) == 12 + 2 * len(UNSUPPORTED)


@pytest.mark.parametrize("suite", SUITES)
def test_cli_runner_and_pytest_vectors_agree_per_suite(tmp_path: Path, shared_vectors: Path,
                                                       suite: str) -> None:
    doc = shared_doc(shared_vectors)
    doc["vectors"] = [v for v in doc["vectors"] if v["protocol_name"] == suite]
    code, lines = run_cli(tmp_path, doc)
    assert code == 0
    assert lines == [f"PASS #1 {suite} initiator", f"PASS #1 {suite} responder",
                     "2 passed, 0 failed, 0 skipped"]
