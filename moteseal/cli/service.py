"""``moteseal service install``: systemd units for the broker, the gateway
and the hub (docs/raspberry-pi.md, "Services").

What every unit written here keeps:
- Rule 1: no secret in a unit. MQTT passwords, the dashboard token and the
  peer key's passphrase reach a service as systemd credentials
  (``LoadCredential=NAME:SOURCE``); its config names them
  ``$CREDENTIALS_DIRECTORY/NAME`` and the passphrase comes through
  ``MOTESEAL_PASSPHRASE_FILE=%d/passphrase`` (a path, not a secret). A
  config that names a secret file by its plain path is refused: that file
  would have to be readable by the service user, and ProtectHome= hides it.
- Rule 2: every unit restarts on failure (Restart=, RestartSec=,
  StartLimit*) and carries the same hardening (``HARDENING``); only the
  writable directories differ, named by ReadWritePaths=.
- Rule 3: the gateway and the hub start after the broker (and, system-wide,
  after network-online.target); the broker unit replaces Debian's
  mosquitto.service (Conflicts=), with the config `moteseal broker config`
  renders.
- Rule 4: a config a unit names must exist (else exit 2, naming it), so a
  unit never starts only to fail on a typo.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from device.errors import LocalError

SERVICES = ("broker", "gateway", "hub")
UNIT = {"broker": "moteseal-broker.service", "gateway": "moteseal-gateway.service",
        "hub": "moteseal-hub.service"}
SERVICE_USER = "moteseal"
MOSQUITTO = "/usr/sbin/mosquitto"

# The sandbox every unit gets. Python and Mosquitto need no capability, no
# W+X memory, no namespaces; they need only IP and Unix sockets (the journal,
# sd_notify). RestrictAddressFamilies drops AF_NETLINK too: nothing here
# enumerates interfaces.
HARDENING: list[tuple[str, str]] = [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("PrivateTmp", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallErrorNumber", "EPERM"),
    ("UMask", "0077"),
]
RESTART: list[tuple[str, str]] = [("Restart", "on-failure"), ("RestartSec", "5s"),
                                  ("TimeoutStopSec", "30s")]
START_LIMIT: list[tuple[str, str]] = [("StartLimitIntervalSec", "300"), ("StartLimitBurst", "5")]

SYSUSERS = f"""# The user moteseal's gateway and hub run as (moteseal service install).
# Applied by `systemd-sysusers`; or by hand:
#   useradd --system --home-dir /var/lib/moteseal --shell /usr/sbin/nologin {SERVICE_USER}
u {SERVICE_USER} - "moteseal gateway and hub" /var/lib/moteseal /usr/sbin/nologin
"""


class ServiceError(LocalError):
    """The units cannot be written as asked (a missing config or secret, a
    config that names a secret by its plain path): exit 2, nothing written."""

    exit_code = 2


@dataclass
class Layout:
    """Where things live: system-wide or for one user (--user)."""

    user_mode: bool
    unit_dir: Path
    config_dir: Path
    credentials_dir: Path
    data_dir: Path
    broker_config: Path
    sysusers: Path = Path("/etc/sysusers.d/moteseal.conf")

    @classmethod
    def default(cls, user_mode: bool) -> "Layout":
        if user_mode:
            home = Path.home()
            conf = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
            data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
            return cls(True, conf / "systemd" / "user", conf / "moteseal",
                       conf / "moteseal" / "credentials", data / "moteseal",
                       conf / "moteseal" / "mosquitto.conf")
        return cls(False, Path("/etc/systemd/system"), Path("/etc/moteseal"),
                   Path("/etc/moteseal/credentials"), Path("/var/lib/moteseal"),
                   Path("/etc/mosquitto/mosquitto.conf"))


@dataclass
class Unit:
    """One service: what it runs, the credentials it loads, where it writes."""

    name: str
    description: str
    exec_start: list[str]
    credentials: dict[str, Path] = field(default_factory=dict)
    writable: list[Path] = field(default_factory=list)
    runtime_dir: str = ""
    environment: list[str] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    user: str = SERVICE_USER


def _need(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise ServiceError(f"{path}: no such file ({what}); {hint}")
    return path


def _credential(value: str, where: str, suggested: str, source: "Callable[[str], Path]",
                creds: dict[str, Path]) -> None:
    """Record ``value`` (a config's secret path) as the credential it names,
    loaded from ``source(name)``; refuse a plain path (Rule 1)."""
    from gateway.config import CREDENTIALS_PREFIX

    if not value:
        return
    if not value.startswith(CREDENTIALS_PREFIX):
        raise ServiceError(f"{where} = {value!r}: a service reads its secrets as systemd "
                           f"credentials; write \"{CREDENTIALS_PREFIX}{suggested}\" there and "
                           f"move the file to {source(suggested)} (the unit loads it from there)")
    name = value[len(CREDENTIALS_PREFIX):]
    if not name or "/" in name:
        raise ServiceError(f"{where} = {value!r}: expected {CREDENTIALS_PREFIX}NAME")
    creds[name] = _need(source(name), f"the secret for {where}",
                        "write it there (0600, root), e.g. with `moteseal broker add-device "
                        "--password-file`")


def _source(layout: Layout, prefix: str, name: str, account: str) -> Path:
    """Where credential ``name`` of a service is loaded from: ``ACCOUNT.mqtt``
    for an MQTT password (what `broker add-device --password-file` writes),
    ``PREFIX.NAME`` for anything else."""
    if name == "mqtt-password" and account:
        return layout.credentials_dir / f"{account}.mqtt"
    return layout.credentials_dir / f"{prefix}.{name}"


def broker_unit(layout: Layout, config: Path) -> Unit:
    """Mosquitto with the config `moteseal broker config` renders; it writes
    its persistence directory and its pid file, nothing else."""
    render_cmd = ("moteseal broker config --local > " if layout.user_mode
                  else "moteseal broker config | sudo tee ")
    _need(config, "the broker's config", f"render it with `{render_cmd}{config}`")
    keys: dict[str, str] = {}
    for line in config.read_text().splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and not parts[0].startswith("#"):
            keys.setdefault(parts[0], parts[1].strip())
    base = config.parent
    writable = [base / keys.get("persistence_location", ".")] if keys.get("persistence") == "true" else []
    binary = MOSQUITTO if Path(MOSQUITTO).is_file() else shutil.which("mosquitto") or MOSQUITTO
    unit = Unit("broker", "moteseal's MQTT broker (Mosquitto)",
                [binary, "-c", str(config)], writable=writable, user="mosquitto")
    pid = Path(keys["pid_file"]) if "pid_file" in keys else None
    if pid is not None and pid.parent == Path("/run/mosquitto") and not layout.user_mode:
        unit.runtime_dir = "mosquitto"
    elif pid is not None:
        unit.writable.append((base / pid).parent)
    unit.extra = [("Type", "notify"), ("NotifyAccess", "main"), ("WorkingDirectory", str(base)),
                  ("ExecReload", "/bin/kill -HUP $MAINPID")]
    return unit


def gateway_unit(layout: Layout, moteseal: str, config: Path) -> Unit:
    """The blind relay: its status file, log file and serial queues are the
    only files it writes; a serial link adds the dialout group."""
    from gateway.config import ConfigError, parse_config

    _need(config, "the gateway's config", "see docs/gateway.md")
    data = tomllib.loads(config.read_text())
    mqtt = dict(data.get("mqtt", {}))
    secret = mqtt.pop("password_file", "")
    if mqtt.get("password"):
        raise ServiceError(f"{config}: [mqtt] password: a password in the config; use "
                           "password_file = \"$CREDENTIALS_DIRECTORY/mqtt-password\"")
    try:  # everything but the secret, which only the service can read
        cfg = parse_config(dict(data, mqtt=mqtt), str(config), config.resolve().parent)
    except (ConfigError, ValueError) as exc:
        raise ServiceError(str(exc)) from None
    unit = Unit("gateway", f"moteseal gateway {cfg.name} (blind relay)",
                [moteseal, "gateway", "run", "--config", str(config)])
    _credential(secret, f"{config}: [mqtt] password_file", "mqtt-password",
                lambda name: _source(layout, "gateway", name, cfg.mqtt.username), unit.credentials)
    for path in (cfg.status_file, cfg.log_file):
        if path:
            unit.writable.append(Path(path).parent)
    for spec in cfg.serial:
        queue = Path(str(spec.get("queue", f"{spec['name']}-queue.sqlite")))
        unit.writable.append((config.resolve().parent / queue).parent)
    if cfg.serial:
        unit.extra.append(("SupplementaryGroups", "dialout"))
    else:
        unit.extra.append(("PrivateDevices", "yes"))
    return unit


def hub_unit(layout: Layout, moteseal: str, config: Path, passphrase: Path | None) -> Unit:
    """The hub: it writes its registry (and the lock beside it), its store and
    a JSON-lines file; its MQTT passwords and dashboard token are credentials,
    and so is the peer key's passphrase when there is one."""
    from moteseal.hub.config import HubConfigError, load

    _need(config, "the hub's config", "write one with `moteseal hub init`")
    try:
        cfg = load(config)
    except HubConfigError as exc:
        raise ServiceError(str(exc)) from None
    unit = Unit("hub", "moteseal hub (peer, store, dashboard)",
                [moteseal, "hub", "run", "--config", str(config)])
    secrets = [("mqtt", "password_file", "mqtt-password", cfg.get("mqtt", "username")),
               ("dashboard", "token_file", "dashboard-token", ""),
               ("home_assistant", "password_file", "ha-password", "")]
    for section, key, suggested, account in secrets:
        if section != "mqtt" and not cfg.get(section, "enabled"):
            continue
        _credential(cfg.get(section, key), f"{config}: [{section}] {key}", suggested,
                    lambda name, a=account: _source(layout, "hub", name, a), unit.credentials)
    for section, key in (("hub", "registry"), ("hub", "store")):
        path = cfg.path_of(section, key)
        if path is not None:
            unit.writable.append(path.resolve().parent)
    if cfg.get("jsonl", "enabled") and cfg.get("jsonl", "path") != "-":
        unit.writable.append(Path(str(cfg.path_of("jsonl", "path"))).resolve().parent)
    if passphrase is not None:
        unit.credentials["passphrase"] = _need(passphrase, "the peer key's passphrase",
                                               "write it there (0600, root)")
        unit.environment.append("MOTESEAL_PASSPHRASE_FILE=%d/passphrase")
    unit.extra.append(("PrivateDevices", "yes"))
    return unit


def render(unit: Unit, layout: Layout, with_broker: bool) -> str:
    """The unit file's text. Raises ``ServiceError`` for a writable path that
    neither exists nor is the state directory systemd creates."""
    unit_keys = [("Description", unit.description)]
    if unit.name == "broker":
        unit_keys.append(("Documentation", "man:mosquitto.conf(5) man:mosquitto(8)"))
    after: list[str] = []
    if not layout.user_mode:
        after.append("network-online.target")
    if unit.name != "broker" and with_broker:
        after.append(UNIT["broker"])
    if after:
        unit_keys += [("After", " ".join(after)), ("Wants", " ".join(after))]
    if unit.name == "broker" and not layout.user_mode:  # Debian's unit, on the same ports
        unit_keys.append(("Conflicts", "mosquitto.service"))
    unit_keys += START_LIMIT

    svc: list[tuple[str, str]] = [("Type", "exec")] if unit.name != "broker" else []
    svc += unit.extra
    svc.append(("ExecStart", " ".join(_quote(a) for a in unit.exec_start)))
    if not layout.user_mode:
        svc += [("User", unit.user), ("Group", unit.user)]
    svc += [(key, value) for key, value in RESTART]
    for name, source in sorted(unit.credentials.items()):
        svc.append(("LoadCredential", f"{name}:{source}"))
    svc += [("Environment", e) for e in unit.environment]
    writable = sorted({p for p in unit.writable})
    if unit.name != "broker" and not layout.user_mode:
        svc += [("StateDirectory", "moteseal"), ("StateDirectoryMode", "0750"),
                ("WorkingDirectory", str(layout.data_dir))]
    if unit.runtime_dir:
        svc.append(("RuntimeDirectory", unit.runtime_dir))
    for path in writable:
        if not path.is_dir() and not (not layout.user_mode and _under(path, layout.data_dir)):
            raise ServiceError(f"{path}: no such directory (the {unit.name} writes there); "
                               "create it first")
    if writable:
        svc.append(("ReadWritePaths", " ".join(_quote(str(p)) for p in writable)))
    svc.append(("ProtectHome", "read-only" if layout.user_mode else "yes"))
    svc += HARDENING
    install = [("WantedBy", "default.target" if layout.user_mode else "multi-user.target")]
    out = [f"# {UNIT[unit.name]}: written by `moteseal service install`; "
           "edit with `systemctl edit`, not here."]
    for section, keys in (("Unit", unit_keys), ("Service", svc), ("Install", install)):
        out.append(f"\n[{section}]")
        out += [f"{k}={v}" for k, v in keys]
    return "\n".join(out) + "\n"


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _quote(arg: str) -> str:
    """An ExecStart= word: quoted if it has a space; % and $ doubled/escaped
    so systemd passes them as they are."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    return f'"{arg}"' if any(c in arg for c in " \t\"'\\") else arg


def find_moteseal() -> str:
    """The ``moteseal`` console script of this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "moteseal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("moteseal")
    if found is None:
        raise ServiceError("no `moteseal` executable beside this Python or on PATH; "
                           "install moteseal (pip install .) or give --moteseal PATH")
    return found


def plan(layout: Layout, services: list[str], moteseal: str, gateway_config: Path,
         hub_config: Path, passphrase: Path | None) -> list[tuple[Path, str]]:
    """Every file to write and its text, or ``ServiceError`` with nothing written."""
    units = []
    if "broker" in services:
        units.append(broker_unit(layout, layout.broker_config))
    if "gateway" in services:
        units.append(gateway_unit(layout, moteseal, gateway_config))
    if "hub" in services:
        units.append(hub_unit(layout, moteseal, hub_config, passphrase))
    files = [(layout.unit_dir / UNIT[u.name], render(u, layout, "broker" in services))
             for u in units]
    if not layout.user_mode and ("gateway" in services or "hub" in services):
        files.append((layout.sysusers, SYSUSERS))
    return files


def hidden_by_protect_home(layout: Layout, moteseal: str) -> list[str]:
    """Paths a system unit needs that ProtectHome=yes hides from it."""
    if layout.user_mode:
        return []
    homes = (Path("/home"), Path("/root"), Path("/run/user"))
    found = []
    script = Path(moteseal).resolve()
    paths = [Path(moteseal), script]
    try:
        first = script.read_bytes()[:256].split(b"\n", 1)[0]
        if first.startswith(b"#!"):
            interp = Path(first[2:].decode(errors="replace").split()[0])
            paths += [interp, interp.resolve()]
    except OSError:
        pass
    for p in paths:
        if any(_under(p, h) for h in homes) and str(p) not in found:
            found.append(str(p))
    return found


@click.group("service")
def service_group() -> None:
    """Run the broker, the gateway and the hub as systemd services.

    \b
    Examples:
      sudo moteseal service install
      sudo moteseal service install --dry-run
      moteseal service install --user --skip broker
    """


@service_group.command("install")
@click.option("--user", "user_mode", is_flag=True,
              help="User units (~/.config/systemd/user), paths under your home, no User=.")
@click.option("--dir", "unit_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the units here instead (packagers, tests); it must exist.")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
@click.option("--skip", type=click.Choice(SERVICES), multiple=True,
              help="Leave this service out (e.g. --skip broker for Debian's mosquitto.service).")
@click.option("--gateway-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="gateway.toml (default: /etc/moteseal/gateway.toml; --user: ~/.config/moteseal/).")
@click.option("--hub-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="hub.toml (default: /etc/moteseal/hub.toml; --user: ~/.config/moteseal/).")
@click.option("--broker-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Mosquitto's config (default: /etc/mosquitto/mosquitto.conf, from "
                   "`moteseal broker config`; --user: ~/.config/moteseal/mosquitto.conf).")
@click.option("--credentials-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where credentials are loaded from (default: /etc/moteseal/credentials; "
                   "--user: ~/.config/moteseal/credentials).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The peer key's passphrase, loaded as a credential (default: "
                   "CREDENTIALS_DIR/hub.passphrase if it exists).")
@click.option("--moteseal", "moteseal_path", default=None,
              help="The moteseal executable the units run (default: this installation's).")
def install_cmd(user_mode: bool, unit_dir: Path | None, dry_run: bool, skip: tuple[str, ...],
                gateway_config: Path | None, hub_config: Path | None, broker_config: Path | None,
                credentials_dir: Path | None, passphrase_file: Path | None,
                moteseal_path: str | None) -> None:
    """Write systemd units for the broker, the gateway and the hub.

    Secrets reach the services as systemd credentials: in the configs write
    password_file = "$CREDENTIALS_DIRECTORY/mqtt-password" (and token_file =
    "$CREDENTIALS_DIRECTORY/dashboard-token"); the units load them from
    CREDENTIALS_DIR/<account>.mqtt and CREDENTIALS_DIR/hub.<name>. Exits 2,
    writing nothing, if a config or secret file is missing.

    \b
    Examples:
      sudo moteseal service install
      sudo systemctl daemon-reload && sudo systemd-sysusers
      sudo systemctl enable --now moteseal-broker moteseal-gateway moteseal-hub
      moteseal service install --user --skip broker --dry-run
    """
    layout = Layout.default(user_mode)
    if unit_dir is not None:
        if not unit_dir.is_dir():
            raise ServiceError(f"--dir {unit_dir}: no such directory")
        layout.unit_dir = unit_dir
        layout.sysusers = unit_dir / "moteseal-sysusers.conf"
    if credentials_dir is not None:
        layout.credentials_dir = credentials_dir
    if broker_config is not None:
        layout.broker_config = broker_config
    gateway_config = (gateway_config or layout.config_dir / "gateway.toml").absolute()
    hub_config = (hub_config or layout.config_dir / "hub.toml").absolute()
    layout.broker_config = layout.broker_config.absolute()
    if passphrase_file is None and (layout.credentials_dir / "hub.passphrase").is_file():
        passphrase_file = layout.credentials_dir / "hub.passphrase"
    services = [s for s in SERVICES if s not in skip]
    if not services:
        raise click.UsageError("--skip leaves no service to install")
    moteseal = moteseal_path or find_moteseal()
    files = plan(layout, services, moteseal, gateway_config, hub_config, passphrase_file)
    for path in hidden_by_protect_home(layout, moteseal):
        click.echo(f"moteseal: warning: {path} is under a home directory, which ProtectHome=yes "
                   "hides from the services: install moteseal outside it (docs/raspberry-pi.md: "
                   "/opt/moteseal) or give --moteseal", err=True)
    for path, text in files:
        if dry_run:
            click.echo(f"# would write {path}\n{text}")
            continue
        if path == Path("/etc/sysusers.d/moteseal.conf"):
            path.parent.mkdir(mode=0o755, exist_ok=True)  # systemd's own directory
        if not path.parent.is_dir():
            raise ServiceError(f"{path.parent}: no such directory; create it first")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, path)
        click.echo(f"wrote {path}")
    if dry_run:
        return
    ctl = "systemctl --user" if user_mode else "sudo systemctl"
    names = " ".join(UNIT[s].removesuffix(".service") for s in services)
    if not user_mode and any(s != "broker" for s in services):
        click.echo("next: sudo systemd-sysusers   # creates the moteseal user")
    if "broker" in services and not user_mode:
        click.echo("next: sudo systemctl disable --now mosquitto   # Debian's unit; ours replaces it")
    click.echo(f"next: {ctl} daemon-reload && {ctl} enable --now {names}")
