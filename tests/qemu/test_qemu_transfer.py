"""Issue 17's transfer on the 32-bit target: the device as boards run it
(``moteseal flash build --romfs``, armv7m, the ``.mpy`` bytecode in place)
in a 64 KiB GC heap receives a 100 KiB file from the real hub
(``Hub.push``; ``moteseal push`` for the refusal) through a real
Mosquitto and ``moteseal gateway run``, while the link (the gateway) is
cut twice and the device is rebooted once; the file arrives intact and is
swapped in once, and an older version is then refused with the installed
file untouched.

What the lane stands in for, and nothing else: the board's flash is the
port's RAM file system (``qemu/port/ramfs.c``, kept across the soft reset
that is the reboot here); its network, ``select`` and ``json`` are
``tests/qemu/uart_net/`` (the MQTT connection tunnelled over the UART;
the relay is ``test_qemu_romfs.UartRelay``). The bundle is written to the
file system before the first boot, as ``moteseal flash`` does, and the
message-1 counter is the real ``FileCounterStore`` on it. The reboot is
the reset button: the relay answers the device's next UART request with
``!``, the program stops there (``KeyboardInterrupt``, no ``finally`` in
the device loop), the interpreter is soft-reset and ``main()`` starts
again from what the file system holds.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from moteseal.flash.build import build
from moteseal.flash.features import parse_features
from tests.cli_fleet import run
from tests.hub_world import HubThread, cut_link, hub_fleet, telemetry, transfer_state
from tests.polling import wait_until
from tests.qemu.test_qemu_romfs import UartRelay, _romfs_files

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(900)]

DEVICE = "mote-1"
SIZE = 100 * 1024
HEAP_KB = 64

# A boot: micropython_port/main.py's main() as a board's main.py runs it
# (the bundle and counter on the file system), reporting its heap each
# reading through the read hook, so the test sees the least free heap.
_BOOT = """{ballast}
import gc
def _read(w):
    gc.collect()
    print("~H %d %d" % (gc.mem_alloc() + gc.mem_free(), gc.mem_free()))
import micropython_port.main as m
m.main(["main.py", "--interval-ms", "1000"], read=_read)
"""


class Relay(UartRelay):
    """``UartRelay`` plus the reset button (``press``: the device's next
    request is answered ``!``) and the heap lines. Not thread-safe beyond
    ``press`` from another thread (a flag)."""

    def __init__(self) -> None:
        super().__init__()
        self.reset = False
        self.heap: list[tuple[int, int]] = []

    def __call__(self, line: bytes) -> bytes | None:
        if line.startswith(b"~H "):
            total, free = map(int, line.split()[1:])
            self.heap.append((total, free))
            return b""
        if self.reset and line[:2] in (b"~C", b"~R", b"~P"):
            self.reset = False
            self.close()
            self.sock = None
            return b"!\n"
        return super().__call__(line)


class Target:
    """The qemu board and one boot of the device on it at a time (a thread
    runs ``exec_talk``). Not thread-safe: the test drives it."""

    def __init__(self, elf: Path, files: list[tuple[str, bytes]], bundle: bytes,
                 counter: int = 0, ballast_kb: int = 0) -> None:
        import qemu_board

        self.board = qemu_board.Board(elf, files=files, romfs=True)
        # Provisioning, as `moteseal flash` writes the bundle to flash; a
        # later qemu for the same hub boots with a higher message-1 ceiling.
        self.board.exec("from binascii import unhexlify\n"
                        f"open('moteseal.bundle', 'wb').write(unhexlify({bundle.hex()!r}))\n"
                        f"open('moteseal.ctr', 'w').write('{counter}')\n")
        self.ballast = f"_ballast = [bytearray(1008) for _ in range({ballast_kb})]" if ballast_kb else ""
        self.relay: Relay | None = None
        self.thread: threading.Thread | None = None
        self.result: tuple[str, str] = ("", "")
        self.boots: list[tuple[str, str, list[tuple[int, int]]]] = []

    def boot(self) -> None:
        self.board.soft_reset()
        self.relay = Relay()

        def go() -> None:
            try:
                self.result = self.board.exec_talk(_BOOT.format(ballast=self.ballast), self.relay,
                                                   timeout=900)
            except Exception as e:  # the test sees it in result
                self.result = ("", repr(e))

        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()

    def press_reset(self) -> tuple[str, str]:
        """The reset button: returns the boot's (output, traceback)."""
        assert self.relay is not None and self.thread is not None
        self.relay.reset = True
        self.thread.join(120)
        assert not self.thread.is_alive(), "the device did not stop at the reset"
        self.boots.append((*self.result, self.relay.heap))
        self.relay.close()
        return self.result

    def exec(self, code: str) -> str:
        return self.board.exec(code)

    def close(self) -> None:
        if self.relay is not None and self.thread is not None and self.thread.is_alive():
            self.relay.reset = True
            self.thread.join(30)
        self.board.close()
        if self.relay is not None:
            self.relay.close()


