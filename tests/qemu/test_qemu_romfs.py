"""The recommended deploy mode for rp2/stm32, proven on the 32-bit target:
``moteseal flash build --romfs`` (armv7m, MQTT, SHA-256) puts the device's
``.mpy`` files in a ROMFS image; the qemu firmware serves it as a ROMFS
mount does on a board (``qemu/port/main.c``: ``MP_READER_IS_ROM``, bytecode
executed in place), and the whole device -- ``micropython_port/main.py``
with the default retention of 16 readings, its MQTT client, a DeviceSession
handshake and readings -- runs in a 64 KiB GC heap against a CPython peer
(``PeerListener``) through a real Mosquitto and ``moteseal gateway run``.

The firmware has no network or json (no extmod/ in the PyPI sdist):
``tests/qemu/uart_net/`` tunnels the MQTT client's TCP connection over the
console UART to the host (relayed here to Mosquitto). Its flash is the
port's RAM file system (``qemu/port/ramfs.c``, outside the GC heap), which
holds the bundle and the message-1 counter file (the real
``FileCounterStore``). Everything else is the build's code.
"""

from __future__ import annotations

import json
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

# The script the target runs: micropython_port/main.py's main(), as at boot
# (the bundle and the counter file on the port's RAM file system, written
# before the boot by ``_PROVISION``).
_MAIN = """{ballast}
import gc
import micropython_port.main as m
s = m.main(["main.py", "--count", "{count}", "--interval-ms", "0", "--drain-ms", "20000"])
gc.collect()
print("heap", gc.mem_alloc() + gc.mem_free(), gc.mem_free())
"""

