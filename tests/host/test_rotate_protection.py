"""``moteseal rotate --out`` keeps a passphrase-protected peer key protected:
without a passphrase for the new key it refuses (exit 3) and writes
nothing; with one, the new key is encrypted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from moteseal.cli.main import main
from moteseal.keys.keyfile import is_encrypted

PW = "tr0ub4dor&3"


@pytest.fixture
def run(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data"),
            "MOTESEAL_PASSPHRASE": "", "MOTESEAL_CONFIG": "", "MOTESEAL_KEYS_KDF": "interactive"}

    def invoke(*args, code=0, pw="", input=None):
        r = CliRunner().invoke(main, list(args), input=input, env={**base, "MOTESEAL_PASSPHRASE": pw})
        assert r.exit_code == code, (r.exit_code, r.output, r.exception)
        assert "Traceback" not in r.output
        return r
    return invoke


def test_rotate_refuses_to_write_the_new_key_in_the_clear(run):
    run("keygen", "--out", "hub1.key", "--peer", "hub1", pw=PW)
    assert is_encrypted(Path("hub1.key").read_bytes())
    r = run("rotate", "--peer", "hub1", "--out", "hub1-b.key", "--json", code=3)
    err = json.loads(r.stdout)["error"]
    assert "passphrase-protected" in err and "--passphrase" in err
    assert not Path("hub1-b.key").exists() and not Path("hub1-b.pub").exists()
    keys = json.loads(run("registry", "keys", "--peer", "hub1", "--json").stdout)["keys"]
    assert [k["state"] for k in keys] == ["current"]  # nothing rotated


def test_rotate_with_a_passphrase_encrypts_the_new_key(run):
    run("keygen", "--out", "hub1.key", "--peer", "hub1", pw=PW)
    run("rotate", "--peer", "hub1", "--out", "hub1-b.key", pw=PW)
    assert is_encrypted(Path("hub1-b.key").read_bytes())
    run("rotate", "--peer", "hub1", "--retire", "--force")
    run("rotate", "--peer", "hub1", "--out", "hub1-c.key", "--passphrase", input=f"{PW}\n{PW}\n")
    assert is_encrypted(Path("hub1-c.key").read_bytes())


def test_rotate_of_an_unencrypted_key_may_stay_unencrypted(run):
    run("keygen", "--out", "hub1.key", "--peer", "hub1")
    run("rotate", "--peer", "hub1", "--out", "hub1-b.key")
    assert not is_encrypted(Path("hub1-b.key").read_bytes())


def test_rotate_refuses_when_it_cannot_tell(run):
    run("keygen", "--out", "hub1.key", "--peer", "hub1", pw=PW)
    os.unlink("hub1.key")
    err = run("rotate", "--peer", "hub1", "--out", "hub1-b.key", code=3).stderr
    assert "cannot tell" in err and not Path("hub1-b.key").exists()
