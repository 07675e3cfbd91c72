"""Every KDF parameter read from an encrypted key file is bounded before
any derivation (moteseal/keys/keyfile.py, docs/keys.md): a tampered cost
is refused with exit 3, not derived for minutes."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest
from click.testing import CliRunner

from moteseal.cli.main import main
from moteseal.keys.keyfile import (KDF_MEM_MAX, KDF_OPS_MAX, KeyFileError,
                                   decode_key_file, encode_key_file,
                                   generate_keypair)

PW = b"tr0ub4dor&3"


def _tampered(**fields) -> bytes:
    doc = cbor2.loads(encode_key_file(generate_keypair(), PW, "interactive"))
    doc.update(fields)
    return cbor2.dumps(doc, canonical=True)


@pytest.mark.parametrize("fields", [
    {"ops": KDF_OPS_MAX + 1},
    {"ops": 0xFFFFFFFF},  # libsodium's own maximum: hours of work
    {"ops": 0},
    {"mem": KDF_MEM_MAX + 1},
    {"mem": 1 << 62},
    {"mem": 0},
], ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_a_tampered_kdf_cost_is_refused_before_derivation(fields):
    with pytest.raises(KeyFileError, match="argon2id cost out of range"):
        decode_key_file(_tampered(**fields), PW)


def test_the_bounds_admit_every_profile_moteseal_writes():
    kp = generate_keypair()
    for level in ("interactive", "moderate"):  # "sensitive" is the bound itself
        doc = cbor2.loads(encode_key_file(kp, PW, level))
        assert doc["ops"] <= KDF_OPS_MAX and doc["mem"] <= KDF_MEM_MAX
    assert decode_key_file(encode_key_file(kp, PW, "interactive"), PW).pub == kp.pub


def test_the_cli_exits_3_naming_the_file_for_a_tampered_cost(tmp_path: Path):
    path = tmp_path / "k.key"
    path.write_bytes(_tampered(ops=1000))
    os.chmod(path, 0o600)
    r = CliRunner().invoke(main, ["fingerprint", str(path)],
                           env={"MOTESEAL_PASSPHRASE": PW.decode(), "MOTESEAL_CONFIG": "",
                                "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert r.exit_code == 3, r.output
    assert "k.key" in r.stderr and "argon2id cost out of range" in r.stderr
