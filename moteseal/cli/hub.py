"""``moteseal hub init|run``, ``moteseal readings`` and ``moteseal send``:
the hub's commands (docs/hub.md). Errors map to the README's exit codes
through ``moteseal.cli.errors``.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import re
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import click

from moteseal.cli.errors import require_parent, stop_event

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> float:
    """``30s``, ``15m``, ``1h``, ``2d``, ``1w`` -> seconds. Raises ``click.BadParameter``."""
    m = _SINCE.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: a number and s, m, h, d or w (e.g. 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _printer(as_json: bool, quiet: bool, plain: Callable[[dict], str]) -> Callable[[dict], None]:
    """A long-running command's ``on_report``: each report on stdout as one
    JSON object (``as_json``) or ``plain(report)``, nothing when ``quiet``.
    Safe to call from several threads: one report's line at a time."""
    lock = threading.Lock()

    def show(r: dict) -> None:
        if quiet:
            return
        with lock:
            click.echo(json.dumps(r, sort_keys=True) if as_json else plain(r))

    return show


def _serve(service: Any, stop: threading.Event) -> None:
    """``service.run(stop)`` (a ``Hub`` or ``ShardWorker``), then always
    ``service.close()``."""
    try:
        service.run(stop)
    finally:
        service.close()


@click.group("hub")
def hub_group() -> None:
    """The hub: the long-running peer that stores readings, feeds sinks
    (Home Assistant, JSON lines) and serves the dashboard.

    \b
    Examples:
      moteseal hub init --registry hub1.sqlite --out hub.toml
      moteseal hub run --config hub.toml
      moteseal hub worker --config hub.toml --name w1   (sharded, docs/scaling.md)
    """


@hub_group.command("init")
@click.option("--registry", required=True, type=click.Path(dir_okay=False),
              help="The peer's registry (from `moteseal keygen --registry`).")
