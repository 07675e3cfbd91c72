"""``moteseal push DEVICE FILE`` and ``moteseal update DEVICE|--group G
BUNDLE_DIR``: file and application transfers through the running hub
(docs/hub.md, "Updates"; the wire format is docs/protocol.md,
"Transfers"). Like ``moteseal send`` they write into the hub's store and
the hub does the rest; ``--wait`` follows the transfer to its end.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from device.errors import LocalError

__all__ = ["push_cmd", "update_cmd", "group_members"]


class GroupNotFound(LocalError):
    """``--group G`` names no group of the hub (exit 2)."""

    exit_code = 2


def group_members(store_path: str, gid: str) -> list[str]:
    """The members of hub group ``gid``, read from the hub's group file
    (``<store>.groups``, written by ``moteseal group``). Raises
    ``GroupNotFound``."""
    path = Path(store_path + ".groups")
    if not path.exists():
        raise GroupNotFound(f"no group file {path}: create the group with `moteseal group create`")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT members FROM groups WHERE gid = ?", (gid,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise GroupNotFound(f"{path}: {e}") from None
    if row is None:
        raise GroupNotFound(f"no group {gid!r} in {path}")
    return [m if isinstance(m, str) else str(m) for m in json.loads(row[0])]


def _follow(store: Any, rows: dict[int, str], wait: float, as_json: bool) -> int:
    """Waits up to ``wait`` seconds for every row to end; prints each; returns
    the exit code (0 all installed or staged, 1 otherwise)."""
    from moteseal.hub.push import FINAL_STATES

    deadline = time.monotonic() + wait
    states = {r: store.get(r) for r in rows}
    while wait and time.monotonic() < deadline and \
            any(s is None or s["state"] not in FINAL_STATES for s in states.values()):
        time.sleep(0.2)
        states = {r: store.get(r) for r in rows}
    ok = True
    for r, s in states.items():
        if as_json:
            click.echo(json.dumps(s, sort_keys=True))
        else:
            if s is None:
                click.echo(f"transfer {r} to {rows[r]}: ?")
            else:
                why = f" ({s['reason']})" if s["reason"] else ""
                click.echo(f"transfer {r} to {rows[r]}: {s['state']}{why}, "
                           f"{s['offset']}/{s['size']} bytes")
        if wait and (s is None or s["state"] not in ("installed", "staged")):
            ok = False
    return 0 if ok else 1


def _queue(config_path: str | None, devices: list[str], name: bytes, data: bytes,
           version: int | None, flags: int, wait: float, as_json: bool) -> None:
    from moteseal.cli.hub import _store_path
    from moteseal.hub.push import TransferStore

    store = TransferStore(_store_path(config_path, None))
    try:
        rows = {store.queue(d, name, data, version, flags): d for d in devices}
        code = _follow(store, rows, wait, as_json)
    finally:
        store.close()
    if code:
        sys.exit(code)


_WAIT = click.option("--wait", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="Seconds to wait until the device has it (installed or staged).")
_CONFIG = click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                       help="hub.toml of the running hub (default: ./hub.toml).")
_VERSION = click.option("--version", "version", type=click.IntRange(1, 0xFFFFFFFF), default=None,
                        help="The version (default: now, in seconds); the device refuses "
                             "one not above what it has.")


@click.command("push")
@click.argument("device")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--as", "as_name", default=None,
              help="The name on the device (default: FILE's name); at most 16 characters, "
                   "no '/', '\\', ':' and not starting with '.'.")
@_VERSION
@_CONFIG
@_WAIT
@click.option("--json", "as_json", is_flag=True, help="Print the transfer's state as JSON.")
def push_cmd(device: str, file: str, as_name: str | None, version: int | None,
             config_path: str | None, wait: float, as_json: bool) -> None:
    """Send FILE to DEVICE through the running hub, end to end encrypted,
    in pieces that fit the device's buffers. The device writes it beside
    the old one, checks its SHA-256 and only then swaps it in; it resumes
    after a lost link or a reboot. Exit 0 once queued (with --wait: once
    installed; 1 if refused or not in time). At most 1 MiB.

    \b
    Examples:
      moteseal push sensor-7 settings.json
      moteseal push sensor-7 build/cal.bin --as cal.bin --wait 300
    """
    name = (as_name or Path(file).name).encode("utf-8", "replace")
    _queue(config_path, [device], name, Path(file).read_bytes(), version, 0, wait, as_json)


@click.command("update")
@click.argument("args", nargs=-1, metavar="DEVICE|--group G BUNDLE_DIR")
@click.option("--group", "group", default=None, help="Every member of this hub group.")
@_VERSION
@_CONFIG
@_WAIT
@click.option("--json", "as_json", is_flag=True, help="Print each transfer's state as JSON.")
def update_cmd(args: tuple[str, ...], group: str | None, version: int | None,
               config_path: str | None, wait: float, as_json: bool) -> None:
    """Send an application update (the .mpy files and main.py of a
    `moteseal flash build` directory, never its bundle) to a device, or to
    every member of --group G. The device stages it, applies it at its
    next boot and keeps the old files until the new application has
    reached the hub; if it does not in time, the next boot rolls back.
    Exit 0 once queued (with --wait: once staged on every device).

    \b
    Examples:
      moteseal update sensor-7 flash-sensor-7/
      moteseal update --group greenhouse flash-new/ --wait 600
    """
    from moteseal.hub.transfer import F_APP
    from moteseal.cli.hub import _store_path
    from moteseal.hub.transfer import pack_app

    if len(args) != (1 if group else 2):
        raise click.UsageError("give DEVICE BUNDLE_DIR, or --group G BUNDLE_DIR")
    target, bundle_dir = (None, args[0]) if group else args
    devices = [target] if target else group_members(_store_path(config_path, None), str(group))
    if not devices:
        raise GroupNotFound(f"group {group!r} has no members")
    _queue(config_path, devices, b"app", pack_app(bundle_dir), version, F_APP, wait, as_json)
