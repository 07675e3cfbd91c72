"""``moteseal keygen | fingerprint | provision``, and the plumbing that
``moteseal.cli.registry`` (``registry``, ``rotate``) shares (CPython).

Exit codes (as for every moteseal command):
  0  success
  1  the operation ran and found a failure
  2  usage error: bad option, missing file, bad config key, unknown device
  3  security refusal: wrong passphrase, file too open, corrupted or
     tampered key/bundle, key change refused, retiring a key still in use

With ``--json`` a command prints one JSON document on stdout, and on failure
``{"error": ..., "exit_code": ...}`` instead; human messages go to stderr.
"""

from __future__ import annotations

import csv
import datetime
import functools
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import cbor2
import click

from moteseal.cli.errors import describe, fail, require_parent
from moteseal.keys import fingerprint as fp
from moteseal.config import KDF_LEVELS, SUITES, Config, ConfigError, load_config
from device.errors import LocalError
from moteseal.keys.keyfile import (
    MAX_KEY_FILE_BYTES,
    PUB_PREFIX,
    KeyFileError,
    KeyPair,
    PassphraseRequired,
    decode_key_file,
    generate_keypair,
    normalize_passphrase,
    parse_public,
    passphrase_from_env,
    read_private_file,
    write_key_file,
    write_public_file,
)
from device.bundle import is_text
from moteseal.keys.provision import (MAX_BUNDLE_BYTES, decode_bundle, describe_bundle, provision_device,
                                     tls_link_fields, write_bundle)
from moteseal.keys.records import pad_policy
from moteseal.keys.registry import Registry, RegistryError, RegistryRefusal, parse_id, show_id

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------- plumbing


