"""``moteseal registry`` and ``moteseal rotate`` (CPython).

Exit codes and ``--json`` behave as in ``moteseal.cli.keys`` (whose plumbing
this module shares): 0 ok, 1 failure found, 2 usage, 3 security refusal.
"""

from __future__ import annotations

import click

from moteseal.keys import fingerprint as fp
from moteseal.config import KDF_LEVELS, load_config
from moteseal.keys.keyfile import (MAX_KEY_FILE_BYTES, KeyFileError, is_encrypted,
                                   normalize_passphrase, passphrase_from_env,
                                   read_private_file)
from moteseal.cli.keys import (
    PASS_HELP,
    common_options,
    emit,
    handle_errors,
    make_key,
    open_registry,
    registry_options,
    when,
)
from moteseal.keys.registry import DeviceRecord, parse_id, show_id


# ---------------------------------------------------------------- registry


@click.group("registry")
def registry() -> None:
    """Inspect the devices a peer knows, and revoke them.

    \b
    Examples:
      moteseal registry list --peer hub1
      moteseal registry list --peer hub1 --old-key --json
      moteseal registry show sensor-7 --peer hub1
      moteseal registry revoke sensor-7 --peer hub1 --reason "stolen"
      moteseal registry keys --peer hub1
      moteseal registry backup hub1-backup.sqlite --peer hub1
    """


def _device_line(d: DeviceRecord) -> str:
    pins = "+".join(d.pin_states())
    status = "REVOKED" if d.revoked else ("old-key" if d.on_old_key else "ok")
    last = d.last_key_state or "-"
    return (f"{show_id(d.device_id):16}  {status:8}  gen {d.generation:<3} pins {pins:17} "
            f"last {last:8} handshake {when(d.last_seen)}")


@registry.command("list")
@click.option("--old-key", is_flag=True, help="Only devices that still use or pin only an old peer key.")
@registry_options
@common_options
@handle_errors
def registry_list(old_key: bool, peer: str | None, registry_path: str | None, config_path: str | None,
                  as_json: bool) -> None:
    """List provisioned devices with their key status.

    Status 'old-key' means the device pins no current peer key or last
    handshook on the previous one; 'pins' shows the state of each key the
    device pins (current, previous, retired); 'last' is the peer key of its
    last handshake and 'handshake' that handshake's time (in --json:
    last_seen): the registry is written at handshakes, not per message, so
    a device sending on a long session shows its session's start (`peer
    listen` shows every message). 'refused' counts its refused handshakes
    ('registry show' gives them by reason).

    \b
    Examples:
      moteseal registry list --peer hub1
      moteseal registry list --peer hub1 --old-key --json | jq '.devices[].device_id'
    """
    with open_registry(load_config(config_path), peer, registry_path) as reg:
        devices = [d for d in reg.list_devices() if d.on_old_key or not old_key]
        totals: dict[str, int] = {}
        for r in reg.refusals():
            totals[r["device_id"]] = totals.get(r["device_id"], 0) + r["count"]
        docs = [dict(d.to_json(), refused=totals.get(show_id(d.device_id), 0)) for d in devices]
        doc = {"peer_id": show_id(reg.peer_id), "devices": docs, "refused_unknown": totals.get("(unknown)", 0)}
    lines = [_device_line(d) + (f"  refused {n['refused']}" if n["refused"] else "") for d, n in zip(devices, docs)]
    if doc["refused_unknown"]:
        lines.append(f"(unknown devices refused {doc['refused_unknown']} time(s))")
    emit(as_json, doc, "\n".join(lines) or "(no devices)")


@registry.command("show")
@click.argument("device_id")
@registry_options
@common_options
@handle_errors
def registry_show(device_id: str, peer: str | None, registry_path: str | None, config_path: str | None,
                  as_json: bool) -> None:
    """Show one device: pinned keys, counter, revocation, refusals.

    \b
    Example:
      moteseal registry show sensor-7 --peer hub1 --json
    """
    with open_registry(load_config(config_path), peer, registry_path) as reg:
        d = reg.get(parse_id(device_id))
        doc = d.to_json()
        doc["refusals"] = reg.refusals(d.device_id)
    lines = [f"device       {doc['device_id']}", f"generation   {d.generation} (provisioned {when(d.provisioned_at)})",
             f"suite        {d.suite}",
             f"revoked      {'yes, ' + when(d.revoked_at) + ': ' + (d.revoke_reason or '') if d.revoked else 'no'}",
             f"counter      {d.counter}",
             f"handshake    {when(d.last_seen)} on {d.last_key_state or '-'} key (the last one; not per message)"]
    for p, s in zip(d.pins, d.pin_states()):
        lines.append(f"pins         {fp.short_id(p)} ... ({s})")
    for r in doc["refusals"]:
        lines.append(f"refused      {r['count']} x {r['reason']} (last {when(r['last_at'])})")
    emit(as_json, doc, "\n".join(lines))


