"""`moteseal service install`: the units it writes pass the real
`systemd-analyze verify` without a warning, every unit carries the restart
policy and the hardening, no secret is in any unit, and the secrets reach
the services as systemd credentials, end to end (a hub started with
$CREDENTIALS_DIRECTORY and $MOTESEAL_PASSPHRASE_FILE logs in to a real
Mosquitto and opens its encrypted key).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from moteseal.cli.service import HARDENING
from moteseal.keys.keyfile import PassphraseRequired, passphrase_from_env

CLI = [sys.executable, "-m", "moteseal.cli.main"]
REPO = Path(__file__).resolve().parents[2]
SECRETS = {"gw1.mqtt": "gw-secret-Zq81", "hub1.mqtt": "hub-secret-Kx42",
           "hub.dashboard-token": "token-secret-Pm77", "hub.passphrase": "passphrase-secret-Wv63"}
UNITS = ("moteseal-broker.service", "moteseal-gateway.service", "moteseal-hub.service")
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def moteseal_script() -> str:
    """The real console script: systemd-analyze checks ExecStart is executable."""
    beside = Path(sys.executable).parent / "moteseal"
    found = str(beside) if beside.is_file() else shutil.which("moteseal")
    if found is None:
        pytest.skip("the moteseal console script is not installed (pip install -e .)")
    return found


def write_configs(root: Path, data: Path, creds: Path) -> None:
    """gateway.toml and hub.toml as docs/raspberry-pi.md writes them, the
    secrets in the credentials directory, and the broker's shipped config."""
    (root / "gateway.toml").write_text(f"""[gateway]
name = "gw1"
status_file = "{data}/gw1.status.json"
[mqtt]
username = "gw1"
password_file = "$CREDENTIALS_DIRECTORY/mqtt-password"
[routes]
mqtt = ["hub1", "pico-*"]
""")
    (root / "hub.toml").write_text(f"""[hub]
registry = "{data}/hub1.sqlite"
store = "{data}/readings.sqlite"
[mqtt]
username = "hub1"
password_file = "$CREDENTIALS_DIRECTORY/mqtt-password"
[dashboard]
token_file = "$CREDENTIALS_DIRECTORY/dashboard-token"
""")
    for name, secret in SECRETS.items():
        (creds / name).write_text(secret + "\n")
        (creds / name).chmod(0o600)
    r = run("broker", "config")
    assert r.returncode == 0, r.stderr
    (root / "mosquitto.conf").write_text(r.stdout)


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    paths = {k: tmp_path / k for k in ("etc", "creds", "data", "units")}
    for p in paths.values():
        p.mkdir()
    write_configs(paths["etc"], paths["data"], paths["creds"])
    return paths