@pytest.fixture
def world(tmp_path: Path, mosquitto, gateway_process, qemu_firmware: Path):
    import qemu_fw

    env, gw, bundle = hub_fleet(tmp_path, mosquitto, gateway_process, DEVICE)
    flash = tmp_path / "flash"
    # Updates are a build feature (docs/micropython.md, "Flashing a board").
    build(bundle, flash, "armv7m", romfs=True, force=True, features=parse_features("default,updates"))
    files = _romfs_files(flash, tmp_path)
    target = Target(qemu_fw.build(heap_kb=HEAP_KB), files, bundle.read_bytes())
    ht = HubThread(tmp_path / "hub.toml")
    w = {"tmp": tmp_path, "env": env, "hub": ht.hub, "gw": gw, "reports": ht.reports, "target": target,
         "files": files, "bundle": bundle.read_bytes()}
    try:
        yield w
    finally:
        target.close()
        ht.close()


_CHECK = """import os, hashlib
def _sha(p):
    h = hashlib.sha256()
    b = bytearray(256)
    with open(p, "rb") as f:
        while True:
            k = f.readinto(b)
            if not k:
                break
            h.update(memoryview(b)[:k])
    return h.digest().hex()
def _size(p):
    try:
        return os.stat(p)[6]
    except OSError:
        return -1
print({names!r} and [(_size(p), _sha(p) if _size(p) >= 0 else "") for p in {names!r}])
"""


def _files(w, *names: str) -> list[tuple[int, str]]:
    """(size, SHA-256 hex) of each named file on the target (-1 if absent)."""
    out = w["target"].exec(_CHECK.format(names=list(names))).strip()
    return [tuple(x) for x in eval(out)]  # the target's own repr of a list of tuples


