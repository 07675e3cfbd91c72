"""The recommended deploy mode for rp2/stm32, proven on the 32-bit target:
``moteseal flash build --romfs`` (armv7m, MQTT, SHA-256) puts the device's
``.mpy`` files in a ROMFS image; the qemu firmware serves it as a ROMFS
mount does on a board (``qemu/port/main.c``: ``MP_READER_IS_ROM``, bytecode
executed in place), and the whole device -- ``micropython_port/main.py``
with the default retention of 16 readings, its MQTT client, a DeviceSession
handshake and readings -- runs in a 64 KiB GC heap against a CPython peer
(``PeerListener``) through a real Mosquitto and ``moteseal gateway run``.

The firmware has no network, filesystem or json (no extmod/ in the PyPI
sdist): ``tests/qemu/uart_net/`` tunnels the MQTT client's TCP connection
over the console UART to the host (relayed here to Mosquitto), the bundle
is handed to ``device.bundle.decode_bundle`` instead of read from a file,
and the message-1 counter lives in RAM. Everything else is the build's
code.
"""

from __future__ import annotations

import select
import socket
from pathlib import Path
from typing import Any

import pytest

from moteseal.flash.build import build, compile_module, romfs_image
from moteseal.keys.provision import Bundle, write_bundle
from tests.micropython.test_mp_device import DEVICE, PEER, Fleet, Peer
from tests.serial_fixtures import wait_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(600)]

HERE = Path(__file__).resolve().parent
READINGS = 20

# The script the target runs: micropython_port/main.py's main(), as at boot,
# with the two stand-ins a board does not need (its filesystem).
_MAIN = """
import gc, sys
from binascii import unhexlify
def _standins():
    import device.bundle as b
    import device.counter_file as cf
    data = unhexlify({bundle!r})
    def load(path):  # the board reads moteseal.bundle from its filesystem
        return b.decode_bundle(data)
    b.load_bundle = load
    class RamStore:  # the board's counter file
        def __init__(self, path):
            self.v = 0
        def load(self):
            return self.v
        def store(self, v):
            self.v = v
    cf.FileCounterStore = RamStore
_standins()
del _standins
import micropython_port.main as m
s = m.main(["main.py", "--count", "{count}", "--interval-ms", "0", "--drain-ms", "20000"])
gc.collect()
print("heap", gc.mem_alloc() + gc.mem_free(), gc.mem_free())
"""


class UartRelay:
    """The host end of ``uart_net``: answers the target's console requests
    with one TCP connection to the broker. Not thread-safe (one board)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.lines: list[str] = []

    def __call__(self, line: bytes) -> bytes | None:
        if not line.startswith(b"~"):
            return None  # the device's own output
        op, _, arg = line[1:].decode().partition(" ")
        if op == "C":
            host, port = arg.split()
            try:
                self.sock = socket.create_connection((host, int(port)), timeout=5)
                self.sock.setblocking(False)
                return b"1\n"
            except OSError:
                return b"0\n"
        assert self.sock is not None
        if op == "W":
            self.sock.setblocking(True)
            self.sock.sendall(bytes.fromhex(arg))
            self.sock.setblocking(False)
            return b""
        if op == "R":
            try:
                data = self.sock.recv(int(arg))
            except BlockingIOError:
                return b"-\n"
            return data.hex().encode() + b"\n"  # empty: the broker closed it
        if op == "P":
            r, _, _ = select.select([self.sock], [], [], min(int(arg), 50) / 1000)
            return b"1\n" if r else b"0\n"
        if op == "X":
            self.sock.close()
            self.sock = None
            return b""
        raise AssertionError(f"unknown request {line!r}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _romfs_files(flash: Path, tmp: Path) -> list[tuple[str, bytes]]:
    """The build's .mpy files plus the stand-ins (compiled too: their
    bytecode stays in ROM like the build's)."""
    files = [(p.relative_to(flash).as_posix(), p.read_bytes()) for p in sorted(flash.rglob("*.mpy"))]
    for name in ("socket", "select", "json"):
        compile_module(HERE / "uart_net" / f"{name}.py", tmp / f"{name}.mpy", "armv7m", f"{name}.py")
        files.append((f"{name}.mpy", (tmp / f"{name}.mpy").read_bytes()))
    return files


@pytest.fixture
def setup(mosquitto: Any, gateway_process: Any, tmp_path: Path) -> Any:
    broker = mosquitto(auth=True, accounts={"gw": "gateway", PEER: "device", DEVICE: "device"})
    gateway_process(broker)
    fleet = Fleet(tmp_path)
    peer = Peer(fleet, broker)
    try:
        yield broker, fleet, peer
    finally:
        peer.close()


def _run_device(setup: Any, tmp_path: Path, heap_kb: int, romfs: bool) -> tuple[Any, str, str]:
    import qemu_board
    import qemu_fw

    broker, fleet, peer = setup
    bundle = tmp_path / "d.bundle"
    write_bundle(bundle, Bundle(DEVICE.encode(), [(PEER.encode(), [fleet.pub])], fleet.psk,
                                "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                                {"kind": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                 "username": DEVICE, "password": broker.passwords[DEVICE]}))
    m = build(bundle, tmp_path / "flash", "armv7m", romfs=romfs)
    files = _romfs_files(tmp_path / "flash", tmp_path)
    if romfs:
        # The image the build wrote is the same function's output for its files.
        assert (tmp_path / "flash" / "romfs.img").read_bytes() == romfs_image(
            [(p, (tmp_path / "flash" / p).read_bytes()) for p, _, _ in m.files if p.endswith(".mpy")])
    elf = qemu_fw.build(heap_kb=heap_kb)
    relay = UartRelay()
    code = _MAIN.format(bundle=bundle.read_bytes().hex(), count=READINGS)
    try:
        with qemu_board.Board(elf, files=files, romfs=romfs) as board:
            out, err = board.exec_talk(code, relay, timeout=300)
    finally:
        relay.close()
    return peer, out, err


def test_the_whole_device_runs_from_romfs_in_a_64k_heap(setup: Any, tmp_path: Path,
                                                         qemu_firmware: Path) -> None:
    peer, out, err = _run_device(setup, tmp_path, 64, romfs=True)
    assert not err, err + out
    lines = out.splitlines()
    assert lines[0] == "moteseal paths x25519=asm_thumb aead=viper"
    summary = [ln for ln in lines if '"event": "summary"' in ln]
    assert summary, out
    total, free = map(int, [ln for ln in lines if ln.startswith("heap ")][-1].split()[1:])
    assert total <= 64 * 1024
    assert wait_for(lambda: len(peer.telemetry()) == READINGS, timeout=20), peer.reports
    tele = peer.telemetry()
    assert [r["reading"]["seq"] for r in tele] == list(range(READINGS))
    assert tele[0]["via"] == "hs1" and {r["via"] for r in tele[1:]} == {"data"}
    assert '"acks": %d' % READINGS in summary[-1] or '"acks": ' in summary[-1]
    print(f"\nromfs, 64 KiB heap: {READINGS} readings acknowledged; {free} bytes free at the end")


def test_control_the_same_device_loaded_into_ram_does_not_fit_64k(setup: Any, tmp_path: Path,
                                                                  qemu_firmware: Path) -> None:
    # The same build and stand-ins from an MSF1 table: each .mpy is read
    # into the heap (a board's filesystem), and 64 KiB is not enough.
    _, out, err = _run_device(setup, tmp_path, 64, romfs=False)
    assert "MemoryError" in err + out, out