def install_args(site: dict[str, Path], *extra: str) -> list[str]:
    etc = site["etc"]
    return ["service", "install", "--dir", str(site["units"]), "--moteseal", moteseal_script(),
            "--gateway-config", str(etc / "gateway.toml"), "--hub-config", str(etc / "hub.toml"),
            "--broker-config", str(etc / "mosquitto.conf"),
            "--credentials-dir", str(site["creds"]), *extra]


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (LoadCredential= repeats)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def verify(paths: list[Path], user: bool = False, runtime: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    args = ["systemd-analyze", "verify", "--man=no"]
    if user:  # the user manager wants a runtime directory even for verify
        args.insert(2, "--user")
        env["XDG_RUNTIME_DIR"] = str(runtime)
    return subprocess.run(args + [str(p) for p in paths], capture_output=True, text=True,
                          timeout=120, env=env)


@needs_systemd
def test_system_units_pass_systemd_analyze_verify(site: dict[str, Path]) -> None:
    r = run(*install_args(site))
    assert r.returncode == 0, r.stderr
    units = [site["units"] / u for u in UNITS]
    assert all(u.is_file() for u in units)
    v = verify(units)
    assert v.returncode == 0, v.stderr
    assert v.stderr == "" and v.stdout == "", v.stderr  # no unknown key, no warning at all


@needs_systemd
def test_verify_catches_an_unknown_key(site: dict[str, Path]) -> None:
    """The check above can fail: systemd-analyze exits 0 on an unknown key
    but says so on stderr, which is what the tests assert empty."""
    assert run(*install_args(site)).returncode == 0
    hub = site["units"] / "moteseal-hub.service"
    hub.write_text(hub.read_text().replace("[Service]\n", "[Service]\nProtectSystm=strict\n"))
    v = verify([hub])
    assert "Unknown key" in v.stderr and "ProtectSystm" in v.stderr


@needs_systemd
def test_user_units_pass_verify_and_have_no_user(tmp_path: Path) -> None:
    home = tmp_path / "home"
    conf, data = home / ".config" / "moteseal", home / ".local" / "share" / "moteseal"
    creds, units = conf / "credentials", home / ".config" / "systemd" / "user"
    for p in (creds, data, units):
        p.mkdir(parents=True)
    write_configs(conf, data, creds)
    r = run("broker", "config", "--local")
    (conf / "mosquitto.conf").write_text(r.stdout)
    r = run("service", "install", "--user", "--moteseal", moteseal_script(),
            env={"HOME": str(home), "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": ""})
    assert r.returncode == 0, r.stderr
    paths = [units / u for u in UNITS]
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    v = verify(paths, user=True, runtime=runtime)
    assert v.returncode == 0 and v.stderr == "", v.stderr
    for p in paths:
        unit = parse_unit(p.read_text())
        assert "User" not in unit["Service"]
        assert unit["Service"]["ProtectHome"] == ["read-only"]
        assert unit["Install"]["WantedBy"] == ["default.target"]
    hub = parse_unit((units / "moteseal-hub.service").read_text())
    assert hub["Service"]["ReadWritePaths"] == [str(data)]
    assert f"mqtt-password:{creds}/hub1.mqtt" in hub["Service"]["LoadCredential"]


def test_every_unit_restarts_and_is_hardened(site: dict[str, Path]) -> None:
    assert run(*install_args(site)).returncode == 0
    for name in UNITS:
        unit = parse_unit((site["units"] / name).read_text())
        svc = unit["Service"]
        assert svc["Restart"] == ["on-failure"] and svc["RestartSec"] == ["5s"], name
        assert unit["Unit"]["StartLimitIntervalSec"] and unit["Unit"]["StartLimitBurst"], name
        for key, value in HARDENING:
            assert svc.get(key) == [value], f"{name}: {key}"
        assert svc["CapabilityBoundingSet"] == [""]
        assert svc["ProtectSystem"] == ["strict"] and svc["ProtectHome"] == ["yes"]
        assert svc["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    hub = parse_unit((site["units"] / "moteseal-hub.service").read_text())["Service"]
    assert hub["User"] == ["moteseal"] and hub["StateDirectory"] == ["moteseal"]
    assert hub["ReadWritePaths"] == [str(site["data"])]
    broker = parse_unit((site["units"] / "moteseal-broker.service").read_text())
    assert broker["Service"]["User"] == ["mosquitto"]
    assert broker["Unit"]["Conflicts"] == ["mosquitto.service"]
    sysusers = (site["units"] / "moteseal-sysusers.conf").read_text().splitlines()
    assert 'u moteseal - "moteseal gateway and hub" /var/lib/moteseal /usr/sbin/nologin' in sysusers


def test_gateway_and_hub_start_after_the_broker(site: dict[str, Path]) -> None:
    assert run(*install_args(site)).returncode == 0
    for name in ("moteseal-gateway.service", "moteseal-hub.service"):
        unit = parse_unit((site["units"] / name).read_text())["Unit"]
        for key in ("After", "Wants"):
            assert unit[key] == ["network-online.target moteseal-broker.service"], name
    r = run(*install_args(site, "--skip", "broker"))
    assert r.returncode == 0, r.stderr
    hub = parse_unit((site["units"] / "moteseal-hub.service").read_text())["Unit"]
    assert hub["After"] == ["network-online.target"]


def test_no_secret_in_any_unit_only_credentials(site: dict[str, Path]) -> None:
    r = run(*install_args(site))
    assert r.returncode == 0, r.stderr
    texts = {p.name: p.read_text() for p in site["units"].iterdir()}
    for name, text in texts.items():
        for secret in SECRETS.values():
            assert secret not in text, name
        if not name.endswith(".service"):
            continue
        for env in parse_unit(text)["Service"].get("Environment", []):
            assert env == "MOTESEAL_PASSPHRASE_FILE=%d/passphrase", name
    for secret in SECRETS.values():
        assert secret not in r.stdout + r.stderr
    hub = parse_unit(texts["moteseal-hub.service"])["Service"]
    creds = site["creds"]
    assert sorted(hub["LoadCredential"]) == [f"dashboard-token:{creds}/hub.dashboard-token",
                                            f"mqtt-password:{creds}/hub1.mqtt",
                                            f"passphrase:{creds}/hub.passphrase"]
    gw = parse_unit(texts["moteseal-gateway.service"])["Service"]
    assert gw["LoadCredential"] == [f"mqtt-password:{creds}/gw1.mqtt"]
    assert "Environment" not in gw


def test_a_missing_config_is_refused_naming_it(site: dict[str, Path]) -> None:
    (site["etc"] / "hub.toml").unlink()
    r = run(*install_args(site))
    assert r.returncode == 2
    assert str(site["etc"] / "hub.toml") in r.stderr
    assert list(site["units"].iterdir()) == []  # nothing half-written


def test_a_missing_broker_config_is_refused_naming_it(site: dict[str, Path]) -> None:
    (site["etc"] / "mosquitto.conf").unlink()
    r = run(*install_args(site))
    assert r.returncode == 2 and "mosquitto.conf" in r.stderr and "broker config" in r.stderr


def test_a_secret_named_by_plain_path_is_refused(site: dict[str, Path]) -> None:
    hub = site["etc"] / "hub.toml"
    hub.write_text(hub.read_text().replace('"$CREDENTIALS_DIRECTORY/mqtt-password"', '"hub1.mqtt"'))
    r = run(*install_args(site))
    assert r.returncode == 2
    assert '"$CREDENTIALS_DIRECTORY/mqtt-password"' in r.stderr and "[mqtt] password_file" in r.stderr


def test_a_missing_credential_source_is_refused(site: dict[str, Path]) -> None:
    (site["creds"] / "gw1.mqtt").unlink()
    r = run(*install_args(site))
    assert r.returncode == 2 and str(site["creds"] / "gw1.mqtt") in r.stderr


def test_dry_run_prints_and_writes_nothing(site: dict[str, Path]) -> None:
    r = run(*install_args(site, "--dry-run", "--moteseal", "/home/pi/.venv/bin/moteseal"))
    assert r.returncode == 0, r.stderr
    assert list(site["units"].iterdir()) == []
    assert f"# would write {site['units']}/moteseal-hub.service" in r.stdout
    assert "ExecStart=/home/pi/.venv/bin/moteseal hub run --config" in r.stdout
    # ProtectHome=yes would hide that script from the service: said, not hidden.
    assert "/home/pi/.venv/bin/moteseal is under a home directory" in r.stderr


# ------------------------------------------------- credentials, end to end

def test_gateway_password_file_from_the_credentials_directory(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("gw-secret\n")
    data = {"mqtt": {"username": "gw1", "password_file": "$CREDENTIALS_DIRECTORY/mqtt-password"}}
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        parse_config(data, "gateway.toml", tmp_path / "elsewhere")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert parse_config(data, "gateway.toml", tmp_path / "elsewhere").mqtt.password == "gw-secret"


def test_passphrase_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTESEAL_PASSPHRASE", raising=False)
    f = tmp_path / "passphrase"
    monkeypatch.setenv("MOTESEAL_PASSPHRASE_FILE", str(f))
    with pytest.raises(PassphraseRequired, match="no such file"):
        passphrase_from_env()
    f.write_text("")
    with pytest.raises(PassphraseRequired, match="empty"):
        passphrase_from_env()
    f.write_text("caf\u0065\u0301 au lait\n")  # decomposed: normalised to NFC like a typed one
    f.chmod(0o640)  # a credential shared through an ACL shows group read: accepted
    assert passphrase_from_env() == "café au lait".encode()
    monkeypatch.setenv("MOTESEAL_PASSPHRASE", "from-env")  # the variable wins
    assert passphrase_from_env() == b"from-env"


@pytest.mark.mosquitto
def test_hub_logs_in_and_opens_its_key_through_credentials(tmp_path: Path, mosquitto) -> None:
    """The hub as its unit runs it: password and passphrase only as files in
    $CREDENTIALS_DIRECTORY; a wrong password there keeps it out."""
    broker = mosquitto(accounts={"hub1": "device"})
    env = {"MOTESEAL_CONFIG": str(tmp_path / "none.toml"), "MOTESEAL_PASSPHRASE": ""}
    (tmp_path / "none.toml").write_text("")
    reg = tmp_path / "hub1.sqlite"
    r = run("keygen", "--out", str(tmp_path / "hub1.key"), "--peer", "hub1", "--registry", str(reg),
            "--kdf", "interactive", env=dict(env, MOTESEAL_PASSPHRASE="correct horse"))
    assert r.returncode == 0, r.stderr
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text(broker.passwords["hub1"] + "\n")
    (creds / "passphrase").write_text("correct horse\n")
    hub = tmp_path / "hub.toml"
    hub.write_text(f"""[hub]
registry = "hub1.sqlite"
[mqtt]
port = {broker.port}
username = "hub1"
password_file = "$CREDENTIALS_DIRECTORY/mqtt-password"
[dashboard]
enabled = false
""")
    service_env = dict(env, CREDENTIALS_DIRECTORY=str(creds),
                       MOTESEAL_PASSPHRASE_FILE=str(creds / "passphrase"))
    r = run("hub", "run", "--config", str(hub), "--seconds", "2", env=service_env)
    assert r.returncode == 0, r.stderr
    assert "hub hub1 running" in r.stderr

    r = run("hub", "run", "--config", str(hub), "--seconds", "2",  # not under systemd
            env=dict(env, MOTESEAL_PASSPHRASE_FILE=str(creds / "passphrase")))
    assert r.returncode == 2 and "$CREDENTIALS_DIRECTORY is not set" in r.stderr

    (creds / "passphrase").write_text("wrong horse\n")
    r = run("hub", "run", "--config", str(hub), "--seconds", "2", env=service_env)
    assert r.returncode == 3 and "passphrase" in r.stderr

    (creds / "passphrase").write_text("correct horse\n")
    (creds / "mqtt-password").write_text("not-the-password\n")
    r = run("hub", "run", "--config", str(hub), "--seconds", "2", env=service_env)
    assert r.returncode == 1 and "as hub1" in r.stderr and "Not authorized" in r.stderr
