"""``moteseal group create|add|remove|rotate|list`` and the group side of
``moteseal send --group``: requests to the running hub through its group
file (``moteseal/hub/groups.py``; docs/hub.md, "Groups"). The hub holds
the group keys, so every change goes through it; ``list`` reads the
stored state.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def open_group_file(config_path: str | None) -> Any:
    """The hub's group file (beside its store, made by the first request or
    the hub). Raises ``ConfigError``; ``click.UsageError`` if the store's
    directory does not exist; ``GroupFileError``."""
    from moteseal.hub.config import load
    from moteseal.hub.groups import GroupFile, group_file_for

    cfg = load(config_path or "hub.toml")
    store = cfg.path_of("hub", "store")
    if store is None or not store.parent.is_dir():
        raise click.UsageError(f"{cfg.path}: the store's directory does not exist")
    return GroupFile(group_file_for(store))


def submit(config_path: str | None, op: str, gid: str, arg: bytes, wait: float,
           as_json: bool) -> None:
    """Queues one request, waits up to ``wait`` seconds for the hub to run
    it and prints the outcome. Exit 1 if it failed or is still queued."""
    gf = open_group_file(config_path)
    try:
        rid = gf.request(op, gid, arg)
        row = gf.wait(rid, wait)
    finally:
        gf.close()
    assert row is not None
    if as_json:
        click.echo(json.dumps(row, sort_keys=True))
    elif row["state"] == "queued":
        click.echo(f"group {op} {gid}: queued (request {rid}); is the hub running?")
    elif row["state"] == "failed":
        click.echo(f"group {op} {gid}: failed: {row['result']}")
    else:
        detail = json.loads(row["result"])
        click.echo(f"group {op} {gid}: " + "  ".join(f"{k}={v}" for k, v in sorted(detail.items())))
    if row["state"] != "done":
        sys.exit(1)


_config = click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                       help="hub.toml of the running hub (default: ./hub.toml).")
_wait = click.option("--wait", type=click.FloatRange(0), default=10.0, show_default=True,
                     help="Seconds to wait for the hub to carry it out.")
_json = click.option("--json", "as_json", is_flag=True, help="Print the request's outcome as JSON.")


@click.group("group")
def group_group() -> None:
    """Groups of devices for fleet broadcast: one encrypted message for the
    whole group (`moteseal send --group`), under a group key the hub hands
    each member over its own session, renewed (a new epoch) whenever the
    membership changes. Needs the running hub.

    \b
    Examples:
      moteseal group create valves valve-1 valve-2 valve-3
      moteseal group remove valves valve-2
      moteseal send --group valves 'close'
    """


@group_group.command("create")
@click.argument("group")
@click.argument("devices", nargs=-1, required=True)
@_config
@_wait
@_json
def create_cmd(group: str, devices: tuple[str, ...], config_path: str | None, wait: float,
               as_json: bool) -> None:
    """Create GROUP with DEVICES (1..512). Members awake get their keys at
    once, the others when they next handshake.

    \b
    Examples:
      moteseal group create valves valve-1 valve-2
    """
    submit(config_path, "create", group, json.dumps(list(devices)).encode(), wait, as_json)


@group_group.command("add")
@click.argument("group")
@click.argument("device")
@_config
@_wait
@_json
def add_cmd(group: str, device: str, config_path: str | None, wait: float, as_json: bool) -> None:
    """Add DEVICE to GROUP: a new epoch, so it reads nothing sent before.

    \b
    Examples:
      moteseal group add valves valve-4
    """
    submit(config_path, "add", group, device.encode(), wait, as_json)


@group_group.command("remove")
@click.argument("group")
@click.argument("device")
@_config
@_wait
@_json
def remove_cmd(group: str, device: str, config_path: str | None, wait: float,
               as_json: bool) -> None:
    """Remove DEVICE from GROUP: a new epoch the removed device has no key
    for, so it reads nothing sent afterwards.

    \b
    Examples:
      moteseal group remove valves valve-2
    """
    submit(config_path, "remove", group, device.encode(), wait, as_json)


@group_group.command("rotate")
@click.argument("group")
@_config
@_wait
@_json
def rotate_cmd(group: str, config_path: str | None, wait: float, as_json: bool) -> None:
    """Start a new epoch for GROUP with the same members (fresh keys).

    \b
    Examples:
      moteseal group rotate valves
    """
    submit(config_path, "rotate", group, b"", wait, as_json)


@group_group.command("list")
@_config
@_json
def list_cmd(config_path: str | None, as_json: bool) -> None:
    """Print the groups the hub holds: epoch and members (no keys: those
    exist only in the running hub's memory).

    \b
    Examples:
      moteseal group list --json
    """
    gf = open_group_file(config_path)
    try:
        state = gf.state()
    finally:
        gf.close()
    if as_json:
        click.echo(json.dumps(state, sort_keys=True))
        return
    for gid, s in state.items():
        click.echo(f"{gid:<16} epoch {s['epoch']:<6} {len(s['members'])} members: "
                   + " ".join(s["members"]))
