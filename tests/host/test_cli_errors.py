"""The exit-code table of README.md, enforced over every subcommand and
every class of error, through the real ``moteseal`` process:

  0 success, 1 the operation found a failure, 2 usage error,
  3 security refusal.

Each case runs ``python -m moteseal.cli.main`` with a user's mistake and
checks the exit code, one ``moteseal: error:`` / ``Error:`` line, no
traceback, and with ``--json`` the ``{"error", "exit_code"}`` document on
stdout (usage errors included). Secrets given to the fixtures never appear
in any output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.broker import free_port

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
PASS = "correct horse battery"
NK = "Noise_NK_25519_ChaChaPoly_SHA256"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), MOTESEAL_CONFIG="", MOTESEAL_KEYS_KDF="interactive",
             XDG_CONFIG_HOME=str(cwd / "cfg"), XDG_DATA_HOME=str(cwd / "data"), MOTESEAL_PASSPHRASE="")
    e.pop("MOTESEAL_DEBUG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "moteseal.cli.main", *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A peer hub1 with a passphrase-protected key and a registry, a
    provisioned device s1, and damaged copies of its bundle."""
    d = tmp_path_factory.mktemp("world")
    r = run(["keygen", "--out", "hub1.key", "--peer", "hub1", "--registry", "reg.sqlite"], d,
            {"MOTESEAL_PASSPHRASE": PASS})
    assert r.returncode == 0, r.stderr
    r = run(["provision", "s1", "--registry", "reg.sqlite", "--out", "s1.bundle",
             "--host", "127.0.0.1"], d)
    assert r.returncode == 0, r.stderr
    data = (d / "s1.bundle").read_bytes()
    for name, body, mode in (("short.bundle", data[: len(data) // 2], 0o600),
                             ("open.bundle", data, 0o644)):
        (d / name).write_bytes(body)
        os.chmod(d / name, mode)
    (d / "bad.toml").write_text("[registry]\nnosuch = 1\n")
    (d / "broker").mkdir()
    (d / "noflash").mkdir()
    return d


# (id, argv, env, exit code, text the error names, whether the command takes --json)
CASES = [
    # 2: usage errors: bad options, missing files and directories, bad config
    ("keygen-no-out", ["keygen"], {}, 2, "--out", True),
    ("keygen-missing-dir", ["keygen", "--out", "nodir/k.key"], {}, 2, "does not exist", True),
    ("fingerprint-missing-file", ["fingerprint", "nosuch.pub"], {}, 2, "nosuch.pub", True),
    ("provision-missing-registry", ["provision", "s9", "--registry", "nosuch.sqlite"], {}, 2,
     "no registry", True),
    ("provision-out-missing-dir", ["provision", "s9", "--registry", "reg.sqlite", "--out",
                                   "nodir/s9.bundle"], {}, 2, "does not exist", True),
    ("registry-missing", ["registry", "list", "--registry", "nosuch.sqlite"], {}, 2, "no registry", True),
    ("registry-bad-config", ["registry", "list", "--config", "bad.toml"], {}, 2, "nosuch", True),
    ("rotate-missing-registry", ["rotate", "--status", "--registry", "nosuch.sqlite"], {}, 2,
     "no registry", True),
    ("peer-missing-registry", ["peer", "listen", "--registry", "nosuch.sqlite"], {}, 2, "no registry", True),
    ("peer-missing-password-file", ["peer", "listen", "--registry", "reg.sqlite", "--password-file",
                                    "nosuch.pw"], {"MOTESEAL_PASSPHRASE": PASS}, 2, "nosuch.pw", True),
    ("peer-suite-xx", ["peer", "listen", "--suite", "Noise_XX"], {}, 2, "--suite", True),
    ("peer-suite-psk2", ["peer", "listen", "--suite", "Noise_NKpsk2_25519_ChaChaPoly_SHA256"], {}, 2,
     "--suite", True),
    ("peer-no-passphrase", ["peer", "listen", "--registry", "reg.sqlite"], {}, 2, "MOTESEAL_PASSPHRASE", True),
    ("simulate-missing-bundle", ["device", "simulate", "--bundle", "nosuch.bundle"], {}, 2,
     "nosuch.bundle", True),
    ("simulate-no-bundle", ["device", "simulate"], {}, 2, "--bundle", True),
    ("vectors-run-missing-file", ["vectors", "run", "nosuch.json"], {}, 2, "nosuch.json", True),
    ("vectors-generate-missing-dir", ["vectors", "generate", "--out", "nodir/v.json"], {}, 2,
     "does not exist", False),
    ("interop-bad-hex", ["interop", "--role", "responder", "--suite", NK, "--static", "zz"], {}, 2,
     "not hex", False),
    ("flash-build-missing-bundle", ["flash", "build", "--device", "s9", "--bundle", "nosuch.bundle"],
     {}, 2, "nosuch.bundle", True),
    ("flash-build-esp8266", ["flash", "build", "--device", "s1", "--bundle", "s1.bundle", "--board",
                             "esp8266"], {}, 2, "heap", True),
    ("flash-deploy-no-manifest", ["flash", "deploy", "--dir", "noflash", "--port", "/dev/nosuch"], {}, 2,
     "manifest", True),
    ("flash-monitor-missing-port", ["flash", "monitor", "--port", "nosuch-tty", "--seconds", "1"], {}, 2,
     "does not exist", True),
    ("gateway-run-missing-config", ["gateway", "run", "--config", "nosuch.toml"], {}, 2, "nosuch.toml", False),
    ("gateway-status-no-source", ["gateway", "status"], {}, 2, "--config", True),
    ("broker-bad-id", ["broker", "add-device", "bad id!", "--dir", "broker", "--no-reload"], {}, 2,
     "invalid id", True),
    ("broker-missing-dir", ["broker", "add-device", "s1", "--dir", "nodir", "--no-reload"], {}, 2,
     "does not exist", True),
    ("broker-certs-missing-dir", ["broker", "certs", "--out-dir", "nodir", "--dns", "localhost"], {}, 2,
     "does not exist", True),
    ("demo-bad-seconds", ["demo", "--seconds", "-1"], {}, 2, "--seconds", True),
    ("unknown-command", ["no-such-command"], {}, 2, "no-such-command", False),
    # 3: security refusals: wrong passphrase, damaged or exposed secrets
    ("peer-wrong-passphrase", ["peer", "listen", "--registry", "reg.sqlite"],
     {"MOTESEAL_PASSPHRASE": "wrong"}, 3, "wrong passphrase", True),
    ("registry-keys-wrong-passphrase", ["registry", "keys", "--check", "--registry", "reg.sqlite"],
     {"MOTESEAL_PASSPHRASE": "wrong"}, 3, "wrong passphrase", True),
    ("fingerprint-truncated-bundle", ["fingerprint", "short.bundle"], {}, 3, "short.bundle", True),
    ("fingerprint-world-readable-bundle", ["fingerprint", "open.bundle"], {}, 3, "open.bundle", True),
    ("simulate-truncated-bundle", ["device", "simulate", "--bundle", "short.bundle"], {}, 3,
     "short.bundle", True),
    ("simulate-world-readable-bundle", ["device", "simulate", "--bundle", "open.bundle"], {}, 3,
     "open.bundle", True),
    ("flash-build-truncated-bundle", ["flash", "build", "--device", "s1", "--bundle", "short.bundle"],
     {}, 3, "short.bundle", True),
    ("flash-build-world-readable-bundle", ["flash", "build", "--device", "s1", "--bundle", "open.bundle"],
     {}, 3, "open.bundle", True),
    # 1: the operation ran and found a failure
    ("peer-broker-down", ["peer", "listen", "--registry", "reg.sqlite", "--port", "{free}"],
     {"MOTESEAL_PASSPHRASE": PASS}, 1, "MQTT 127.0.0.1", True),
    ("broker-remove-unknown", ["broker", "remove-device", "s7", "--dir", "broker", "--no-reload"], {}, 1,
     "s7", True),
    ("gateway-status-unreachable", ["gateway", "status", "--url", "http://127.0.0.1:{free}/metrics"], {}, 1,
     "cannot read", True),
]


@pytest.mark.parametrize("args, env, code, names, takes_json", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_exit_code_table(world: Path, args: list[str], env: dict[str, str], code: int, names: str,
                         takes_json: bool) -> None:
    port = str(free_port())
    argv = [a.replace("{free}", port) for a in args] + (["--json"] if takes_json else [])
    r = run(argv, world, env)
    both = r.stdout + r.stderr
    assert r.returncode == code, (r.returncode, both)
    assert "Traceback" not in both and "internal error" not in both, both
    assert PASS not in both
    if takes_json:
        doc = json.loads(r.stdout.strip().splitlines()[-1])
        assert doc["exit_code"] == code and names in doc["error"], doc
    else:
        assert names in r.stderr, r.stderr
    assert "moteseal: error:" in r.stderr or "Error:" in r.stderr


def test_a_refused_output_path_changes_nothing(world: Path) -> None:
    """provision --out into a missing directory is refused before the
    registry is touched: s9 is not half-provisioned."""
    r = run(["provision", "s9", "--registry", "reg.sqlite", "--out", "nodir/s9.bundle"], world)
    assert r.returncode == 2
    r = run(["registry", "show", "s9", "--registry", "reg.sqlite", "--json"], world)
    assert r.returncode == 2 and "not in the registry" in json.loads(r.stdout)["error"]
    assert not (world / "nodir").exists()


def test_provision_from_an_excel_csv_with_a_byte_order_mark(world: Path) -> None:
    csv_dir = world / "csv"
    csv_dir.mkdir()
    (csv_dir / "fleet.csv").write_bytes("\ufeffdevice_id,host\r\ns20,10.0.0.2\r\ns21,10.0.0.3\r\n"
                                        .encode("utf-8"))
    r = run(["provision", "--from-csv", "csv/fleet.csv", "--registry", "reg.sqlite",
             "--out-dir", "csv/bundles", "--json"], world)
    assert r.returncode == 0, r.stderr
    assert [p["device_id"] for p in json.loads(r.stdout)["provisioned"]] == ["s20", "s21"]
    assert (csv_dir / "bundles" / "s20.bundle").exists()


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(world: Path,
                                                                      tmp_path: Path) -> None:
    """A bug still exits 1 with one line (and how to see more), never a
    traceback, unless MOTESEAL_DEBUG asks for it. A registry that is not a
    directory where one is expected is such an unplanned path."""
    (tmp_path / "reg.sqlite").mkdir()
    r = run(["registry", "list", "--registry", str(tmp_path / "reg.sqlite"), "--json"], world)
    assert r.returncode in (1, 2, 3) and "Traceback" not in r.stdout + r.stderr
    assert json.loads(r.stdout)["exit_code"] == r.returncode


def test_keygen_refuses_a_missing_directory_before_making_a_registry(tmp_path: Path) -> None:
    r = run(["keygen", "--out", "keys/hub2.key", "--peer", "hub2", "--registry", "hub2.sqlite"], tmp_path)
    assert r.returncode == 2 and "keys does not exist" in r.stderr
    assert not (tmp_path / "hub2.sqlite").exists() and not (tmp_path / "keys").exists()
    shutil.rmtree(tmp_path / "cfg", ignore_errors=True)


def test_peer_listen_names_the_variable_it_reads_not_an_option_it_lacks(world: Path) -> None:
    r = run(["peer", "listen", "--registry", "reg.sqlite"], world)
    assert r.returncode == 2 and "MOTESEAL_PASSPHRASE" in r.stderr
    assert "--passphrase" not in r.stderr  # peer listen has no such option
    assert "--passphrase" not in run(["peer", "listen", "--help"], world).stdout.replace(
        "passphrase from $MOTESEAL_PASSPHRASE", "")
