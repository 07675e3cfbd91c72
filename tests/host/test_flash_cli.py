"""``moteseal flash`` as an operator meets it: builds that cannot run are
refused with the reason, a missing board is named with the ports there are,
``--port auto`` picks the only board, and ``flash monitor`` shows a board's
events from a real pseudo-terminal until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from moteseal.cli.main import main
from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.flash import build as build_mod
from moteseal.flash import board as board_mod
from moteseal.keys.provision import Bundle, write_bundle

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"


def _bundle(tmp_path: Path, name: str, link: dict) -> Path:
    b = NaclBackend()
    path = tmp_path / f"{name}.bundle"
    write_bundle(path, Bundle(name.encode(), [(b"hub1", [b.generate_keypair()[1]])],
                              b.random_bytes(32), SUITE, link))
    return path


def _flash(*args: str, env: dict | None = None) -> "CliRunner.invoke":
    return CliRunner().invoke(main, ["flash", *args], env=env or {"MOTESEAL_WIFI_PASSWORD": None})


MQTT = {"kind": "mqtt", "host": "10.0.0.2", "port": 8883, "username": "s1", "password": "pw"}


@pytest.mark.parametrize("board, link, extra, reason", [
    ("esp8266", MQTT, [], "heap"),
    ("esp32", MQTT, ["--wifi-ssid", "farm"], "MOTESEAL_WIFI_PASSWORD"),
    ("esp32", {"kind": "serial", "port": "/dev/ttyUSB0", "baud": 115200}, [], "UART number"),
    ("esp32", {"kind": "serial", "port": "0", "baud": 115200}, [], "REPL"),
    ("esp32", {"kind": "serial", "port": "1", "baud": 115200}, [], "flash pins"),
], ids=["esp8266", "wifi-without-password", "serial-path", "uart0", "esp32-uart1"])
def test_build_refuses_what_cannot_run_with_the_reason(tmp_path: Path, board: str, link: dict,
                                                       extra: list[str], reason: str) -> None:
    bundle = _bundle(tmp_path, "s1", link)
    out = tmp_path / "out"
    r = _flash("build", "--device", "s1", "--bundle", str(bundle), "--board", board,
               "--out", str(out), *extra, "--json")
    assert r.exit_code == 2, r.output
    doc = json.loads(r.stdout.splitlines()[0])
    assert reason in doc["error"] and doc["exit_code"] == 2
    assert not out.exists()


def test_build_names_the_usual_port_of_the_board(tmp_path: Path) -> None:
    serial = _bundle(tmp_path, "s2", {"kind": "serial", "port": "2", "baud": 115200})
    r = _flash("build", "--device", "s2", "--bundle", str(serial), "--board", "esp32",
               "--out", str(tmp_path / "esp"))
    assert r.exit_code == 0, r.output  # UART 2 on an ESP32 is fine
    assert "--port /dev/ttyUSB0" in r.output
    mqtt = _bundle(tmp_path, "s3", MQTT)
    r = _flash("build", "--device", "s3", "--bundle", str(mqtt), "--board", "rp2",
               "--out", str(tmp_path / "pico"))
    assert r.exit_code == 0, r.output
    assert "--port /dev/ttyACM0" in r.output and "--port auto" in r.output


def _fake_ports(monkeypatch: pytest.MonkeyPatch, devices: list[tuple[str, int | None]]) -> None:
    from serial.tools import list_ports

    monkeypatch.setattr(list_ports, "comports",
                        lambda: [SimpleNamespace(device=d, vid=v) for d, v in devices])


def test_port_auto_picks_the_only_board_and_refuses_none_or_two(monkeypatch) -> None:
    _fake_ports(monkeypatch, [("/dev/ttyS0", None), ("/dev/ttyACM0", 0x2E8A)])
    assert board_mod.resolve_port("auto") == "/dev/ttyACM0"
    _fake_ports(monkeypatch, [("/dev/ttyS0", None)])
    with pytest.raises(build_mod.FlashError, match="no board found") as e:
        board_mod.resolve_port("auto")
    assert e.value.exit_code == 2
    _fake_ports(monkeypatch, [("/dev/ttyUSB0", 0x10C4), ("/dev/ttyACM0", 0x2E8A)])
    with pytest.raises(build_mod.FlashError, match="2 boards found"):
        board_mod.resolve_port("auto")


def test_a_missing_port_lists_the_ports_that_exist(monkeypatch, tmp_path: Path) -> None:
    _fake_ports(monkeypatch, [("/dev/ttyACM0", 0x2E8A)])
    with pytest.raises(build_mod.FlashError) as e:
        board_mod.resolve_port(str(tmp_path / "ttyUSB0"))
    assert "does not exist" in str(e.value) and "/dev/ttyACM0" in str(e.value)


def test_monitor_shows_a_boards_events_until_ctrl_c(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "moteseal.cli.main", "flash", "monitor",
                             "--port", os.ttyname(slave)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        err = b""
        os.set_blocking(proc.stderr.fileno(), False)
        while b"monitoring" not in err and time.monotonic() < deadline:  # the port is open
            err += (proc.stderr.buffer.read1(1024) or b"") if proc.stderr else b""
            time.sleep(0.05)
        os.write(master, b'{"event": "handshake", "detail": 1}\r\nets Jun  8 2016 boot\r\n'
                         b'{"event": "sent", "detail": 2}\r\n')
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    lines = out.splitlines()
    assert proc.returncode == 0, (out, rest)
    assert "Traceback" not in out + rest
    assert [ln.split()[1] for ln in lines] == ["handshake", "|", "sent"], lines
    assert "ets Jun  8 2016 boot" in lines[1]


def test_monitor_of_a_missing_port_is_a_usage_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["flash", "monitor", "--port", str(tmp_path / "nosuch"), "--json"])
    assert r.exit_code == 2, r.output
    assert "does not exist" in json.loads(r.stdout.splitlines()[0])["error"]