def handle_errors(f: F) -> F:
    """Turn expected failures into one line and an exit code (no traceback),
    through the one mapping in ``moteseal.cli.errors``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return f(*args, **kwargs)
        except click.ClickException:
            raise
        except (LocalError, OSError, sqlite3.Error) as e:
            message, code = describe(e)
            fail(message, code or 1, as_json)

    return wrapper  # type: ignore[return-value]


def common_options(f: F) -> F:
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="TOML config file (default: $MOTESEAL_CONFIG, then ~/.config/moteseal/config.toml).",
    )(f)
    return f


def registry_options(f: F) -> F:
    f = click.option("--peer", "peer", default=None, help="Peer id (default: [registry] peer in the config).")(f)
    f = click.option(
        "--registry",
        "registry_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Registry file (default: <[registry] dir>/<peer>.sqlite).",
    )(f)
    return f


def _resolve_registry(cfg: Config, peer: str | None, registry_path: str | None) -> tuple[Path, str | None]:
    if registry_path:
        return Path(registry_path), peer
    peer = peer or cfg.get("registry", "peer")
    if not peer:
        raise ConfigError("no peer given: pass --peer PEER_ID (or set [registry] peer in the config)")
    parse_id(peer, "peer id")
    return cfg.registry_path(peer), peer


def open_registry(cfg: Config, peer: str | None, registry_path: str | None, passphrase: bytes | None = None) -> Registry:
    path, peer = _resolve_registry(cfg, peer, registry_path)
    reg = Registry(path, passphrase=passphrase)
    if peer and reg.peer_id != peer.encode():
        reg.close()
        raise RegistryError(f"{path}: this is the registry of peer {show_id(reg.peer_id)}, not {peer}")
    return reg


def emit(as_json: bool, doc: Any, human: str) -> None:
    click.echo(json.dumps(doc, sort_keys=True) if as_json else human)


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _new_passphrase(prompt: bool) -> bytes | None:
    if prompt:
        return normalize_passphrase(
            click.prompt("Passphrase for the new key", hide_input=True, err=True, confirmation_prompt=True)
        )
    return passphrase_from_env()


class FileInTheWay(LocalError):
    """A key file to be written exists already (exit 2)."""

    exit_code = 2


def key_paths(out: str, pub_out: str | None, force: bool, hint: str) -> str:
    """The public key path for ``out``; raises ``FileInTheWay`` if either
    file exists and not ``force``."""
    pub_path = pub_out or (str(Path(out).with_suffix(".pub")) if Path(out).suffix == ".key" else out + ".pub")
    require_parent(out, "--out")
    require_parent(pub_path, "--pub")
    if not force:
        for p in (out, pub_path):
            if os.path.exists(p):
                raise FileInTheWay(f"{p}: already exists; refusing to overwrite a key ({hint})")
    return pub_path


def make_key(out: str, pub_out: str | None, passphrase: bool, kdf: str, force: bool,
             hint: str = "choose another --out") -> tuple[KeyPair, str]:
    pub_path = key_paths(out, pub_out, force, hint)
    kp = generate_keypair()
    write_key_file(out, kp, _new_passphrase(passphrase), kdf, overwrite=force)
    write_public_file(pub_path, kp.pub, overwrite=force)
    return kp, pub_path


PASS_HELP = "Encrypt (or open) the key with a passphrase, prompted for; services set $MOTESEAL_PASSPHRASE instead."


# ---------------------------------------------------------------- keygen


@click.command("keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Private key file to write (0600).")
@click.option("--pub", "pub_out", type=click.Path(dir_okay=False), help="Public key file (default: OUT with .pub).")
@click.option("--passphrase", is_flag=True, help=PASS_HELP)
@click.option("--kdf", type=click.Choice(KDF_LEVELS), default=None, help="argon2id cost (default: [keys] kdf).")
@click.option("--force", is_flag=True,
              help="Replace existing files (a key change: devices pinned to the old key stop working).")
@registry_options
@common_options
@handle_errors
def keygen(out: str, pub_out: str | None, passphrase: bool, kdf: str | None, force: bool,
           peer: str | None, registry_path: str | None, config_path: str | None, as_json: bool) -> None:
    """Make a peer's static X25519 key pair.

    Writes OUT (private, mode 0600, refused later if group/world can read it)
    and OUT.pub (public). With --peer, the key becomes that peer's static key
    in its registry (created if needed); a peer that already has a key is
    refused: use 'moteseal rotate'.

    \b
    Examples:
      moteseal keygen --out hub1.key --peer hub1
      moteseal keygen --out hub1.key --passphrase --peer hub1
      MOTESEAL_PASSPHRASE=... moteseal keygen --out hub1.key --json
    """
    cfg = load_config(config_path)
    kdf = kdf or cfg.get("keys", "kdf")
    reg = None
    hint = "--force replaces it: devices pinned to the old key stop working"
    key_paths(out, pub_out, force, hint)  # before a registry is created
    if peer or registry_path:
        path, peer = _resolve_registry(cfg, peer, registry_path)
        if path.exists():
            reg = Registry(path)
            if reg.live_pubs():
                reg.close()
                raise RegistryRefusal(
                    f"peer {show_id(reg.peer_id)} already has a static key ({path}); use 'moteseal rotate'"
                )
        else:
            if not peer:
                raise ConfigError("a new registry needs --peer PEER_ID")
            reg = Registry(path, create_for_peer=peer.encode())
    kp, pub_path = make_key(out, pub_out, passphrase, kdf, force, hint)
    if reg is not None:
        reg.add_peer_key(kp.pub, out)
        reg.close()
    number = fp.safety_number(kp.pub)
    doc = {
        "key_file": out,
        "public_key_file": pub_path,
        "public_key": kp.pub.hex(),
        "safety_number": number,
        "encrypted": bool(passphrase or passphrase_from_env()),
        "registry": str(reg.path) if reg else None,
    }
    emit(as_json, doc, f"wrote {out} and {pub_path}\nsafety number:\n{fp.format_block(number)}")


# ---------------------------------------------------------------- fingerprint


def _cbor_format(data: bytes) -> Any:
    try:
        doc = cbor2.loads(data)
    except Exception:  # the decoders below report garbage precisely
        return None
    return doc.get("format") if isinstance(doc, dict) else None


def _read_any(path: str, passphrase: bool) -> tuple[str, list[tuple[str, bytes]]]:
    """(kind, [(label, pub)]) for a .pub, key or bundle file."""
    with open(path, "rb") as f:
        head = f.read(len(PUB_PREFIX))
    if head == PUB_PREFIX.encode():
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES)
        return "public key", [("", parse_public(raw.decode("ascii", "replace"), path))]
    data = read_private_file(path, max(MAX_KEY_FILE_BYTES, MAX_BUNDLE_BYTES))
    if _cbor_format(data) == "moteseal-bundle":
        b = decode_bundle(data, path)
        return "bundle", [(f"{show_id(p)} key {i + 1}", k) for p, ks in b.peers for i, k in enumerate(ks)]
    try:
        kp = decode_key_file(data, passphrase_from_env(), path)
    except KeyFileError as e:
        if not isinstance(e, PassphraseRequired) or not (passphrase or sys.stdin.isatty()):
            raise
        pw = normalize_passphrase(click.prompt(f"Passphrase for {path}", hide_input=True, err=True))
        kp = decode_key_file(data, pw, path)
    return "key", [("", kp.pub)]


@click.command("fingerprint")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--qr", is_flag=True, help="Also draw the safety number as a QR code in the terminal.")
@click.option("--qr-out", type=click.Path(dir_okay=False), help="Write the QR code to a .png or .svg file.")
@click.option("--passphrase", is_flag=True, help="Prompt for the passphrase of an encrypted key file.")
@common_options
@handle_errors
def fingerprint(file: str, qr: bool, qr_out: str | None, passphrase: bool, config_path: str | None, as_json: bool) -> None:
    """Print the safety number of a key, a .pub file or a bundle's pinned keys.

    Compare the 60 digits (or scan the QR code) on both sides before
    trusting a key. A private key file is opened and checked in full
    (encrypted ones need --passphrase or $MOTESEAL_PASSPHRASE); use the
    .pub file to fingerprint without the secret.

    \b
    Examples:
      moteseal fingerprint hub1.pub
      moteseal fingerprint hub1.key --passphrase --qr
      moteseal fingerprint sensor-7.bundle --json
      moteseal fingerprint hub1.pub --qr-out hub1.svg
    """
    load_config(config_path)
    kind, keys = _read_any(file, passphrase)
    out = []
    for label, pub in keys:
        out.append({"label": label, "public_key": pub.hex(), "safety_number": fp.safety_number(pub)})
    if qr_out:
        if len(keys) != 1:
            raise click.UsageError("--qr-out needs a file with one key")
        try:
            fp.qr_save(out[0]["safety_number"], qr_out)
        except ValueError as e:
            raise click.UsageError(str(e))
    if as_json:
        emit(True, {"file": file, "kind": kind, "keys": out, "qr_file": qr_out}, "")
        return
    for entry in out:
        if entry["label"]:
            click.echo(f"{entry['label']}:")
        click.echo(fp.format_block(entry["safety_number"]))
        if qr:
            click.echo(fp.qr_terminal(entry["safety_number"]), nl=False)
    if qr_out:
        click.echo(f"wrote {qr_out}")


# ---------------------------------------------------------------- provision


_CSV_COLUMNS = {"device_id", "peer", "kind", "host", "port", "username", "password", "serial_port", "baud", "suite", "out"}


def _link(cfg: Config, overrides: dict[str, Any]) -> dict[str, Any]:
    kind = overrides.get("kind") or cfg.get("link", "kind")
    if kind not in ("mqtt", "serial", "none"):
        raise ConfigError(f"link kind {kind!r}: expected mqtt, serial or none")
    keys = {"mqtt": ("host", "port", "username", "password"), "serial": ("serial_port", "baud"), "none": ()}[kind]
    link: dict[str, Any] = {"kind": kind}
    for k in keys:
        v = overrides.get(k)
        if v in (None, ""):
            v = cfg.get("link", k)
        if v is not None:
            if isinstance(v, str) and not is_text(v):
                raise ConfigError(f"link setting {k}: only printable ASCII fits in a bundle")
            link["port" if k == "serial_port" else k] = v
    return link


def _provision_one(reg: Registry, device: str, suite: str, link: dict[str, Any], out: Path, replace: bool,
                   pad: Any = None) -> dict[str, Any]:
    device_id = parse_id(device)
    if not replace:
        if reg.psk_for(device_id) is not None:
            raise RegistryError(
                f"device {device} is already provisioned; pass --replace to issue a new PSK "
                "(the old one stops working at once)"
            )
        if out.exists():
            raise RegistryError(f"{out}: already exists; pass --replace to overwrite it, or choose --out")
    require_parent(out, "--out")  # before the registry changes
    rec, bundle = provision_device(reg, device_id, suite, link, replace=replace, pad=pad)
    try:
        write_bundle(out, bundle, overwrite=replace)
    except OSError as e:
        raise RegistryError(
            f"{out}: bundle not written ({e.strerror}); the registry already holds a new PSK for {device}: "
            "re-run with --replace"
        ) from None
    return {
        "device_id": device,
        "bundle": str(out),
        "generation": rec.generation,
        "pinned_keys": [p.hex() for p in rec.pins],
        "suite": suite,
        "link": describe_bundle(bundle)["link"],
        "pad": None if bundle.pad is None else {"hs": list(bundle.pad.hs), "up": list(bundle.pad.up),
                                                "down": list(bundle.pad.down)},
    }


@click.command("provision")
@click.argument("device_id", required=False)
@registry_options
@click.option("--out", "out", type=click.Path(dir_okay=False),
              help="Bundle file (default: <[provision] out_dir>/<id>.bundle).")
@click.option("--out-dir", type=click.Path(file_okay=False), help="Directory for bundles (default: [provision] out_dir).")
@click.option("--replace", is_flag=True, help="Re-provision: new PSK, the old one stops working at once.")
@click.option("--suite", type=click.Choice(SUITES), default=None, help="Noise suite (default: [provision] suite).")
@click.option("--link", "kind", type=click.Choice(["mqtt", "serial", "none"]), default=None,
              help="Link kind (default: [link] kind).")
@click.option("--host", default=None, help="MQTT broker host.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="MQTT broker port.")
@click.option("--username", default=None, help="MQTT username.")
@click.option("--password", default=None, help="MQTT password (prefer $MOTESEAL_LINK_PASSWORD: argv is visible to ps).")
@click.option("--serial-port", default=None, help="Serial device, e.g. /dev/ttyUSB0.")
@click.option("--baud", type=click.IntRange(1), default=None, help="Serial baud rate.")
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="MQTT over TLS: the broker's CA certificate (PEM or DER; stored as DER).")
@click.option("--pin-cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="MQTT over TLS: pin the broker's certificate (PEM or DER file; its SHA-256 is stored).")
@click.option("--server-name", default=None,
              help="MQTT over TLS: the name the broker's certificate carries (default: --host).")
@click.option("--pad", default=None, metavar="BUCKETS|off",
              help="Pad this device's messages to size buckets, e.g. 32,64,128,256 (recorded in the "
                   "registry and the bundle); off: no padding. Default: as the registry has it.")
@click.option("--pad-hs", default=None, metavar="BUCKETS", help="Buckets for handshake payloads (default: --pad).")
@click.option("--pad-up", default=None, metavar="BUCKETS", help="Buckets for device-to-peer data (default: --pad).")
@click.option("--pad-down", default=None, metavar="BUCKETS", help="Buckets for peer-to-device data (default: --pad).")
@click.option("--from-csv", "csv_path", type=click.Path(dir_okay=False, exists=True), help="Provision every row of a CSV.")
@common_options
@handle_errors
def provision(device_id: str | None, peer: str | None, registry_path: str | None, out: str | None, out_dir: str | None,
              replace: bool, suite: str | None, kind: str | None, host: str | None, port: int | None,
              username: str | None, password: str | None, serial_port: str | None, baud: int | None,
              ca_file: str | None, pin_cert: str | None, server_name: str | None, pad: str | None,
              pad_hs: str | None, pad_up: str | None, pad_down: str | None,
              csv_path: str | None, config_path: str | None, as_json: bool) -> None:
    """Provision a device: new PSK, registry entry, bundle to flash.

    The bundle (CBOR, mode 0600) holds the device id, the peer id with every
    static key the peer answers on (two during a rotation overlap), the PSK,
    the suite and the link settings (with --ca-file or --pin-cert, MQTT over
    TLS: the device then never connects in plain TCP). An already provisioned device is
    refused unless --replace. --from-csv takes a header row with device_id
    and optionally peer, kind, host, port, username, password, serial_port,
    baud, suite, out; the whole file is checked before anything is written.

    \b
    Examples:
      moteseal provision sensor-7 --peer hub1
      moteseal provision sensor-7 --peer hub1 --replace --out /media/flash/sensor-7.bundle
      moteseal provision sensor-9 --peer hub1 --link serial --serial-port /dev/ttyUSB0
      moteseal provision sensor-8 --peer hub1 --host mqtt.example.org --port 8883 --ca-file ca.pem
      moteseal provision --from-csv fleet.csv --peer hub1 --out-dir bundles --json
      moteseal provision sensor-7 --peer hub1 --replace --pad 32,64,128,256 --pad-up 64
    """
    cfg = load_config(config_path)
    suite = suite or cfg.get("provision", "suite")
    bundle_dir = Path(out_dir or cfg.get("provision", "out_dir"))
    cli_link = {"kind": kind, "host": host, "port": port, "username": username, "password": password,
                "serial_port": serial_port, "baud": baud}
    tls = tls_link_fields(ca_file, server_name, pin_cert)
    policy: Any = None
    if pad == "off":
        if pad_hs or pad_up or pad_down:
            raise click.UsageError("--pad off takes no --pad-hs, --pad-up or --pad-down")
        policy = False
    elif pad is not None:
        policy = pad_policy(pad, pad_hs, pad_up, pad_down)
    elif pad_hs or pad_up or pad_down:
        raise click.UsageError("--pad-hs, --pad-up and --pad-down need --pad BUCKETS")
    if policy is not None and csv_path is not None:
        raise click.UsageError("--pad applies to one device, not --from-csv")
    if tls and csv_path is not None:
        raise click.UsageError("--ca-file, --pin-cert and --server-name apply to one device, not --from-csv")
    if csv_path is None:
        if device_id is None:
            raise click.UsageError("give a DEVICE_ID or --from-csv FILE")
        link = _link(cfg, cli_link)
        if tls:
            if link["kind"] != "mqtt":
                raise click.UsageError("--ca-file, --pin-cert and --server-name need --link mqtt")
            if not is_text(tls.get("server_name", "")):
                raise ConfigError("--server-name: only printable ASCII fits in a bundle")
            link.update(tls)
        reg = open_registry(cfg, peer, registry_path)
        try:
            if out is None:  # the bundle directory (not a typed --out) is ours to create
                bundle_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = Path(out) if out else bundle_dir / f"{device_id}.bundle"
            result = _provision_one(reg, device_id, suite, link, target, replace, policy)
        finally:
            reg.close()
        emit(as_json, result, f"provisioned {device_id} (generation {result['generation']}) -> {result['bundle']}")
        return
    if device_id is not None or out is not None:
        raise click.UsageError("--from-csv takes no DEVICE_ID and no --out (use --out-dir or an 'out' column)")
    rows = _read_fleet_csv(csv_path, cfg)
    results = _provision_rows(cfg, csv_path, rows, peer, registry_path, suite, cli_link, bundle_dir, replace)
    emit(as_json, {"provisioned": results}, f"provisioned {len(results)} device(s) into {bundle_dir}")


def _read_fleet_csv(csv_path: str, cfg: Config) -> list[dict[str, str]]:
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which
    # would otherwise become part of the first column's name.
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or ())
        if "device_id" not in cols:
            raise ConfigError(f"{csv_path}: header must include a device_id column")
        unknown = cols - _CSV_COLUMNS
        if unknown:
            raise ConfigError(f"{csv_path}: unknown column(s) {sorted(unknown)} (known: {sorted(_CSV_COLUMNS)})")
        rows = [dict(r) for r in reader]
    seen: set[str] = set()
    for n, r in enumerate(rows, start=2):
        dev = (r.get("device_id") or "").strip()
        try:
            parse_id(dev)
            if r.get("suite") and r["suite"] not in SUITES:
                raise ValueError(f"unknown suite {r['suite']!r}")
            for col, hi in (("port", 65535), ("baud", 10**7)):
                if r.get(col):
                    if not r[col].isdigit() or not 1 <= int(r[col]) <= hi:
                        raise ValueError(f"{col}: expected an integer 1..{hi}")
        except (LocalError, ValueError) as e:
            raise ConfigError(f"{csv_path}: line {n}: {e}") from None
        if dev in seen:
            raise ConfigError(f"{csv_path}: line {n}: device {dev} appears twice")
        seen.add(dev)
        r["device_id"] = dev
    return rows


def _provision_rows(cfg: Config, csv_path: str, rows: list[dict[str, str]], peer: str | None,
                    registry_path: str | None, suite: str, cli_link: dict[str, Any], bundle_dir: Path,
                    replace: bool) -> list[dict[str, Any]]:
    regs: dict[str, Registry] = {}
    try:
        plan = []
        for r in rows:  # check everything before the first write
            rpeer = r.get("peer") or peer
            key = rpeer or ""
            if key not in regs:
                regs[key] = open_registry(cfg, rpeer, registry_path)
            reg = regs[key]
            target = Path(r["out"]) if r.get("out") else bundle_dir / f"{r['device_id']}.bundle"
            if r.get("out"):
                require_parent(target, f"{csv_path}: out")
            if not replace:
                if reg.psk_for(r["device_id"].encode()) is not None:
                    raise RegistryError(f"{csv_path}: device {r['device_id']} is already provisioned; pass --replace")
                if target.exists():
                    raise RegistryError(f"{csv_path}: {target} already exists; pass --replace to overwrite it")
            link_over = {k: (r.get(k) or cli_link.get(k)) for k in cli_link}
            for k in ("port", "baud"):
                if isinstance(link_over[k], str):
                    link_over[k] = int(link_over[k])
            plan.append((reg, r["device_id"], r.get("suite") or suite, _link(cfg, link_over), target))
        bundle_dir.mkdir(parents=True, exist_ok=True)
        results = []
        with click.progressbar(plan, label="provisioning", file=sys.stderr,
                               item_show_func=lambda p: p[1] if p else None) as bar:
            for reg, dev, s, link, target in bar:
                results.append(_provision_one(reg, dev, s, link, target, replace))
        return results
    finally:
        for reg in regs.values():
            reg.close()
