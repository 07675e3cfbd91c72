"""``moteseal flash``: build a device's MicroPython bundle and deploy it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from moteseal.cli.errors import fail
from moteseal.flash.build import (ARCHES, BOARDS, DEFAULT_FEATURES, FEATURES, USUAL_PORTS, FlashError,
                                   build, parse_features)
from moteseal.flash.board import deploy, mpremote_argv, resolve_port, run_mpremote

__all__ = ["flash_group"]


def _fail(message: str, code: int, as_json: bool) -> None:
    fail(message, code, as_json)


@click.group("flash")
def flash_group() -> None:
    """Put moteseal on a MicroPython board (ESP32, Raspberry Pi Pico W, ...).

    \b
    Examples:
      moteseal flash build --device sensor-7 --board esp32
      moteseal flash deploy --dir flash/sensor-7 --port /dev/ttyUSB0
      moteseal flash deploy --device sensor-7 --port auto --monitor
      moteseal flash monitor --port /dev/ttyACM0
    """


@flash_group.command("build")
@click.option("--device", "device_id", required=True, help="Device id (its provisioned bundle goes on the board).")
@click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The device's bundle (default: <[provision] out_dir>/<device>.bundle).")
@click.option("--board", type=click.Choice(sorted(BOARDS)), default="esp32", show_default=True,
              help="Target board family (sets --arch). esp8266 is refused: too little heap.")
@click.option("--arch", type=click.Choice(sorted(ARCHES)), default=None,
              help="mpy-cross native architecture (overrides --board).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write (default: flash/<device>).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--allow-slow", is_flag=True,
              help="Build even if the arch cannot load a fast path (the board runs pure Python).")
@click.option("--all-modules", is_flag=True,
              help="Also ship modules this device's link and suite do not use (e.g. to run vectors).")
@click.option("--debug", is_flag=True,
              help="Keep line numbers and exception messages in the .mpy (about 3 KiB more heap).")
@click.option("--features", "features_text", default="default", show_default=True,
              help="Optional features to ship, comma-separated: "
                   f"{', '.join(FEATURES)} (default: {', '.join(DEFAULT_FEATURES)}; "
                   "also all, none, default,groups). groups: Device(groups=N); updates: "
                   "transfers and application updates; fields: the user's fields in readings.")
@click.option("--romfs", is_flag=True,
              help="Also write romfs.img: the .mpy files as a ROMFS image, deployed to the board's ROM "
                   "partition (rp2, stm32; the recommended mode there: bytecode runs in place).")
@click.option("--wifi-ssid", default=None,
              help="Write wifi.json so the board joins this network (password from $MOTESEAL_WIFI_PASSWORD).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="moteseal config.toml.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def build_cmd(device_id: str, bundle_path: Path | None, board: str, arch: str | None,
              out_dir: Path | None, force: bool, allow_slow: bool, all_modules: bool, debug: bool,
              romfs: bool, features_text: str, wifi_ssid: str | None, config_path: str | None,
              as_json: bool) -> None:
    """Compile the core and the MicroPython port to .mpy and add the device's bundle.

    The output directory (0700) holds main.py, moteseal.bundle (0600: it
    holds the PSK), device/*.mpy, micropython_port/*.mpy and manifest.json
    (sizes and SHA-256 of every file; no secrets). Modules the bundle's link
    and suite never use are left out (the UART link for an MQTT device,
    BLAKE2s for a SHA-256 suite) unless --all-modules. The build is lean
    (mpy-cross -O3, long exception messages stripped) unless --debug.
    --features picks the optional features (docs/micropython.md, "Flash
    size"): without groups, Device(groups=N) raises LocalError("no
    groups"); without updates, transfer frames are dropped (counted in
    bad_envelopes); without fields, main(read=...) raises LocalError("no
    fields"). With
    --romfs the .mpy files also go into romfs.img, which `flash deploy`
    writes to the board's ROM partition (rp2, stm32: the recommended mode
    there; measured on a Cortex-M3, the device needs 58-59 KiB of heap instead
    of 79 KiB; docs/micropython.md).

    \b
    Examples:
      moteseal flash build --device sensor-7
      moteseal flash build --device sensor-7 --board rp2 --out /tmp/s7 --force --json
      moteseal flash build --device sensor-7 --board stm32 --romfs
      moteseal flash build --device sensor-7 --features default,updates
      MOTESEAL_WIFI_PASSWORD=... moteseal flash build --device sensor-7 --wifi-ssid farm
    """
    from device.bundle import BundleError
    from moteseal.keys.keyfile import KeyFileError

    if bundle_path is None:
        from moteseal.config import ConfigError, load_config
        try:
            out = Path(load_config(config_path).get("provision", "out_dir"))
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        bundle_path = out / f"{device_id}.bundle"
    out_dir = out_dir or Path("flash") / device_id
    try:
        # "default" lets build() choose: DEFAULT_FEATURES, or all of them with --all-modules.
        features = None if features_text == "default" else parse_features(features_text)
        manifest = build(bundle_path, out_dir, arch or BOARDS[board], force=force, device_id=device_id,
                         all_modules=all_modules, debug=debug, allow_slow=allow_slow, romfs=romfs,
                         wifi=None if wifi_ssid is None else
                         (wifi_ssid, os.environ.get("MOTESEAL_WIFI_PASSWORD", "")),
                         board=None if arch else board, features=features)
    except FileNotFoundError as exc:
        _fail(f"{exc.filename or bundle_path}: no such file (moteseal provision {device_id} writes it)",
              2, as_json)
        return
    except (KeyFileError, BundleError) as exc:  # tampered, readable by others, malformed
        _fail(str(exc), 3, as_json)
        return
    except FlashError as exc:
        _fail(str(exc), exc.exit_code, as_json)
        return
    doc = {"device": manifest.device, "dir": str(out_dir), "arch": manifest.arch,
           "mpy": f"{manifest.mpy[0]}.{manifest.mpy[1]}", "files": len(manifest.files),
           "total_bytes": manifest.total_bytes, "slow": manifest.slow,
           "romfs_bytes": manifest.romfs[1] if manifest.romfs else None,
           "features": manifest.features}
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
    else:
        click.echo(f"wrote {out_dir}: {len(manifest.files)} files, {manifest.total_bytes} bytes "
                   f"(.mpy v{doc['mpy']}, {manifest.arch}; features: "
                   f"{','.join(manifest.features) or 'none'})"
                   + (f"; romfs.img {manifest.romfs[1]} bytes" if manifest.romfs else ""))
        port = USUAL_PORTS.get(board, "auto") if not arch else "auto"
        click.echo(f"next: moteseal flash deploy --dir {out_dir} --port {port} --monitor"
                   + ("" if port == "auto" else "  (or --port auto: the only board plugged in)"))


@flash_group.command("deploy")
@click.option("--port", required=True,
              help="The board's serial port, e.g. /dev/ttyUSB0 (ESP32) or /dev/ttyACM0 (Pico W); "
                   "'auto' picks the only board plugged in.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Flash directory from `flash build` (default: flash/<device>).")
@click.option("--device", "device_id", default=None, help="Device id (for the default --dir).")
@click.option("--monitor", is_flag=True,
              help="Then reset the board and show its events, as `flash monitor` (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def deploy_cmd(port: str, directory: Path | None, device_id: str | None, monitor: bool,
               as_json: bool) -> None:
    """Copy a flash directory to a board with mpremote and verify it.

    Checks the port first (a missing one is named with the serial ports
    that do exist; no access means joining the dialout group), the local
    files against the manifest, the board's .mpy version and architecture
    against the build, removes stale .py files that would shadow the new
    .mpy, copies each file (with a progress bar), and reads every file's
    SHA-256 back from the board. Exit 1 names the files that did not
    verify. Reset the board afterwards to start main.py, or pass --monitor.

    \b
    Examples:
      moteseal flash deploy --device sensor-7 --port /dev/ttyUSB0
      moteseal flash deploy --device sensor-7 --port auto --monitor
      moteseal flash deploy --dir /tmp/s7 --port /dev/ttyACM0 --json
    """
    if directory is None:
        if device_id is None:
            raise click.UsageError("give --dir DIR or --device ID")
        directory = Path("flash") / device_id
    from moteseal.flash.build import Manifest

    total = Manifest.load(directory).total_bytes  # FlashError: exit 2, no manifest
    port = resolve_port(port)
    with click.progressbar(length=total, label=f"deploying to {port}", file=sys.stderr,
                           show_pos=True) as bar:
        try:
            manifest = deploy(directory, port, progress=lambda path, size: bar.update(size))
        except FlashError:
            bar.render_finish()
            raise
    doc = {"device": manifest.device, "port": port, "files": len(manifest.files),
           "total_bytes": manifest.total_bytes, "verified": True}
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
    else:
        click.echo(f"deployed {manifest.device} to {port}: {len(manifest.files)} files verified "
                   "(SHA-256 read back)" + ("" if monitor else "; reset the board to start it"))
    if monitor:
        run_mpremote([*mpremote_argv(port, "reset")[:5], "reset"])  # hard reset: boot.py, main.py
        _monitor(port, 115200, None, as_json)


@flash_group.command("monitor")
@click.option("--port", required=True,
              help="The board's serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0; 'auto' picks the only board.")
@click.option("--baud", type=click.IntRange(1), default=115200, show_default=True,
              help="Baud rate of the board's console.")
@click.option("--seconds", type=click.FloatRange(0), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line (console lines as {\"event\": \"console\"}).")
def monitor_cmd(port: str, baud: int, seconds: float | None, as_json: bool) -> None:
    """Show a board's events as they happen (its console, read-only).

    The device prints one JSON event per line (handshake, sent, hint,
    error, summary); each is shown with the time it arrived. Other console
    output (boot messages, a traceback of a --debug build) is shown as it
    is. Waits up to 10 s for a port that is not there yet (a board
    re-enumerating after a reset). Ctrl-C stops.

    \b
    Examples:
      moteseal flash monitor --port /dev/ttyACM0
      moteseal flash monitor --port auto --json --seconds 60
    """
    _monitor(resolve_port(port) if port == "auto" else port, baud, seconds, as_json)


def _open_serial(port: str, baud: int, wait: float) -> Any:
    """Open ``port``, retrying for ``wait`` seconds while it does not exist."""
    import time

    import serial

    deadline = time.monotonic() + wait
    while True:
        try:
            return serial.Serial(port, baud, timeout=0.2)
        except serial.SerialException as exc:
            if os.path.exists(port) or time.monotonic() > deadline:
                resolve_port(port)  # names missing ports and the dialout group
                raise FlashError(f"{port}: cannot open it ({exc.strerror or exc})", 1) from None
            time.sleep(0.2)


def _event_line(line: str, as_json: bool) -> str:
    import time

    try:
        ev = json.loads(line)
    except ValueError:
        ev = None
    if not isinstance(ev, dict) or "event" not in ev:
        ev = {"event": "console", "line": line}
    ev["ts"] = round(time.time(), 3)
    if as_json:
        return json.dumps(ev, sort_keys=True)
    when = time.strftime("%H:%M:%S", time.gmtime(ev["ts"])) + "Z"
    if ev["event"] == "console":
        return f"{when} | {line}"
    rest = ev.get("detail") if "detail" in ev else {k: v for k, v in ev.items() if k not in ("event", "ts")}
    return f"{when} {ev['event']:<10} {rest if rest not in (None, {}, '') else ''}".rstrip()


def _monitor(port: str, baud: int, seconds: float | None, as_json: bool) -> None:
    """Print each line the board writes until Ctrl-C (exit 0) or ``seconds``."""
    import time

    import serial

    conn = _open_serial(port, baud, wait=10.0)
    if not as_json:
        click.echo(f"monitoring {port} at {baud} baud (Ctrl-C stops)", err=True)
    deadline = None if seconds is None else time.monotonic() + seconds
    pending = b""
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                chunk = conn.read(256)
            except serial.SerialException as exc:
                raise FlashError(f"{port}: the board went away ({exc})", 1) from None
            pending += chunk
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if line:
                    click.echo(_event_line(line, as_json))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
