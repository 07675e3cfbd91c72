"""Key files and safety numbers: permissions, passphrases, corruption."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import cbor2
import pytest

from moteseal.keys import fingerprint as fp
from device.errors import LocalError
from moteseal.keys.keyfile import (
    KeyFileError,
    KeyPermissionError,
    PassphraseRequired,
    WrongPassphrase,
    decode_key_file,
    encode_key_file,
    generate_keypair,
    normalize_passphrase,
    parse_public,
    public_of,
    read_key_file,
    read_public_any,
    write_key_file,
    write_public_file,
)

PW = b"correct horse battery staple"


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_plain_key_round_trip_is_written_0600(tmp_path: Path) -> None:
    kp = generate_keypair()
    path = tmp_path / "peer.key"
    old = os.umask(0)  # the file must not depend on the caller's umask
    try:
        write_key_file(path, kp)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    back = read_key_file(path)
    assert (back.priv, back.pub) == (kp.priv, kp.pub)
    assert public_of(kp.priv) == kp.pub


def test_encrypted_key_round_trip_and_no_private_bytes_in_file(tmp_path: Path) -> None:
    kp = generate_keypair()
    path = tmp_path / "peer.key"
    write_key_file(path, kp, PW, kdf="interactive")
    raw = path.read_bytes()
    assert kp.priv not in raw
    assert kp.pub in raw  # fingerprint works without the passphrase
    assert read_key_file(path, PW).priv == kp.priv


def test_encrypted_key_at_default_cost_opens(tmp_path: Path) -> None:
    kp = generate_keypair()
    path = tmp_path / "peer.key"
    write_key_file(path, kp, PW)  # default: argon2id "moderate"
    doc = cbor2.loads(path.read_bytes())
    assert doc["mem"] == 256 * 1024 * 1024 and doc["kdf"] == "argon2id13"
    assert read_key_file(path, PW).pub == kp.pub


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o660, 0o620])
def test_key_file_readable_by_group_or_world_is_refused(tmp_path: Path, bits: int) -> None:
    kp = generate_keypair()
    path = tmp_path / "peer.key"
    write_key_file(path, kp)
    os.chmod(path, bits)
    with pytest.raises(KeyPermissionError, match="too open") as ei:
        read_key_file(path)
    assert "chmod 600" in str(ei.value)
    assert isinstance(ei.value, LocalError) and ei.value.exit_code == 3


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    write_key_file(path, generate_keypair(), PW, kdf="interactive")
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        read_key_file(path, b"not it")


def test_encrypted_key_without_passphrase_asks_for_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTESEAL_PASSPHRASE", raising=False)
    path = tmp_path / "peer.key"
    write_key_file(path, generate_keypair(), PW, kdf="interactive")
    with pytest.raises(PassphraseRequired, match="MOTESEAL_PASSPHRASE"):
        read_key_file(path)


def test_passphrase_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "peer.key"
    kp = generate_keypair()
    write_key_file(path, kp, normalize_passphrase("s\u00e9same"), kdf="interactive")
    # The decomposed form of the same word must open it (NFC normalisation).
    monkeypatch.setenv("MOTESEAL_PASSPHRASE", "se\u0301same")
    assert read_key_file(path).pub == kp.pub


def test_existing_key_is_never_silently_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    first = generate_keypair()
    write_key_file(path, first)
    with pytest.raises(FileExistsError):
        write_key_file(path, generate_keypair())
    assert read_key_file(path).pub == first.pub
    second = generate_keypair()
    write_key_file(path, second, overwrite=True)
    assert read_key_file(path).pub == second.pub and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["peer.key"]  # no temp files left


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_every_truncation_of_a_key_file_is_refused(encrypted: bool) -> None:
    kp = generate_keypair()
    data = encode_key_file(kp, PW if encrypted else None, kdf="interactive")
    for n in range(len(data)):
        with pytest.raises(KeyFileError):
            decode_key_file(data[:n], PW, f"cut at {n}")


def test_every_bit_flip_in_a_plain_key_file_is_refused() -> None:
    data = encode_key_file(generate_keypair())
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            with pytest.raises(KeyFileError):
                decode_key_file(bytes(bad), None, f"byte {i}")


def test_tampered_encrypted_key_fields_are_refused() -> None:
    kp = generate_keypair()
    doc = cbor2.loads(encode_key_file(kp, PW, kdf="interactive"))
    for field in ("pub", "salt", "box"):
        bad = dict(doc)
        b = bytearray(bad[field])
        b[len(b) // 2] ^= 1
        bad[field] = bytes(b)
        with pytest.raises(KeyFileError):
            decode_key_file(cbor2.dumps(bad), PW)
    bad = dict(doc, ops=doc["ops"] + 1)
    with pytest.raises(WrongPassphrase):
        decode_key_file(cbor2.dumps(bad), PW)
    bad = dict(doc, mem=1 << 40)  # a tampered cost must not allocate a TiB
    with pytest.raises(KeyFileError, match="out of range"):
        decode_key_file(cbor2.dumps(bad), PW)
    bad = dict(doc, v=2)
    with pytest.raises(KeyFileError, match="version"):
        decode_key_file(cbor2.dumps(bad), PW)


def test_public_key_file_round_trip_and_corruption(tmp_path: Path) -> None:
    kp = generate_keypair()
    path = tmp_path / "peer.pub"
    write_public_file(path, kp.pub)
    assert mode(path) == 0o644  # public: no secrecy needed
    assert read_public_any(path) == (kp.pub, "pub")
    text = path.read_text()
    for n in range(len(text.strip())):
        with pytest.raises(KeyFileError):
            parse_public(text[:n])
    with pytest.raises(KeyFileError):
        parse_public(text.replace(text[30], "g" if text[30] != "g" else "h"))


def test_read_public_any_checks_a_key_file_mode(tmp_path: Path) -> None:
    kp = generate_keypair()
    path = tmp_path / "peer.key"
    write_key_file(path, kp, PW, kdf="interactive")
    assert read_public_any(path) == (kp.pub, "key")
    os.chmod(path, 0o644)
    with pytest.raises(KeyPermissionError):
        read_public_any(path)


def _reference_safety_number(pub: bytes) -> str:
    # The construction exactly as docs/keys.md states it.
    h = hashlib.sha512(b"\x00\x01" + b"moteseal-x25519" + pub).digest()
    for _ in range(5200):
        h = hashlib.sha512(h + pub).digest()
    return " ".join("%05d" % (int.from_bytes(h[i : i + 5], "big") % 100000) for i in range(0, 60, 5))


def test_safety_number_is_twelve_groups_of_five_digits() -> None:
    pub = bytes(range(32))
    n = fp.safety_number(pub)
    groups = n.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert n == _reference_safety_number(pub)
    assert fp.safety_number(pub) == n  # deterministic


def test_safety_number_changes_with_any_key_bit() -> None:
    pub = generate_keypair().pub
    base = fp.safety_number(pub)
    for i in range(0, 32, 7):
        other = bytearray(pub)
        other[i] ^= 1
        assert fp.safety_number(bytes(other)) != base


def test_qr_png_and_svg_encode_the_digits(tmp_path: Path) -> None:
    n = fp.safety_number(generate_keypair().pub)
    fp.qr_save(n, tmp_path / "k.png")
    fp.qr_save(n, tmp_path / "k.svg")
    assert (tmp_path / "k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "k.svg").read_bytes()
    with pytest.raises(ValueError):
        fp.qr_save(n, tmp_path / "k.gif")
    term = fp.qr_terminal(n)
    assert "\u2588" in term and len(term.splitlines()) > 10


@pytest.mark.parametrize("encrypted", [False, True])
def test_bytes_appended_to_a_key_file_are_refused(encrypted: bool) -> None:
    """cbor2 alone would ignore them; a key file is exactly what we wrote."""
    from moteseal.keys.keyfile import KeyFileError, decode_key_file, encode_key_file, generate_keypair
    pw = b"correct horse" if encrypted else None
    data = encode_key_file(generate_keypair(), pw, kdf="interactive") if encrypted \
        else encode_key_file(generate_keypair())
    assert decode_key_file(data, pw).priv
    with pytest.raises(KeyFileError, match="trailing"):
        decode_key_file(data + b"\x00", pw)


def test_a_key_file_with_a_nested_field_is_refused_before_canonical_reencoding() -> None:
    """Canonical re-encoding of maps nested as map keys is exponential in
    cbor2; a key file is flat, so a nested field is refused first."""
    from moteseal.keys.keyfile import KeyFileError, decode_key_file, encode_key_file, generate_keypair
    doc = cbor2.loads(encode_key_file(generate_keypair()))
    deep: object = 0
    for _ in range(3):
        deep = {"k": deep}
    doc["extra"] = deep
    with pytest.raises(KeyFileError, match="nested"):
        decode_key_file(cbor2.dumps(doc, canonical=True), None)