def test_a_100k_file_survives_two_link_cuts_and_a_reboot_in_a_64k_heap(world) -> None:
    w, target = world, world["target"]
    data = bytes((i * 131 + (i >> 9)) & 0xFF for i in range(SIZE))
    target.boot()
    assert wait_until(lambda: telemetry(w, DEVICE), 120), target.result
    t0 = time.monotonic()
    row = w["hub"].push(DEVICE, data, b"data.bin", version=3)
    assert wait_until(lambda: transfer_state(w, row).get("offset", 0) >= 20 * 1024,
                      300), transfer_state(w, row)
    cuts = [cut_link(w, row)]
    assert wait_until(lambda: transfer_state(w, row).get("offset", 0) >= 45 * 1024,
                      300), transfer_state(w, row)
    out, err = target.press_reset()  # the reboot: what the file system holds is the resume point
    assert "KeyboardInterrupt" in err and "Error" not in err.replace("KeyboardInterrupt", ""), err + out
    (held, _), (installed, _) = _files(w, ".part", "data.bin")
    assert 0 < held < SIZE and installed == -1, (held, installed)
    n = len(w["reports"])
    target.boot()
    assert wait_until(lambda: telemetry(w, DEVICE, n), 120), target.result
    resumed = (time.monotonic(), transfer_state(w, row)["offset"])
    assert wait_until(lambda: transfer_state(w, row).get("offset", 0) >= 75 * 1024,
                      300), transfer_state(w, row)
    cuts.append(cut_link(w, row))
    seg = (time.monotonic(), cuts[-1])
    assert all(c < SIZE for c in cuts), cuts  # both cuts fell inside the transfer
    assert wait_until(lambda: transfer_state(w, row).get("state") in ("installed", "refused", "timeout"),
                      300), transfer_state(w, row)
    elapsed = time.monotonic() - t0
    st = transfer_state(w, row)
    assert st["state"] == "installed" and st["offset"] == SIZE, st
    done = [r for r in w["reports"] if r["event"] == "transfer_installed"]
    assert len(done) == 1
    # Resumed, not restarted (as tests/e2e/test_transfer_mp.py bounds it).
    assert done[0]["pieces"] < -(-SIZE // 65) + 4 * 16 + 50, done[0]

    # An older version through `moteseal push`: refused, the file untouched.
    other = w["tmp"] / "other.bin"
    other.write_bytes(b"not this" * 100)
    r = run("push", DEVICE, str(other), "--as", "data.bin", "--version", "2", "--config",
            str(w["tmp"] / "hub.toml"), "--wait", "120", "--json", env=w["env"])
    assert r.returncode == 1, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert (got["state"], got["reason"]) == ("refused", "old_version"), got
    out, err = target.press_reset()
    assert "KeyboardInterrupt" in err, err + out
    assert _files(w, "data.bin", ".part", ".xfer") == [
        (SIZE, hashlib.sha256(data).hexdigest()), (-1, ""), (-1, "")]
    xstate = json.loads(target.exec("print(open('.xstate').read())").strip())
    assert xstate["v"] == {"data.bin": 3}
    # The message-1 counter came back from the file system at the reboot
    # (the hub took the second boot's handshake: telemetry above).
    assert int(target.exec("print(open('moteseal.ctr').read())").strip()) > 0

    heap = [h for _, _, hs in target.boots for h in hs]
    assert heap and max(t for t, _ in heap) <= HEAP_KB * 1024
    rate = (seg[1] - resumed[1]) / (seg[0] - resumed[0])
    print(f"\nqemu armv7m ROMFS, {HEAP_KB} KiB heap: {SIZE} B installed in {elapsed:.0f} s "
          f"(two cuts, a reboot); {rate / 1024:.2f} KiB/s between the reboot and the second cut; "
          f"least free heap at a reading {min(f for _, f in heap)} B; pieces sent {done[0]['pieces']}")


def _fits(w, ballast_kb: int, runs: int) -> bool:
    """Whether a 20 KiB transfer (pieces are streamed to the file system,
    so the heap does not grow with the file) is installed on the 256 KiB
    firmware with ``ballast_kb`` 1 KiB blocks taken first; one qemu."""
    import qemu_fw

    target = Target(qemu_fw.build(), w["files"], w["bundle"], counter=10000 * runs,
                    ballast_kb=ballast_kb)
    try:
        n = len(w["reports"])
        target.boot()
        if not wait_until(lambda: telemetry(w, DEVICE, n) or not target.thread.is_alive(), 120) \
                or not target.thread.is_alive():
            return False
        row = w["hub"].push(DEVICE, bytes(range(256)) * 80, b"f.bin", version=100 + runs)
        ok = wait_until(lambda: transfer_state(w, row).get("state") == "installed"
                        or not target.thread.is_alive(), 120)
        return ok and transfer_state(w, row).get("state") == "installed" and target.thread.is_alive()
    finally:
        target.close()


def test_smallest_heap_for_a_transfer_on_the_32_bit_target(world) -> None:
    # Binary search over ballast (as test_qemu_romfs.smallest_heap_kb): known
    # to fit in 64 KiB (the test above), taken as failing in 32 KiB. The
    # figure includes what the uart_net stand-ins allocate for a moment (a
    # hex line per read, up to 513 bytes), which a board's socket does not:
    # an upper bound by about that much.
    import qemu_fw

    world["target"].close()
    total = qemu_fw.HEAP_KB
    lo, hi = total - 64, total - 32
    runs = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        runs += 1
        lo, hi = (mid, hi) if _fits(world, mid, runs) else (lo, mid)
    kb = total - lo
    print(f"\nqemu armv7m ROMFS: smallest heap for a transfer (handshake, readings, 20 KiB "
          f"installed) {kb} KiB")
    assert kb <= 64
