"""``moteseal broker``: manage Mosquitto accounts and ACLs for moteseal.

Each account is a password (set with ``mosquitto_passwd``, fed on stdin so that
no password is in any argv) plus an ACL block; after
a change a running Mosquitto is reloaded with SIGHUP through its pid file.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
from pathlib import Path

import click

from gateway import broker

_DEFAULT_DIR = Path("/etc/mosquitto/moteseal")
_DEFAULT_PID = Path("/run/mosquitto/mosquitto.pid")


class MissingDirectory(click.ClickException):
    """A directory to write into does not exist (exit 2, a usage error): we
    never create it, so a typo cannot leave a password file somewhere new."""

    exit_code = 2


def _files(dir_: Path, passwd_file: Path | None, acl_file: Path | None) -> tuple[Path, Path]:
    pw_path, acl_path = passwd_file or dir_ / "passwd", acl_file or dir_ / "acl"
    for path in (pw_path, acl_path):
        if not path.parent.is_dir():
            raise MissingDirectory(f"{path}: directory {path.parent} does not exist; create it "
                                   "first (Mosquitto's package makes /etc/mosquitto; then "
                                   f"`sudo install -d -o mosquitto -m 0750 {path.parent}`)")
    return pw_path, acl_path


def _write_secret(path: Path, text: str) -> None:
    """Write a password for its consumer: 0600 from the start, replaced
    atomically, owned by whoever runs this (the peer's or gateway's user)."""
    if not path.parent.is_dir():
        raise MissingDirectory(f"--password-file {path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _valid_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return broker.check_id(value)
    except broker.BrokerError as exc:
        raise click.BadParameter(str(exc)) from exc


def _give_to(owner: str, *paths: Path) -> None:
    """Hand the files to the broker's user: Mosquitto re-reads them on SIGHUP
    after it has dropped root, so a root-owned 0600 file would lock it out."""
    if os.geteuid() != 0 or not owner:
        return
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        return  # no such user here (e.g. a development machine)
    for path in paths:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _reload(pid_file: Path, no_reload: bool) -> str:
    if no_reload:
        return "not reloaded (--no-reload)"
    try:
        if broker.reload_broker(pid_file):
            return f"reloaded Mosquitto (pid file {pid_file})"
    except broker.BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    return (f"no running Mosquitto found through {pid_file}; reload it yourself "
            "(e.g. systemctl reload mosquitto)")


_common = [
    click.option("--dir", "dir_", type=click.Path(path_type=Path), default=_DEFAULT_DIR,
                 show_default=True, help="Directory holding passwd and acl."),
    click.option("--passwd-file", type=click.Path(path_type=Path), default=None,
                 help="Password file (default: DIR/passwd)."),
    click.option("--acl-file", type=click.Path(path_type=Path), default=None,
                 help="ACL file (default: DIR/acl)."),
    click.option("--pid-file", type=click.Path(path_type=Path), default=_DEFAULT_PID,
                 show_default=True, help="Mosquitto pid file, for the reload (SIGHUP)."),
    click.option("--no-reload", is_flag=True, help="Do not signal Mosquitto."),
    click.option("--owner", default="mosquitto", show_default=True,
                 help="When run as root, give the files to this user (the broker's)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
]


def _with_common(f):  # type: ignore[no-untyped-def]
    for option in reversed(_common):
        f = option(f)
    return f


@click.group("broker")
def broker_group() -> None:
    """Manage Mosquitto accounts, ACLs and TLS certificates (broker_config/mosquitto.conf).

    \b
    Examples:
      sudo moteseal broker certs --dns pi.local --ip 192.168.1.20
      sudo moteseal broker add-device hub1 --role hub --password-file ~/hub1.mqtt
      sudo moteseal broker add-device gw1 --role gateway --password-file ~/gw1.mqtt
      sudo moteseal broker add-device sensor-01 --password-file sensor-01.mqtt
      sudo moteseal broker remove-device sensor-01
      moteseal broker list --dir ./broker
      moteseal broker config > /etc/mosquitto/mosquitto.conf
    """


@broker_group.command("add-device")
@click.argument("device_id", callback=_valid_id)
@click.option("--role", type=click.Choice(broker.ROLES), default="device", show_default=True,
              help="device: own up/down topics; gateway: all up (read) and down "
                   "(write); monitor: read everything; hub: a device that also writes the "
                   "group topics.")
@click.option("--password", default=None,
              help="MQTT password (default: a new random one). Prefer the default: argv is visible to ps.")
@click.option("--password-file", "secret_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="Also write the password here (0600) for its consumer: `peer listen "
                   "--password-file`, `[mqtt] password_file` of gateway.toml, or "
                   "$MOTESEAL_LINK_PASSWORD for `moteseal provision`. Without it a generated "
                   "password is printed once.")
@_with_common
def add_device(device_id: str, role: str, password: str | None, secret_file: Path | None,
               dir_: Path, passwd_file: Path | None, acl_file: Path | None, pid_file: Path,
               no_reload: bool, owner: str, as_json: bool) -> None:
    """Create or update the MQTT account DEVICE_ID and its ACL block.

    The password is a broker credential, not a moteseal key: it only lets the
    account reach its own topics. With --password-file it goes straight to
    where its consumer reads it and is never printed; the file is replaced
    if it exists (the old password stops working at once).

    \b
    Examples:
      sudo moteseal broker add-device hub1 --role hub --password-file /home/pi/hub1.mqtt
      sudo moteseal broker add-device gw1 --role gateway --password-file /etc/moteseal/gw1.mqtt
      sudo moteseal broker add-device sensor-01 --password-file sensor-01.mqtt
      moteseal broker add-device sensor-02 --dir ./broker --no-reload --json
    """
    pw_path, acl_path = _files(dir_, passwd_file, acl_file)
    if secret_file is not None and not secret_file.parent.is_dir():
        raise MissingDirectory(f"--password-file {secret_file}: directory "
                               f"{secret_file.parent} does not exist")
    generated = password is None
    password = password or secrets.token_urlsafe(18)
    try:
        if secret_file is not None:  # first: a password nobody holds is no use
            _write_secret(secret_file, password)
        broker.set_password(pw_path, device_id, password)
        broker.set_acl_account(acl_path, device_id, role)
        _give_to(owner, pw_path, acl_path)
    except (broker.BrokerError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    reload_note = _reload(pid_file, no_reload)
    if as_json:
        out = {"id": device_id, "role": role, "passwd_file": str(pw_path),
               "acl_file": str(acl_path), "reload": reload_note,
               "password_file": None if secret_file is None else str(secret_file)}
        if generated and secret_file is None:
            out["password"] = password
        click.echo(json.dumps(out))
        return
    click.echo(f"added {role} {device_id} to {pw_path} and {acl_path}")
    if secret_file is not None:
        click.echo(f"password written to {secret_file} (0600)")
    elif generated:
        click.echo(f"password: {password}")
    click.echo(reload_note)


@broker_group.command("set-groups")
@click.argument("device_id", callback=_valid_id)
@click.argument("groups", nargs=-1)
@_with_common
def set_groups(device_id: str, groups: tuple[str, ...], dir_: Path, passwd_file: Path | None,
               acl_file: Path | None, pid_file: Path, no_reload: bool, owner: str,
               as_json: bool) -> None:
    """Let device DEVICE_ID read the topics of GROUPS (moteseal/v1/group/<G>)
    and no other group topic; no GROUPS: none. Only a hub account may write
    group topics.

    \b
    Examples:
      sudo moteseal broker set-groups valve-1 valves pumps
      moteseal broker set-groups valve-2 --dir ./broker --no-reload
    """
    _pw_path, acl_path = _files(dir_, passwd_file, acl_file)
    try:
        for g in groups:
            broker.check_id(g)
        broker.set_acl_groups(acl_path, device_id, list(groups))
        _give_to(owner, acl_path)
    except (broker.BrokerError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    reload_note = _reload(pid_file, no_reload)
    if as_json:
        click.echo(json.dumps({"id": device_id, "groups": sorted(set(groups)),
                               "reload": reload_note}))
        return
    click.echo(f"{device_id} reads groups: {' '.join(sorted(set(groups))) or '(none)'}")
    click.echo(reload_note)


@broker_group.command("remove-device")
@click.argument("device_id", callback=_valid_id)
@_with_common
def remove_device(device_id: str, dir_: Path, passwd_file: Path | None,
                  acl_file: Path | None, pid_file: Path, no_reload: bool, owner: str,
                  as_json: bool) -> None:
    """Delete the MQTT account DEVICE_ID and its ACL block.

    Exits 1 if the account was in neither file. A connected client keeps
    its connection until Mosquitto drops it; its next connect is refused.

    \b
    Examples:
      sudo moteseal broker remove-device sensor-01
      moteseal broker remove-device sensor-02 --dir ./broker --no-reload --json
    """
    pw_path, acl_path = _files(dir_, passwd_file, acl_file)
    try:
        had_pw = broker.remove_password(pw_path, device_id)
        had_acl = broker.remove_acl_account(acl_path, device_id)
        _give_to(owner, pw_path, acl_path)
    except (broker.BrokerError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not (had_pw or had_acl):
        raise click.ClickException(f"{device_id} is not in {pw_path} or {acl_path}")
    reload_note = _reload(pid_file, no_reload)
    if as_json:
        click.echo(json.dumps({"id": device_id, "removed": True, "reload": reload_note}))
        return
    click.echo(f"removed {device_id} from {pw_path} and {acl_path}")
    click.echo(reload_note)


@broker_group.command("config")
@click.option("--local", is_flag=True, help="The loopback-only config (no TLS) instead.")
def show_config(local: bool) -> None:
    """Print the Mosquitto config moteseal ships (broker_config/).

    \b
    Examples:
      moteseal broker config | sudo tee /etc/mosquitto/mosquitto.conf
      moteseal broker config --local > local.conf
    """
    click.echo(broker.config_template("local.conf" if local else "mosquitto.conf"), nl=False)


@broker_group.command("list")
@click.option("--dir", "dir_", type=click.Path(path_type=Path), default=_DEFAULT_DIR,
              show_default=True, help="Directory holding acl.")
@click.option("--acl-file", type=click.Path(path_type=Path), default=None,
              help="ACL file (default: DIR/acl).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
def list_accounts(dir_: Path, acl_file: Path | None, as_json: bool) -> None:
    """List the accounts in the ACL file with their role.

    \b
    Examples:
      sudo moteseal broker list
      moteseal broker list --dir ./broker --json
    """
    acl_path = acl_file or dir_ / "acl"
    _header, blocks = broker.read_acl(acl_path)
    rows = []
    for user, lines in blocks.items():
        role = next((ln.strip()[2:] for ln in lines
                     if ln.strip()[2:] in broker.ROLES and ln.strip().startswith("# ")), "custom")
        rows.append({"id": user, "role": role})
    if as_json:
        click.echo(json.dumps(rows))
    else:
        for row in rows:
            click.echo(f"{row['id']}\t{row['role']}")


@broker_group.command("cluster-config")
@click.option("--acl-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=_DEFAULT_DIR / "acl", show_default=True,
              help="The accounts and roles (`moteseal broker add-device` writes it).")
@click.option("--password-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Holds <id>.password for every account (the files "
                                  "add-device --password-file writes).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Directory for accounts.conf and node<i>.conf.")
@click.option("--node", "nodes", multiple=True, required=True,
              help="host:client_port:cluster_port:mqtt_port:http_port of one node (repeat; "
                   "3 for a cluster that survives one node).")
@click.option("--replicas", type=click.IntRange(1, 5), default=3, show_default=True,
              help="Copies of MQTT sessions and messages (docs/scaling.md).")
def cluster_config(acl_file: Path, password_dir: Path, out_dir: Path, nodes: tuple[str, ...],
                   replicas: int) -> None:
    """Write a NATS cluster's configuration (JetStream + MQTT 3.1.1) with the
    same accounts and rights as Mosquitto's ACL (gateway/cluster.py).

    accounts.conf holds the passwords (0600): install it readable only by the
    nats user. Each node's store directory is ``node<i>/`` beside its config;
    edit ``store_dir`` for another place.

    \b
    Example:
      moteseal broker cluster-config --password-dir /etc/moteseal/mqtt --out ./nats \\
        --node 10.0.0.1:4222:6222:1883:8222 --node 10.0.0.2:4222:6222:1883:8222 \\
        --node 10.0.0.3:4222:6222:1883:8222
    """
    from gateway import cluster

    _header, blocks = broker.read_acl(acl_file)
    accounts = []
    for user, lines in blocks.items():
        role = next((ln.strip()[2:] for ln in lines if ln.strip()[2:] in broker.ROLES
                     and ln.strip().startswith("# ")), None)
        if role is None:
            raise click.ClickException(f"{acl_file}: account {user} has no role comment")
        pw_file = password_dir / f"{user}.password"
        try:
            password = pw_file.read_text().strip()
        except OSError as exc:
            raise click.ClickException(f"{pw_file}: {exc.strerror}") from None
        accounts.append(cluster.ClusterAccount(user, role, password))
    hosts, ports = [], []
    for spec in nodes:
        parts = spec.rsplit(":", 4)
        if len(parts) != 5 or not parts[0] or not all(p.isdigit() for p in parts[1:]):
            raise click.BadParameter(f"{spec!r}: expected host:client:cluster:mqtt:http")
        hosts.append(parts[0])
        ports.append(cluster.NodePorts(*(int(p) for p in parts[1:])))
    try:
        paths = cluster.write_cluster(out_dir, accounts, ports, hosts=hosts, replicas=replicas)
    except (broker.BrokerError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out_dir / 'accounts.conf'} (0600) and "
               + ", ".join(str(p) for p in paths))