# What ``moteseal flash`` puts on a board's flash beside the code: the
# bundle, and here the stored message-1 ceiling (FileCounterStore's file).
_PROVISION = """from binascii import unhexlify
open("moteseal.bundle", "wb").write(unhexlify({bundle!r}))
open("moteseal.ctr", "w").write("{counter}")
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


def _device_files(setup: Any, tmp_path: Path, romfs: bool, arch: str) -> list[tuple[str, bytes]]:
    """``moteseal flash build --arch ARCH`` (``--romfs``) of an MQTT,
    SHA-256 device of this broker, as the target's files. An armv6m build
    runs on the lane's ARMv6-M firmware (``run_device``), with the Thumb-1
    X25519 and AEAD an RP2040 runs."""
    broker, fleet, _ = setup
    bundle = tmp_path / "d.bundle"
    if not bundle.exists():
        write_bundle(bundle, Bundle(DEVICE.encode(), [(PEER.encode(), [fleet.pub])], fleet.psk,
                                    "Noise_NKpsk0_25519_ChaChaPoly_SHA256",
                                    {"kind": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                     "username": DEVICE, "password": broker.passwords[DEVICE]}))
    out = tmp_path / f"flash-{arch}{'-romfs' if romfs else ''}"
    m = build(bundle, out, arch, romfs=romfs, force=True)
    if romfs:
        # The image the build wrote is the same function's output for its files.
        assert (out / "romfs.img").read_bytes() == romfs_image(
            [(p, (out / p).read_bytes()) for p, _, _ in m.files if p.endswith(".mpy")])
    return _romfs_files(out, tmp_path)


def run_device(setup: Any, tmp_path: Path, heap_kb: int, romfs: bool, ballast_kb: int = 0,
               counter: int = 0, arch: str = "armv7m") -> tuple[str, str]:
    """The device's output lines (the relay's requests taken out) and
    traceback, on a firmware with a ``heap_kb`` heap of which ``ballast_kb``
    is taken first; ``counter`` is the stored message-1 ceiling it boots
    with (a second run in the same peer needs a higher one)."""
    import qemu_board
    import qemu_fw

    files = _device_files(setup, tmp_path, romfs, arch)
    # An armv6m build on the ARMv6-M (cortex-m0) firmware: native arch 4, as an RP2040.
    elf = qemu_fw.build(heap_kb=heap_kb, cpu="cortex-m0" if arch == "armv6m" else qemu_fw.CPU)
    relay = UartRelay()
    ballast = f"_ballast = [bytearray(1008) for _ in range({ballast_kb})]" if ballast_kb else ""
    code = _MAIN.format(count=READINGS, ballast=ballast)
    if arch == "armv6m":  # unaligned accesses fault, as on a Cortex-M0
        from tests.qemu.test_qemu_thumb1 import TRAP_UNALIGNED

        code = TRAP_UNALIGNED + code
    try:
        with qemu_board.Board(elf, files=files, romfs=romfs) as board:
            board.exec(_PROVISION.format(bundle=(tmp_path / "d.bundle").read_bytes().hex(),
                                         counter=counter))
            board.soft_reset()  # the files stay (flash); the heap is the boot's
            return board.exec_talk(code, relay, timeout=300)
    finally:
        relay.close()


def all_acked(out: str) -> bool:
    """Whether the run's summary says every reading was acknowledged (a
    reading resent after a slow acknowledgement is acknowledged twice)."""
    lines = [ln for ln in out.splitlines() if '"event": "summary"' in ln]
    return bool(lines) and json.loads(lines[-1])["acks"] >= READINGS


def smallest_heap_kb(setup: Any, tmp_path: Path, romfs: bool, arch: str = "armv7m") -> int:
    """The smallest heap (KiB) the whole device runs in (handshake,
    READINGS readings, all acknowledged): ballast of 1 KiB blocks taken
    first on the 256 KiB firmware, binary search, one qemu per try."""
    import qemu_fw

    total = qemu_fw.HEAP_KB
    # KiB of ballast taken as known to work (a 128 KiB heap) / to fail (32 KiB).
    lo, hi = total - 128, total - 32
    runs = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        runs += 1
        out, err = run_device(setup, tmp_path, total, romfs, mid, counter=1000 * runs, arch=arch)
        ok = not err and all_acked(out)
        lo, hi = (mid, hi) if ok else (lo, mid)
    return total - lo


def test_the_whole_device_runs_from_romfs_in_a_64k_heap(setup: Any, tmp_path: Path,
                                                         qemu_firmware: Path) -> None:
    peer = setup[2]
    out, err = run_device(setup, tmp_path, 64, romfs=True)
    assert not err, err + out
    lines = out.splitlines()
    assert lines[0] == "moteseal paths x25519=asm_thumb aead=asm_thumb"
    summary = [ln for ln in lines if '"event": "summary"' in ln]
    assert summary, out
    total, free = map(int, [ln for ln in lines if ln.startswith("heap ")][-1].split()[1:])
    assert total <= 64 * 1024
    assert wait_for(lambda: len(peer.telemetry()) == READINGS, timeout=20), peer.reports
    tele = peer.telemetry()
    assert [r["reading"]["seq"] for r in tele] == list(range(READINGS))
    assert tele[0]["via"] == "hs1" and {r["via"] for r in tele[1:]} == {"data"}
    assert all_acked(out) and json.loads(summary[-1])["handshakes"] == 1
    print(f"\nromfs, 64 KiB heap: {READINGS} readings acknowledged; {free} bytes free at the end")


def test_control_in_48k_the_device_runs_from_romfs_but_not_loaded_into_ram(setup: Any, tmp_path: Path,
                                                                          qemu_firmware: Path) -> None:
    # The same build and stand-ins from an MSF1 table: each .mpy is read
    # into the heap (a board's filesystem). Since the lean build shrank the
    # modules and the asm loops were rolled, that fits 64 KiB too (59 KiB,
    # the search below), so the control is 48 KiB, which the ROMFS image
    # still runs in (39 KiB).
    out, err = run_device(setup, tmp_path, 48, romfs=False)
    assert "MemoryError" in err + out, out
    out, err = run_device(setup, tmp_path, 48, romfs=True, counter=500)
    assert not err and all_acked(out), err + out


def test_smallest_heap_per_deploy_mode_on_the_32_bit_target(setup: Any, tmp_path: Path,
                                                            qemu_firmware: Path) -> None:
    rows = {mode: smallest_heap_kb(setup, tmp_path, mode == "ROMFS") for mode in ("RAM", "ROMFS")}
    print(f"\n32-bit target, whole MQTT/SHA-256 device (retention 16, {READINGS} readings): "
          f"smallest heap RAM-loaded .mpy {rows['RAM']} KiB, ROMFS {rows['ROMFS']} KiB")
    # ROMFS within the benchmark's 48 KiB (docs/micropython.md, "Memory"),
    # the same build loaded into RAM well above it.
    assert rows["ROMFS"] <= 48 < rows["RAM"]


def test_an_armv6m_build_runs_from_romfs_in_a_64k_heap(setup: Any, tmp_path: Path,
                                                       qemu_firmware: Path) -> None:
    # What an RP2040 runs: the armv6m build on the ARMv6-M firmware, with the
    # Thumb-1 X25519 and AEAD (1.6 + 1.8 KiB of .mpy; the viper ones, 31 KiB
    # of native code in the heap, needed 71 KiB): the whole device in 64 KiB.
    peer = setup[2]
    out, err = run_device(setup, tmp_path, 64, romfs=True, arch="armv6m")
    assert not err, err + out
    lines = out.splitlines()
    assert lines[0] == "moteseal paths x25519=asm_thumb1 aead=asm_thumb1"
    total, free = map(int, [ln for ln in lines if ln.startswith("heap ")][-1].split()[1:])
    assert total <= 64 * 1024
    assert wait_for(lambda: len(peer.telemetry()) == READINGS, timeout=20), peer.reports
    assert [r["reading"]["seq"] for r in peer.telemetry()] == list(range(READINGS))
    assert all_acked(out)
    print(f"\narmv6m from romfs, 64 KiB heap: {READINGS} readings acknowledged; {free} bytes free at the end")


def test_smallest_armv6m_heap_from_romfs(setup: Any, tmp_path: Path, qemu_firmware: Path) -> None:
    # Measured (binary search over ballast, as above), printed for the docs.
    kb = smallest_heap_kb(setup, tmp_path, True, arch="armv6m")
    print(f"\narmv6m (ARMv6-M firmware), whole MQTT/SHA-256 device: smallest heap from ROMFS {kb} KiB")
    assert kb <= 64