@click.option("--out", default="hub.toml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the configuration.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init_cmd(registry: str, out: str, force: bool) -> None:
    """Write a hub.toml with sensible defaults: the embedded store and the
    dashboard on, bound to 127.0.0.1, and a random dashboard token (0600)
    for when you bind it elsewhere.

    \b
    Examples:
      moteseal hub init --registry hub1.sqlite
      moteseal hub init --registry /var/lib/moteseal/hub1.sqlite --out /etc/moteseal/hub.toml
    """
    from moteseal.hub.config import TEMPLATE
    from moteseal.keys.registry import Registry

    require_parent(out, "--out")
    path = Path(out)
    if path.exists() and not force:
        raise click.UsageError(f"{out} exists (--force overwrites it)")
    reg = Registry(registry)
    try:
        peer = reg.peer_id.decode()
    finally:
        reg.close()
    rel = os.path.relpath(Path(registry).resolve(), path.resolve().parent)
    path.write_text(TEMPLATE.format(registry=rel, peer=peer))
    token = path.parent / "dashboard.token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    click.echo(f"wrote {out} for peer {peer}; next: moteseal hub run --config {out}")


@hub_group.command("run")
@click.option("--config", "config_path", default="hub.toml", show_default=True,
              type=click.Path(dir_okay=False), help="The hub's configuration (moteseal hub init).")
@click.option("--seconds", type=click.FloatRange(0), default=None,
              help="Stop after this long (default: until Ctrl-C or SIGTERM).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event on stdout.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def run_cmd(config_path: str, seconds: float | None, as_json: bool, quiet: bool) -> None:
    """Run the hub: answer handshakes, store and acknowledge every reading,
    feed the sinks, send queued commands, serve the dashboard. A second hub
    for the same registry refuses to start. The passphrase of an encrypted
    peer key comes from $MOTESEAL_PASSPHRASE.

    \b
    Examples:
      moteseal hub run --config hub.toml
      moteseal hub run --config /etc/moteseal/hub.toml --json --seconds 60
    """
    from moteseal.hub.config import load
    from moteseal.hub.service import Hub
    from moteseal.keys.keyfile import passphrase_from_env
    from moteseal.peer.listen import format_report

    cfg = load(config_path)
    hub = Hub(cfg, passphrase=passphrase_from_env(),
              on_report=_printer(as_json, quiet, format_report)).start()
    stop = stop_event(seconds)
    if hub.dashboard is not None:
        click.echo(f"hub {hub.peer_id}: dashboard at {hub.dashboard.url}", err=True)
        if hub.dashboard.needs_token:
            click.echo("dashboard bound beyond loopback: every request needs the token "
                       f"from {cfg.path_of('dashboard', 'token_file')}", err=True)
    else:
        click.echo(f"hub {hub.peer_id} running (no dashboard)", err=True)
    _serve(hub, stop)


@hub_group.command("worker")
@click.option("--config", "config_path", default="hub.toml", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration, with [registry] url and [shards].")
@click.option("--name", required=True, help="This worker's name, unique in the deployment (e.g. the host name).")
@click.option("--seconds", type=click.FloatRange(0), default=None,
              help="Stop after this long (default: until Ctrl-C or SIGTERM).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event on stdout.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def worker_cmd(config_path: str, name: str, seconds: float | None, as_json: bool, quiet: bool) -> None:
    """Run one worker of a sharded hub: it leases shards of the device ids
    in PostgreSQL, reads those devices' up topics and answers them, storing
    readings exactly once in the shared database. Start as many as you like
    with different --name; a dead worker's shards move to the others within
    [shards] lease_seconds + renew_seconds (docs/scaling.md). The DSN comes
    from [registry] url or $MOTESEAL_REGISTRY_URL, its password from
    [registry] password_file or $PGPASSWORD, never from the command line.

    \b
    Examples:
      moteseal hub worker --config hub.toml --name w1
      MOTESEAL_REGISTRY_URL=postgresql://hub@db.lan/moteseal moteseal hub worker --name w2 --json
    """
    from moteseal.hub.config import load
    from moteseal.hub.worker import ShardWorker
    from moteseal.keys.keyfile import passphrase_from_env
    from moteseal.peer.listen import format_report

    cfg = load(config_path)

    def plain(r: dict) -> str:
        if r.get("event") in ("shards", "worker_started"):
            return " ".join(f"{k}={v}" for k, v in sorted(r.items()))
        return format_report(r)

    worker = ShardWorker(cfg, name, passphrase=passphrase_from_env(),
                         on_report=_printer(as_json, quiet, plain)).start()
    _serve(worker, stop_event(seconds))


@hub_group.command("registry-copy")
@click.option("--config", "config_path", default="hub.toml", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration naming [registry] url.")
@click.option("--from", "source", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The SQLite registry to copy (moteseal keygen --registry, moteseal provision).")
def registry_copy_cmd(config_path: str, source: str) -> None:
    """Copy an SQLite registry (peer keys, devices with their PSKs, counters
    and pins) into the PostgreSQL registry of a sharded hub, creating it.
    The target must be empty. Provision with the usual commands into the
    SQLite file, then copy; stop the SQLite peer first.

    \b
    Example:
      moteseal hub registry-copy --config hub.toml --from hub1.sqlite
    """
    from moteseal.hub.config import load
    from moteseal.hub.worker import registry_url
    from moteseal.keys.registry import Registry
    from moteseal.keys.registry_pg import PgRegistry

    cfg = load(config_path)
    url, pw = registry_url(cfg)
    src = Registry(source)
    try:
        dst = PgRegistry(url, create_for_peer=src.peer_id, password=pw)
        try:
            n = dst.copy_from(src)
        finally:
            dst.close()
    finally:
        src.close()
    click.echo(f"copied {n} device(s) of peer {src.peer_id.decode()} to {dst.path}")


def _store_path(config_path: str | None, store: str | None) -> str:
    if store:
        if not Path(store).exists():
            raise click.UsageError(f"--store {store}: no such file")
        return store
    from moteseal.hub.config import load
    cfg = load(config_path or "hub.toml")
    path = cfg.path_of("hub", "store")
    if path is None or not path.exists():
        raise click.UsageError(f"{cfg.path}: its store {path} does not exist yet (run the hub first)")
    return str(path)


@click.command("readings")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="hub.toml whose store to read (default: ./hub.toml).")
@click.option("--store", default=None, type=click.Path(dir_okay=False),
              help="A store file to read instead of the config's.")
@click.option("--device", default=None, help="Only this device.")
@click.option("--field", default=None, help="Only this field.")
@click.option("--since", default=None, help="Only this recent: 30s, 15m, 1h, 2d, 1w.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per field value.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option("--follow", is_flag=True, help="Keep printing new readings as the hub stores them.")
def readings_cmd(config_path: str | None, store: str | None, device: str | None, field: str | None,
                 since: str | None, as_json: bool, as_csv: bool, follow: bool) -> None:
    """Print stored readings, one line per field value, also while the hub
    runs (the store is read-only here). --follow watches live telemetry
    without disturbing the hub.

    \b
    Examples:
      moteseal readings --since 1h
      moteseal readings --device sensor-7 --field t --csv > t.csv
      moteseal readings --follow --json
    """
    from moteseal.hub.store import query

    if as_json and as_csv:
        raise click.UsageError("--json or --csv, not both")
    path = _store_path(config_path, store)
    cutoff = time.time() - parse_since(since) if since else None
    writer = csv.writer(sys.stdout) if as_csv else None
    if writer is not None:
        writer.writerow(["time", "device", "seq", "field", "value"])
    last = 0
    while True:
        for rid, dev, seq, ts, name, value in query(path, device, field, cutoff, last):
            last = max(last, rid)
            when = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
            if as_json:
                click.echo(json.dumps({"ts": round(ts, 3), "device": dev, "seq": seq,
                                       "field": name, "value": value}, sort_keys=True))
            elif writer is not None:
                writer.writerow([when.isoformat(timespec="seconds"), dev, seq, name, value])
            else:
                shown = f"{value:.2f}" if isinstance(value, float) else str(value)
                click.echo(f"{when:%Y-%m-%d %H:%M:%S}Z  {dev:<16} {seq:>6}  {name:<10} {shown}")
        sys.stdout.flush()
        if not follow:
            return
        time.sleep(0.5)


@click.command("send")
@click.argument("args", nargs=-1, required=True, metavar="[DEVICE] COMMAND")
@click.option("--group", "group", default=None,
              help="Send COMMAND to every member of this group: one message, one publish.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="hub.toml of the running hub (default: ./hub.toml).")
@click.option("--wait", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Seconds to wait until the device has acknowledged it (with --group: until "
                   "the hub has published it; default then 10).")
@click.option("--json", "as_json", is_flag=True, help="Print the command's state as JSON.")
def send_cmd(args: tuple[str, ...], group: str | None, config_path: str | None, wait: float,
             as_json: bool) -> None:
    """Queue a command for DEVICE through the running hub. It goes down end to
    end, encrypted, right after the device's next message (sleeping devices
    too), and the device acknowledges it by its id: the state goes queued ->
    sent -> acknowledged. Exit 0 once queued (with --wait: once acknowledged;
    1 if not in time). At most 200 bytes and 16 waiting per device.

    With --group G (no DEVICE): the hub seals COMMAND once for every member
    of G and publishes it once on the group's topic (at most 256 bytes;
    members awake read it, there is no per-device acknowledgement). Exit 0
    once published.

    \b
    Examples:
      moteseal send sensor-7 'interval=30'
      moteseal send sensor-7 'interval=300' --wait 60 --json
      moteseal send --group valves 'close'
    """
    from moteseal.hub.store import HubStore

    if group is not None:
        if len(args) != 1:
            raise click.UsageError("with --group: exactly one COMMAND, no DEVICE")
        from moteseal.cli.group import submit
        submit(config_path, "send", group, args[0].encode(), wait or 10.0, as_json)
        return
    if len(args) != 2:
        raise click.UsageError("expected DEVICE COMMAND (or --group G COMMAND)")
    device, command = args
    path = _store_path(config_path, None)
    store = HubStore(path)
    try:
        cid = store.queue_command(device, command.encode())
        deadline = time.monotonic() + wait
        state = store.command(cid)
        while wait and state and state["state"] != "acknowledged" and time.monotonic() < deadline:
            time.sleep(0.2)
            state = store.command(cid)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(state, sort_keys=True))
    else:
        click.echo(f"command {cid} for {device}: {state['state'] if state else '?'}")
    if wait and (state is None or state["state"] != "acknowledged"):
        sys.exit(1)
