"""Round trips of keygen, fingerprint, provision, registry and rotate through
click's CliRunner and through the installed ``moteseal`` console script:
exit codes, --json, permissions, passphrases, config errors."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from moteseal.cli.main import main
from moteseal.keys.provision import read_bundle
from moteseal.keys.registry import Registry

PW = "tr0ub4dor&3"


class Cli:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = {
            "XDG_CONFIG_HOME": str(tmp / "cfg"),
            "XDG_DATA_HOME": str(tmp / "data"),
            "MOTESEAL_PASSPHRASE": "",
            "MOTESEAL_CONFIG": "",
            "MOTESEAL_KEYS_KDF": "interactive",  # keep argon2id cheap in tests
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0, input: str | None = None, env: dict | None = None) -> Result:
        r = self.runner.invoke(main, list(args), input=input, env={**self.env, **(env or {})})
        assert r.exit_code == code, (r.exit_code, r.output, r.exception)
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        assert "Traceback" not in r.output
        return r

    def json(self, *args: str, code: int = 0, **kw) -> dict:
        return json.loads(self(*args, "--json", code=code, **kw).stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    os.chdir(tmp_path)
    return Cli(tmp_path)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("cmd", [["keygen"], ["fingerprint"], ["provision"], ["registry"], ["registry", "list"],
                                 ["registry", "show"], ["registry", "revoke"], ["registry", "keys"], ["rotate"]])
def test_every_command_has_help_with_examples(cli: Cli, cmd: list[str]) -> None:
    out = cli(*cmd, "--help").output
    assert "Example" in out and "moteseal " + cmd[0] in out


def test_keygen_writes_0600_key_and_public_file(cli: Cli) -> None:
    doc = cli.json("keygen", "--out", "hub1.key")
    assert mode(cli.tmp / "hub1.key") == 0o600 and mode(cli.tmp / "hub1.pub") == 0o644
    assert doc["public_key_file"] == "hub1.pub" and len(doc["safety_number"]) == 71 and not doc["encrypted"]
    fp = cli.json("fingerprint", "hub1.pub")
    assert fp["keys"][0]["safety_number"] == doc["safety_number"] and fp["kind"] == "public key"
    assert cli.json("fingerprint", "hub1.key")["keys"][0]["public_key"] == doc["public_key"]


def test_keygen_never_overwrites_silently(cli: Cli) -> None:
    first = cli.json("keygen", "--out", "hub1.key")
    err = cli.json("keygen", "--out", "hub1.key", code=2)
    assert "already exists" in err["error"] and "--force" in err["error"] and err["exit_code"] == 2
    # Refused before anything else happens: no registry appears for --peer.
    cli("keygen", "--out", "hub1.key", "--peer", "hubz", code=2)
    assert not (cli.tmp / "data" / "moteseal" / "hubz.sqlite").exists()
    assert cli.json("fingerprint", "hub1.key")["keys"][0]["public_key"] == first["public_key"]
    second = cli.json("keygen", "--out", "hub1.key", "--force")
    assert second["public_key"] != first["public_key"]


def test_passphrase_prompt_round_trip_and_wrong_passphrase(cli: Cli) -> None:
    doc = cli.json("keygen", "--out", "k.key", "--passphrase", input=f"{PW}\n{PW}\n")
    assert doc["encrypted"]
    assert cli.json("fingerprint", "k.key", "--passphrase", input=f"{PW}\n")["keys"][0]["public_key"] == doc["public_key"]
    r = cli("fingerprint", "k.key", "--passphrase", input="nope\n", code=3)
    assert "wrong passphrase" in r.stderr
    r = cli("fingerprint", "k.key", code=2)  # no prompt asked for, none in the environment
    assert "MOTESEAL_PASSPHRASE" in r.stderr


def test_passphrase_from_environment(cli: Cli) -> None:
    doc = cli.json("keygen", "--out", "k.key", env={"MOTESEAL_PASSPHRASE": PW})
    assert doc["encrypted"]
    assert cli.json("fingerprint", "k.key", env={"MOTESEAL_PASSPHRASE": PW})["keys"][0]["public_key"] == doc["public_key"]
    cli("fingerprint", "k.key", env={"MOTESEAL_PASSPHRASE": "wrong"}, code=3)


def test_group_readable_key_is_refused_with_exit_3(cli: Cli) -> None:
    cli("keygen", "--out", "k.key")
    os.chmod("k.key", 0o644)
    r = cli("fingerprint", "k.key", code=3)
    assert "too open" in r.stderr and "chmod 600" in r.stderr
    assert cli("fingerprint", "k.pub").output  # the public file is fine


def test_truncated_and_tampered_files_are_refused_with_exit_3(cli: Cli) -> None:
    cli("keygen", "--out", "k.key", "--peer", "hub1")
    data = Path("k.key").read_bytes()
    Path("k.key").write_bytes(data[:40])
    assert "truncated" in cli("fingerprint", "k.key", code=3).stderr
    cli("provision", "s1", "--peer", "hub1", "--out", "s1.bundle")
    b = bytearray(Path("s1.bundle").read_bytes())
    b[len(b) // 2] ^= 0x10
    Path("s1.bundle").write_bytes(bytes(b))
    assert "s1.bundle" in cli("fingerprint", "s1.bundle", code=3).stderr
    cli("fingerprint", "missing.key", code=2)


def test_qr_in_terminal_and_as_files(cli: Cli) -> None:
    cli("keygen", "--out", "k.key")
    out = cli("fingerprint", "k.pub", "--qr").output
    assert "\u2588" in out
    cli("fingerprint", "k.pub", "--qr-out", "k.png")
    cli("fingerprint", "k.pub", "--qr-out", "k.svg")
    assert Path("k.png").read_bytes()[:4] == b"\x89PNG" and b"<svg" in Path("k.svg").read_bytes()
    cli("fingerprint", "k.pub", "--qr-out", "k.bmp", code=2)


def test_provision_round_trip(cli: Cli) -> None:
    cli("keygen", "--out", "hub1.key", "--peer", "hub1")
    doc = cli.json("provision", "s1", "--peer", "hub1", "--host", "mqtt.example", "--port", "8883",
                   "--username", "s1", env={"MOTESEAL_LINK_PASSWORD": "secret"})
    assert doc["bundle"] == "s1.bundle" and doc["generation"] == 1
    assert doc["link"] == {"kind": "mqtt", "host": "mqtt.example", "port": 8883, "username": "s1", "password": "(set)"}
    assert mode(cli.tmp / "s1.bundle") == 0o600
    b = read_bundle("s1.bundle")
    assert b.device_id == b"s1" and b.peer_id == b"hub1" and b.link["password"] == "secret"
    assert b.suite == "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
    assert "secret" not in json.dumps(doc) and b.psk.hex() not in json.dumps(doc)
    # The registry lives at the config's default place.
    assert mode(cli.tmp / "data" / "moteseal" / "hub1.sqlite") == 0o600
    err = cli.json("provision", "s1", "--peer", "hub1", code=2)
    assert "--replace" in err["error"]
    again = cli.json("provision", "s1", "--peer", "hub1", "--replace", "--link", "serial", "--serial-port", "/dev/ttyS1")
    assert again["generation"] == 2 and read_bundle("s1.bundle").psk != b.psk
    assert read_bundle("s1.bundle").link == {"kind": "serial", "port": "/dev/ttyS1", "baud": 115200}


def test_provision_before_the_peer_has_a_key(cli: Cli) -> None:
    err = cli.json("provision", "s1", "--peer", "hub9", code=2)
    assert "keygen --peer" in err["error"]
    cli("provision", "bad id!", "--peer", "hub9", code=2)
    cli("provision", "--peer", "hub9", code=2)


def test_provision_from_csv_with_progress(cli: Cli) -> None:
    cli("keygen", "--out", "hub1.key", "--peer", "hub1")
    Path("fleet.csv").write_text("device_id,username,password,kind\nf1,u1,p1,mqtt\nf2,u2,p2,mqtt\nf3,,,none\n")
    r = cli("provision", "--from-csv", "fleet.csv", "--peer", "hub1", "--out-dir", "bundles", "--json")
    doc = json.loads(r.stdout)
    assert [d["device_id"] for d in doc["provisioned"]] == ["f1", "f2", "f3"]
    assert "provisioning" in r.stderr  # the progress bar goes to stderr
    assert read_bundle("bundles/f2.bundle").link["username"] == "u2"
    assert read_bundle("bundles/f3.bundle").link == {"kind": "none"}
    # A second run changes nothing unless --replace: checked before any write.
    before = Path("bundles/f1.bundle").read_bytes()
    assert "already provisioned" in cli.json("provision", "--from-csv", "fleet.csv", "--peer", "hub1",
                                             "--out-dir", "bundles", code=2)["error"]
    assert Path("bundles/f1.bundle").read_bytes() == before
    Path("bad.csv").write_text("device_id,colour\nx,red\n")
    assert "colour" in cli.json("provision", "--from-csv", "bad.csv", "--peer", "hub1", code=2)["error"]
    Path("bad2.csv").write_text("device_id\nok-1\nnot ok\n")
    assert "line 3" in cli.json("provision", "--from-csv", "bad2.csv", "--peer", "hub1", code=2)["error"]
    assert not Path("ok-1.bundle").exists()


def test_registry_list_show_revoke_keys(cli: Cli) -> None:
    cli("keygen", "--out", "hub1.key", "--peer", "hub1")
    for d in ("a1", "a2"):
        cli("provision", d, "--peer", "hub1")
    listed = cli.json("registry", "list", "--peer", "hub1")
    assert [d["device_id"] for d in listed["devices"]] == ["a1", "a2"]
    assert all(d["pinned_keys"][0]["state"] == "current" for d in listed["devices"])
    assert "a1" in cli("registry", "list", "--peer", "hub1").output
    rev = cli.json("registry", "revoke", "a2", "--peer", "hub1", "--reason", "lost")
    assert rev["revoked"] and rev["revoke_reason"] == "lost"
    shown = cli.json("registry", "show", "a2", "--peer", "hub1")
    with Registry(cli.tmp / "data" / "moteseal" / "hub1.sqlite") as reg:
        psk = reg.psk_for(b"a2")
    assert shown["revoked"] and "psk" not in shown and psk.hex() not in json.dumps(shown)
    assert "lost" in cli("registry", "show", "a2", "--peer", "hub1").output
    cli("registry", "show", "zz", "--peer", "hub1", code=2)
    keys = cli.json("registry", "keys", "--peer", "hub1", "--check")
    assert keys["checked"] and [k["state"] for k in keys["keys"]] == ["current"]
    os.chmod("hub1.key", 0o640)
    cli("registry", "keys", "--peer", "hub1", "--check", code=3)
    os.chmod(cli.tmp / "data" / "moteseal" / "hub1.sqlite", 0o644)
    assert "too open" in cli("registry", "list", "--peer", "hub1", code=3).stderr


def test_keygen_for_a_peer_that_has_a_key_is_refused(cli: Cli) -> None:
    cli("keygen", "--out", "hub1.key", "--peer", "hub1")
    err = cli.json("keygen", "--out", "other.key", "--peer", "hub1", code=3)
    assert "rotate" in err["error"] and not Path("other.key").exists()


def test_rotate_status_and_retire(cli: Cli) -> None:
    cli("keygen", "--out", "hub1.key", "--peer", "hub1")
    cli("provision", "old", "--peer", "hub1")
    cli("rotate", "--peer", "hub1", code=2)  # needs one of --out/--retire/--status
    assert "another --out" in cli.json("rotate", "--peer", "hub1", "--out", "hub1.key", code=2)["error"]
    rot = cli.json("rotate", "--peer", "hub1", "--out", "hub1-b.key")
    assert mode(cli.tmp / "hub1-b.key") == 0o600
    assert [d["device_id"] for d in rot["devices_on_old_key"]] == ["old"]
    cli.json("rotate", "--peer", "hub1", "--out", "hub1-c.key", code=3)  # overlap still open
    assert not Path("hub1-c.key").exists()
    cli("provision", "new", "--peer", "hub1")
    st = cli.json("rotate", "--peer", "hub1", "--status")
    assert [d["device_id"] for d in st["devices_on_old_key"]] == ["old"]
    assert "old" in cli("rotate", "--peer", "hub1", "--retire", code=3).stderr
    cli("provision", "old", "--peer", "hub1", "--replace")
    ret = cli.json("rotate", "--peer", "hub1", "--retire")
    assert ret["devices_on_old_key"] == [] and ret["retired"] != rot["rotated_to"]
    states = [k["state"] for k in cli.json("registry", "keys", "--peer", "hub1")["keys"]]
    assert states == ["current", "retired"]


def test_config_file_supplies_defaults(cli: Cli) -> None:
    etc = cli.tmp / "etc"
    etc.mkdir()
    cfg = etc / "moteseal.toml"
    cfg.write_text(
        '[registry]\ndir = "regs"\npeer = "hubx"\n'
        '[provision]\nout_dir = "out"\n[link]\nkind = "serial"\nserial_port = "/dev/ttyACM0"\nbaud = 9600\n'
    )
    cli("keygen", "--out", "hubx.key", "--peer", "hubx", "--config", str(cfg))
    assert (etc / "regs" / "hubx.sqlite").exists()  # relative to the config file, not the cwd
    (etc / "out").mkdir()
    doc = cli.json("provision", "d1", "--config", str(cfg))  # peer from the config
    assert doc["bundle"] == str(etc / "out" / "d1.bundle")
    assert read_bundle(etc / "out" / "d1.bundle").link == {"kind": "serial", "port": "/dev/ttyACM0", "baud": 9600}
    # $MOTESEAL_CONFIG is the default file; env overrides the file.
    env = {"MOTESEAL_CONFIG": str(cfg), "MOTESEAL_LINK_BAUD": "57600"}
    cli("provision", "d2", env=env)
    assert read_bundle(etc / "out" / "d2.bundle").link["baud"] == 57600
    cli("provision", "d3", env={**env, "MOTESEAL_PROVISION_OUT_DIR": "here"})  # relative to the cwd
    assert read_bundle("here/d3.bundle").device_id == b"d3"
    assert mode(cli.tmp / "here") == 0o700


@pytest.mark.parametrize(
    "toml, needle",
    [
        ('[link]\nport = "x"\n', "[link] port"),
        ('[link]\nprot = 1\n', "[link] prot: unknown key"),
        ('[lnk]\nport = 1\n', "unknown section [lnk]"),
        ('[provision]\nsuite = "Noise_XX"\n', "[provision] suite"),
        ("[link\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_file_and_the_key(cli: Cli, toml: str, needle: str) -> None:
    cfg = cli.tmp / "bad.toml"
    cfg.write_text(toml)
    err = cli.json("registry", "list", "--peer", "hub1", "--config", str(cfg), code=2)["error"]
    assert str(cfg) in err and needle in err


def test_environment_override_errors_name_the_variable(cli: Cli) -> None:
    err = cli.json("registry", "list", "--peer", "hub1", env={"MOTESEAL_LINK_PORT": "99999"}, code=2)["error"]
    assert "MOTESEAL_LINK_PORT" in err and "[link] port" in err
    env = {"MOTESEAL_LINK_PASSWORD": "x", "MOTESEAL_LINK_KIND": "carrier-pigeon"}
    err = cli.json("registry", "list", "--peer", "hub1", env=env, code=2)["error"]
    assert "MOTESEAL_LINK_KIND" in err
    cli("registry", "list", "--config", "nope.toml", "--peer", "hub1", code=2)


def _moteseal() -> list[str]:
    exe = shutil.which("moteseal") or str(Path(sys.executable).with_name("moteseal"))
    assert os.path.exists(exe), "the moteseal console script is not installed (pip install -e .)"
    return [exe]


def test_installed_console_script_round_trip(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "MOTESEAL_KEYS_KDF": "interactive", "MOTESEAL_PASSPHRASE": PW}
    env.pop("MOTESEAL_CONFIG", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_moteseal(), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    r = run("keygen", "--out", "hub1.key", "--peer", "hub1", "--json")
    assert r.returncode == 0, r.stderr
    key = json.loads(r.stdout)
    assert key["encrypted"] and mode(tmp_path / "hub1.key") == 0o600
    r = run("provision", "s1", "--peer", "hub1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pinned_keys"] == [key["public_key"]]
    r = run("registry", "list", "--peer", "hub1", "--json")
    assert [d["device_id"] for d in json.loads(r.stdout)["devices"]] == ["s1"]
    r = run("fingerprint", "s1.bundle", "--json")
    assert json.loads(r.stdout)["keys"][0]["safety_number"] == key["safety_number"]
    r = run("rotate", "--peer", "hub1", "--status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["devices_on_old_key"] == []
    r = run("registry", "revoke", "s1", "--peer", "hub1")
    assert r.returncode == 0 and "revoked s1" in r.stdout
    env["MOTESEAL_PASSPHRASE"] = "wrong"
    r = run("fingerprint", "hub1.key")
    assert r.returncode == 3 and "wrong passphrase" in r.stderr and "Traceback" not in r.stderr
    r = run("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("keygen", "fingerprint", "provision", "registry", "rotate"))