@registry.command("revoke")
@click.argument("device_id")
@click.option("--reason", default="revoked by operator", help="Recorded with the revocation.")
@registry_options
@common_options
@handle_errors
def registry_revoke(device_id: str, reason: str, peer: str | None, registry_path: str | None,
                    config_path: str | None, as_json: bool) -> None:
    """Revoke a device: the peer refuses its next handshake message 1.

    A running peer ends the device's live sessions within about a second
    (data refused, no more downlink). Undo by re-provisioning with --replace (new PSK).

    \b
    Example:
      moteseal registry revoke sensor-7 --peer hub1 --reason "lost in the field"
    """
    with open_registry(load_config(config_path), peer, registry_path) as reg:
        d = reg.revoke(parse_id(device_id), reason)
    emit(as_json, d.to_json(), f"revoked {device_id} ({d.revoke_reason})")


@registry.command("backup")
@click.argument("out", type=click.Path(dir_okay=False))
@registry_options
@common_options
@handle_errors
def registry_backup(out: str, peer: str | None, registry_path: str | None, config_path: str | None,
                    as_json: bool) -> None:
    """Write a consistent copy of the registry to OUT (0600; it holds PSKs).

    Safe while the peer runs. Every device is marked 'restored' in the
    copy, so restoring it cannot re-open message-1 replay (docs/keys.md).

    \b
    Example:
      moteseal registry backup /secure/hub1-$(date +%F).sqlite --peer hub1
    """
    from moteseal.keys.backup import backup
    with open_registry(load_config(config_path), peer, registry_path) as reg:
        n = backup(reg, out)
    emit(as_json, {"backup": out, "devices": n}, f"backed up {n} device(s) to {out}")


@registry.command("restore")
@click.argument("backup_file", type=click.Path(dir_okay=False))
@registry_options
@common_options
@handle_errors
def registry_restore(backup_file: str, peer: str | None, registry_path: str | None,
                     config_path: str | None, as_json: bool) -> None:
    """Replace the registry's contents with BACKUP_FILE (same peer only).

    Counters go back to the backup's, so every device is marked 'restored':
    the peer holds its next message-1 reading until the device confirms the
    session with data, so message 1s recorded since the backup are never
    delivered again. A running peer drops sessions the backup does not
    back. Re-provision devices provisioned or replaced since the backup.

    \b
    Example:
      moteseal registry restore /secure/hub1-2026-12-01.sqlite --peer hub1
    """
    from moteseal.keys.backup import restore
    with open_registry(load_config(config_path), peer, registry_path) as reg:
        n = restore(reg, backup_file)
    emit(as_json, {"restored_from": backup_file, "devices": n},
         f"restored {n} device(s) from {backup_file}; their next message-1 readings wait for confirmation")


@registry.command("keys")
@click.option("--check", is_flag=True, help="Open every live key file as the peer would (needs its passphrase).")
@click.option("--passphrase", is_flag=True, help="Prompt for the key files' passphrase.")
@registry_options
@common_options
@handle_errors
def registry_keys(check: bool, passphrase: bool, peer: str | None, registry_path: str | None,
                  config_path: str | None, as_json: bool) -> None:
    """List the peer's static keys (current, previous, retired).

    \b
    Example:
      moteseal registry keys --peer hub1 --check
    """
    cfg = load_config(config_path)
    pw = None
    if check and passphrase:
        pw = normalize_passphrase(click.prompt("Passphrase for the peer keys", hide_input=True, err=True))
    reg = open_registry(cfg, peer, registry_path, pw)
    try:
        keys = reg.peer_keys()
        if check:
            reg.check_statics()
    finally:
        reg.close()
    doc = {"keys": [{"public_key": k["pub"].hex(), "state": k["state"], "key_file": k["key_path"],
                     "safety_number": fp.safety_number(k["pub"]), "created_at": k["created_at"],
                     "retired_at": k["retired_at"]} for k in keys], "checked": check}
    lines = [f"{k['state']:9} {fp.short_id(k['pub'])} ...  {k['key_path']}" for k in keys]
    emit(as_json, doc, "\n".join(lines) + ("\nall live key files open and match" if check else ""))


# ---------------------------------------------------------------- rotate


def _refuse_dropping_protection(reg) -> None:
    """Raise ``KeyFileError`` (exit 3) if the current key file is
    passphrase-protected, or cannot be read to tell: a new key written in
    the clear would silently drop that protection."""
    for k in reg.peer_keys():
        if k["state"] != "current":
            continue
        path = k["key_path"]
        try:
            protected = is_encrypted(read_private_file(path, MAX_KEY_FILE_BYTES), path)
        except (OSError, KeyFileError) as e:
            raise KeyFileError(
                f"cannot tell whether the current key {path} is passphrase-protected ({e}); "
                "give --passphrase (or set MOTESEAL_PASSPHRASE) to encrypt the new key") from None
        if protected:
            raise KeyFileError(
                f"the current key {path} is passphrase-protected and the new key would be written "
                "unencrypted; give --passphrase (or set MOTESEAL_PASSPHRASE) to protect it too")


@click.command("rotate")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="File for the new private key (0600).")
@click.option("--pub", "pub_out", type=click.Path(dir_okay=False), help="Public key file (default: OUT with .pub).")
@click.option("--passphrase", is_flag=True, help=PASS_HELP)
@click.option("--kdf", type=click.Choice(KDF_LEVELS), default=None, help="argon2id cost (default: [keys] kdf).")
@click.option("--retire", is_flag=True, help="End the overlap: stop answering on the previous key.")
@click.option("--status", is_flag=True, help="Only report which devices still use the old key.")
@click.option("--force", is_flag=True, help="With --retire: retire even if devices pin only the old key.")
@registry_options
@common_options
@handle_errors
def rotate(out: str | None, pub_out: str | None, passphrase: bool, kdf: str | None, retire: bool, status: bool,
           force: bool, peer: str | None, registry_path: str | None, config_path: str | None, as_json: bool) -> None:
    """Rotate the peer's static key with an overlap.

    Step 1 (--out NEW.key): a new key becomes current; the peer answers on
    both keys, and devices provisioned from now on pin both. Step 2:
    re-provision the devices that pin only the old key ('rotate --status'
    or 'registry list --old-key' lists them). Step 3 (--retire): the old key
    is no longer served; refused while devices still pin only it, unless
    --force. A running peer picks up each step at the next handshake (check
    that it can open the new key: 'registry keys --check'). If the current
    key file is passphrase-protected, so must the new one be: --passphrase
    or $MOTESEAL_PASSPHRASE, else rotate refuses (exit 3) and writes nothing.

    \b
    Examples:
      moteseal rotate --peer hub1 --out hub1-2026.key
      moteseal rotate --peer hub1 --status --json
      moteseal rotate --peer hub1 --retire
    """
    cfg = load_config(config_path)
    if sum((bool(out), retire, status)) != 1:
        raise click.UsageError("give exactly one of --out NEW.key, --retire, --status")
    with open_registry(cfg, peer, registry_path) as reg:
        if out:
            reg.check_can_rotate()  # refuse before a key file is written
            if not passphrase and passphrase_from_env() is None:
                _refuse_dropping_protection(reg)
            kp, pub_path = make_key(out, pub_out, passphrase, kdf or cfg.get("keys", "kdf"), force=False)
            reg.rotate_to(kp.pub, out)
            action = {"rotated_to": kp.pub.hex(), "key_file": out, "public_key_file": pub_path,
                      "safety_number": fp.safety_number(kp.pub)}
            human = f"new current key {fp.short_id(kp.pub)} ... in {out}; the previous key is served until 'rotate --retire'"
        elif retire:
            old = reg.retire_previous(force=force)
            action = {"retired": old.hex()}
            human = f"retired {fp.short_id(old)} ...; the peer no longer answers on it"
        else:
            action = {}
            human = ""
        stuck = [d for d in reg.list_devices() if not d.revoked and d.on_old_key]
    doc = dict(action, devices_on_old_key=[d.to_json() for d in stuck])
    lines = [human] if human else []
    lines.append(f"{len(stuck)} device(s) still on an old key" + (":" if stuck else ""))
    lines += ["  " + _device_line(d) for d in stuck]
    emit(as_json, doc, "\n".join(lines))
