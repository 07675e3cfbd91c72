"""The MicroPython device vs the same operations on CPython, side by side in
one run, with ratios. Not a test: figures vary by machine.

    python3 bench/bench_mp_device.py [--quick] [--no-heap] [--no-qemu]

Prints:
- full Noise_NKpsk0 initiator handshake (write message 1, read message 2,
  split) in ms: ``MicroBackend`` on the MicroPython unix port vs
  ``NaclBackend`` on CPython; the same fixed ephemeral keys on both sides,
  so both produce the same message 1 (checked);
- one transport envelope, ``DeviceSession.send_into`` of a 32-byte reading
  (and ``receive_into`` of one from the peer), in us;
- whether the device's whole per-message path (reading, ``send_into``, MQTT
  slot, socket write, PUBACK through the parser) allocates: 50 messages
  under ``micropython.heap_lock()``;
- the smallest ``-X heapsize`` in which the whole device (``main.py`` from
  the built ``.mpy`` flash directory: core, port, MQTT link, one handshake,
  100 telemetry messages through real Mosquitto and ``moteseal gateway
  run`` to a CPython peer) completes, with its default retention (16
  readings) and without (``--retain 0``): binary search in 2 KiB steps;
- the ``.mpy`` flash directory size of an MQTT/SHA-256 device for the unix
  port (x64) and, compiled only, for an RP2040 (armv6m), a Cortex-M3/M4
  (armv7m) and an ESP32 (xtensawin), next to the size of the same modules
  as CPython source and to the size before issue 16 (the "before" column;
  goal 32 KiB for armv6m and armv7m);
- on the 32-bit target (our Cortex-M3 MicroPython under ``qemu-system-arm
  -icount shift=0``, see qemu/; skipped with ``--no-qemu`` or without the
  tools), guest instructions for one X25519 on each path (asm_thumb, viper,
  pure Python) and one ChaCha20-Poly1305 seal/open of 64 B and 1 KiB,
  beside the figures before the asm_thumb path (the "before" column).
  Instructions, not time: the same on every host;
- on the 32-bit target, the smallest heap the whole device needs in each
  deploy mode (``tests/qemu/test_qemu_romfs.py``: ``main.py`` of the armv7m
  MQTT/SHA-256 build, retention 16, a handshake and 20 readings acknowledged
  by a CPython peer through real Mosquitto): ``.mpy`` loaded into RAM and
  ROMFS (``flash build --romfs``, bytecode in place), beside the figures of
  issue 16's independent run. Frozen is not measured: the PyPI sdist has no
  ``tools/mpy-tool.py`` to freeze with.

The ratio is MicroPython time / CPython time (2.0x = half as fast).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from moteseal.crypto.backend_nacl import NaclBackend  # noqa: E402
from device.counter import Msg1Counter, NonpersistingCounterStore  # noqa: E402
from moteseal.flash.build import CORE_MODULES, build, source_dirs  # noqa: E402
from device.noise import NKInitiator, NKResponder  # noqa: E402
from device.session import DeviceSession  # noqa: E402
from device.peer import NonpersistingDirectory, PeerSessions  # noqa: E402
from tests.mp_helpers import mp_binary, run_mp_json  # noqa: E402

QUICK = "--quick" in sys.argv
SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
PROLOGUE = b"moteseal/v1 bench"

MP_BENCH = """
import json, time, gc, micropython
from binascii import unhexlify as U
from micropython_port.backend import MicroBackend
from device.noise import NKInitiator
from device.session import DeviceSession
from device.peer import PeerSessions, NonpersistingDirectory
from device.counter import Msg1Counter, NonpersistingCounterStore
pub, psk, e, msg1, msg2 = [U(x) for x in %r]
suite, prologue, n_hs, n_env = %r, %r, %d, %d
b = MicroBackend()

def handshake():
    b.fixed_ephemeral_key_for_testing_only = [e]
    hs = NKInitiator(b, pub, psk, prologue, suite)
    m1 = hs.write_message(b"")
    hs.read_message(msg2)
    hs.into_transport()
    return m1

same = handshake() == msg1
best = None
for _ in range(3):
    t0 = time.ticks_us()
    for _ in range(n_hs):
        handshake()
    dt = time.ticks_diff(time.ticks_us(), t0) / n_hs
    best = dt if best is None or dt < best else best
hs_ms = best / 1000

# A device session against an in-interpreter peer (the peer's work is untimed).
priv = b.random_bytes(32)
ppub = b.x25519_base(priv)
d = NonpersistingDirectory([(priv, ppub)])
d.add(b"mote-1", psk)
peer = PeerSessions(b, b"peer", d, suite)
dev = DeviceSession(b, b"mote-1", b"peer", ppub, psk, Msg1Counter(NonpersistingCounterStore()), suite)
dev.receive(peer.receive(dev.handshake(b"")).reply)
src = bytearray(32)
out = bytearray(128)
t0 = time.ticks_us()
for _ in range(n_env):
    dev.send_into(src, 32, out, 0)
enc_us = time.ticks_diff(time.ticks_us(), t0) / n_env
envs = [bytearray(peer.send(b"mote-1", bytes(32))) for _ in range(n_env)]
pt = bytearray(64)

def receive_all():
    # In a function: loop variables are locals, so a new global cannot
    # grow the module dict while the heap is locked.
    t0 = time.ticks_us()
    for i in range(n_env):
        x = envs[i]
        dev.receive_into(x, len(x), pt, 0)
    return time.ticks_diff(time.ticks_us(), t0)

gc.collect()
micropython.heap_lock()
try:
    dt = receive_all()
finally:
    micropython.heap_unlock()
dec_us = dt / n_env
print(json.dumps({"same_msg1": same, "hs_ms": hs_ms, "enc_us": enc_us, "dec_us": dec_us}))
"""


def cpython_figures(pub: bytes, psk: bytes, e: bytes, msg2: bytes, n_hs: int, n_env: int) -> dict:
    b = NaclBackend()

    def handshake() -> bytes:
        b.fixed_ephemeral_key_for_testing_only = [e]
        hs = NKInitiator(b, pub, psk, PROLOGUE, SUITE)
        m1 = hs.write_message(b"")
        hs.read_message(msg2)
        hs.into_transport()
        return m1

    best = min(_timed(handshake, n_hs) for _ in range(3))
    priv, ppub = b.generate_keypair()
    d = NonpersistingDirectory([(priv, ppub)])
    d.add(b"mote-1", psk)
    peer = PeerSessions(b, b"peer", d, SUITE)
    dev = DeviceSession(b, b"mote-1", b"peer", ppub, psk, Msg1Counter(NonpersistingCounterStore()), SUITE)
    dev.receive(peer.receive(dev.handshake(b"")).reply)
    src, out = bytearray(32), bytearray(128)
    enc = _timed(lambda: dev.send_into(src, 32, out, 0), n_env)
    envs = [bytearray(peer.send(b"mote-1", bytes(32))) for _ in range(n_env)]
    pt = bytearray(64)
    it = iter(envs)

    def dec() -> None:
        x = next(it)
        dev.receive_into(x, len(x), pt, 0)

    return {"hs_ms": best * 1000, "enc_us": enc * 1e6, "dec_us": _timed(dec, n_env) * 1e6}


def _timed(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def fixed_handshake() -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """Keys, a fixed initiator ephemeral, and the responder's message 2 for it."""
    b = NaclBackend()
    priv, pub = b.generate_keypair()
    psk = b.random_bytes(32)
    e = b.random_bytes(32)
    b.fixed_ephemeral_key_for_testing_only = [e]
    init = NKInitiator(b, pub, psk, PROLOGUE, SUITE)
    msg1 = init.write_message(b"")
    resp = NKResponder(b, (priv, pub), psk, PROLOGUE, SUITE)
    resp.read_message(msg1)
    msg2 = resp.write_message(b"")
    init.read_message(msg2)
    return pub, psk, e, msg1, msg2


# --- smallest heap ----------------------------------------------------------------


class DeviceRig:
    """Mosquitto, a gateway, a CPython peer and a built flash directory."""

    def __init__(self, root: Path) -> None:
        from moteseal.links.mqtt_link import MqttLink
        from moteseal.peer.listen import PeerListener
        from moteseal.keys.provision import Bundle, write_bundle
        from gateway.broker import LocalBroker
        from tests.conftest import GatewayProcess

        self.root = root
        self.broker = LocalBroker(root / "broker", auth=True)
        for user, role in (("gw", "gateway"), ("hub", "device"), ("mote-1", "device")):
            self.broker.add(user, role)
        self.broker.start()
        self.gw = GatewayProcess(self.broker, root / "gw").start()
        b = NaclBackend()
        priv, pub = b.generate_keypair()
        psk = b.random_bytes(32)
        self.bundle = root / "mote-1.bundle"
        write_bundle(self.bundle, Bundle(b"mote-1", [(b"hub", [pub])], psk, SUITE,
                                         {"kind": "mqtt", "host": "127.0.0.1", "port": self.broker.port,
                                          "username": "mote-1",
                                          "password": self.broker.passwords["mote-1"]}))
        d = NonpersistingDirectory([(priv, pub)])
        d.add(b"mote-1", psk)
        self.telemetry = 0
        self.link = MqttLink("hub", "127.0.0.1", self.broker.port, username="hub",
                             password=self.broker.passwords["hub"]).start()

        def count(r: dict) -> None:
            if r["event"] == "telemetry":
                self.telemetry += 1

        self.listener = PeerListener(PeerSessions(b, b"hub", d, SUITE), self.link, count)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.listener.run, args=(self.stop_ev,), daemon=True)
        self.thread.start()
        self.flash = root / "flash"
        build(self.bundle, self.flash, "x64")

    def runs_in(self, heap_k: int, *extra: str) -> bool:
        before = self.telemetry
        env = {"MICROPYPATH": f"{self.flash}:.frozen", "PATH": "/usr/bin:/bin"}
        p = subprocess.run([mp_binary(), "-X", f"heapsize={heap_k}k", str(self.flash / "main.py"),
                            "--bundle", str(self.bundle), "--state", str(self.root / "ctr"),
                            "--count", "101", "--interval-ms", "0", "--quiet", *extra],
                           capture_output=True, text=True, timeout=120, env=env, cwd=self.flash)
        if p.returncode != 0:
            return False
        summary = json.loads(p.stdout.splitlines()[-1])
        deadline = time.monotonic() + 5
        while self.telemetry - before < 101 and time.monotonic() < deadline:
            time.sleep(0.02)
        return summary["data"] == 100 and self.telemetry - before == 101

    def locked_messages(self) -> int:
        """Device messages (reading -> socket -> PUBACK) sent under
        heap_lock; the script fails with MemoryError at the first allocation."""
        from tests.micropython.test_mp_device import LOCKED_DEVICE

        script = self.root / "locked.py"
        script.write_text(LOCKED_DEVICE)
        before = self.telemetry
        env = {"MICROPYPATH": f"{self.flash}:.frozen", "PATH": "/usr/bin:/bin"}
        p = subprocess.run([mp_binary(), str(script), str(self.bundle), str(self.root / "ctr")],
                           capture_output=True, text=True, timeout=120, env=env, cwd=self.flash)
        if p.returncode != 0:
            return 0
        # Let the peer take all of this run's readings (a handshake + 53), so
        # none is counted in the heap search's runs that follow.
        deadline = time.monotonic() + 10
        while self.telemetry - before < 54 and time.monotonic() < deadline:
            time.sleep(0.02)
        return int(json.loads(p.stdout.splitlines()[-1])["locked"])

    def close(self) -> None:
        self.stop_ev.set()
        self.thread.join(5)
        self.link.close()
        self.gw.stop()
        self.broker.stop()


def smallest_heap_k(rig: DeviceRig, *extra: str, lo: int = 32, hi: int = 512) -> int:
    """Binary search (2 KiB steps) for the smallest heap the device run
    (``main.py`` with ``extra`` options) passes in."""
    if not rig.runs_in(hi, *extra):
        raise RuntimeError(f"the device does not run even in {hi} KiB")
    while hi - lo > 2:
        mid = (lo + hi) // 2 // 2 * 2
        if rig.runs_in(mid, *extra):
            hi = mid
        else:
            lo = mid
    return hi


# Flash bundle sizes (KiB) of an MQTT/SHA-256 device before issue 16 items 2/6
# (x64, armv6m, xtensawin: the figures; armv7m: the build at 6bb3432).
SIZE_BEFORE = {"x64": 92.8, "armv6m": 57.9, "armv7m": 53.0, "xtensawin": 67.3}
# Smallest heap (KiB) on the 32-bit target before: issue 16's independent run
# (RAM-loaded .mpy 69-70 KiB, ROMFS about 55 KiB, frozen about 24 KiB).
HEAP_BEFORE = {"RAM-loaded .mpy": 70, "ROMFS (execute in place)": 55,
               "ROMFS, armv6m build (RP2040)": 0}


def mpy_sizes(flash: Path, bundle: Path, root: Path) -> dict[str, int]:
    sizes = {"x64": sum(p.stat().st_size for p in flash.rglob("*") if p.is_file()
                        and p.name != "manifest.json")}
    for arch in ("armv6m", "armv7m", "xtensawin"):
        out = root / f"flash-{arch}"
        sizes[arch] = build(bundle, out, arch).total_bytes
    core, port = source_dirs()
    # The asm_thumb X25519 (60 KiB of generated source) ships to ARMv7-M only.
    src = [core / f"{m}.py" for m in CORE_MODULES] + [p for p in port.glob("*.py")
                                                       if p.name != "_fe25519_thumb.py"]
    sizes["cpython_source"] = sum(p.stat().st_size for p in src)
    return sizes


QEMU_BENCH = """
import time
import mp_primitive_hooks as T
from micropython_port import x25519 as X
from micropython_port.backend import MicroBackend
k = bytes(range(32))
out = {}
def instr(f, n):  # -icount shift=0: ticks_us = instructions / 1000
    f()
    t0 = time.ticks_us()
    for _ in range(n):
        f()
    return time.ticks_diff(time.ticks_us(), t0) * 1000 // n
for path in ("asm_thumb", "viper", "python"):
    T.force_x25519_path_for_testing_only(path)
    out["x25519_" + path] = instr(lambda: X.x25519_base(k), 1 if path == "python" else 3)
pub, psk, e, msg1, msg2 = [bytes.fromhex(x) for x in KEYS]
from device.noise import NKInitiator
b = MicroBackend()
def handshake():
    b.fixed_ephemeral_key_for_testing_only = [e]
    hs = NKInitiator(b, pub, psk, PROLOGUE, SUITE)
    assert hs.write_message(b"") == msg1
    hs.read_message(msg2)
    hs.into_transport()
T.force_x25519_path_for_testing_only(X_PATH)
out["handshake"] = instr(handshake, 2)
c = MicroBackend().cipher(k)
for size in (64, 1024):
    pt = bytearray(size)
    ct = bytearray(size + 16)
    back = bytearray(size)
    out["seal_%d" % size] = instr(lambda: c.encrypt_into(7, b"hdr", 3, pt, 0, size, ct, 0), 20)
    out["open_%d" % size] = instr(lambda: c.decrypt_into(7, b"hdr", 3, ct, 0, size + 16, back, 0), 20)
print(repr(out))
"""
# Guest instructions on the Cortex-M3 target before the asm_thumb X25519
# (the qemu lane's first figures).
QEMU_BEFORE = {"x25519_viper": 19.0e6, "x25519_python": 45.3e6, "seal_64": 51e3}


def qemu_figures() -> dict[str, int] | None:
    """Instruction counts on the qemu Cortex-M3 target, or None (and why)."""
    import ast

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "qemu"))
    import qemu_board
    import qemu_fw

    missing = qemu_fw.missing_tools()
    if missing:
        print(f"32-bit target skipped: missing {', '.join(missing)}")
        return None
    root = Path(__file__).resolve().parents[1]
    files = qemu_board.repo_files(root)
    files.append(("mp_primitive_hooks.py", (root / "tests" / "mp_primitive_hooks.py").read_bytes()))
    pub, psk, e, msg1, msg2 = fixed_handshake()
    head = (f"KEYS = {[x.hex() for x in (pub, psk, e, msg1, msg2)]!r}\n"
            f"PROLOGUE, SUITE = {PROLOGUE!r}, {SUITE!r}\n")
    with qemu_board.Board(qemu_fw.build(), files=files) as board:
        # The asm_thumb module first: compiling it from source needs room.
        board.exec("import micropython_port.x25519 as X\nX_PATH = X.PATH")
        out = board.exec(head + QEMU_BENCH, timeout=600)
    return ast.literal_eval(out.strip().splitlines()[-1])


def qemu_heap_figures(root: Path) -> dict[str, int] | None:
    """Smallest heap (KiB) of the whole device per deploy mode on the
    32-bit target, or None (and why)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "qemu"))
    import qemu_fw
    from gateway.broker import LocalBroker
    from tests.conftest import GatewayProcess
    from tests.micropython.test_mp_device import Fleet, Peer
    from tests.qemu.test_qemu_romfs import smallest_heap_kb

    missing = qemu_fw.missing_tools()
    if missing:
        print(f"32-bit target heap skipped: missing {', '.join(missing)}")
        return None
    broker = LocalBroker(root / "qbroker", auth=True)
    for user, role in (("gw", "gateway"), ("hub", "device"), ("mote-1", "device")):
        broker.add(user, role)
    broker.start()
    gw = GatewayProcess(broker, root / "qgw").start()
    fleet = Fleet(root)
    peer = Peer(fleet, broker)
    try:
        setup = (broker, fleet, peer)
        return {"RAM-loaded .mpy": smallest_heap_kb(setup, root, romfs=False),
                "ROMFS (execute in place)": smallest_heap_kb(setup, root, romfs=True),
                "ROMFS, armv6m build (RP2040)": smallest_heap_kb(setup, root, romfs=True,
                                                                 arch="armv6m")}
    finally:
        peer.close()
        gw.stop()
        broker.stop()


def print_qemu(q: dict[str, int]) -> None:
    print(f"\n{'32-bit target (Cortex-M3, qemu)':<40} {'instructions':>12} {'before':>12} {'ratio':>8}")
    rows = [("X25519, asm_thumb (default)", "x25519_asm_thumb", "x25519_viper"),
            ("X25519, viper", "x25519_viper", "x25519_viper"),
            ("X25519, pure Python", "x25519_python", "x25519_python"),
            ("NKpsk0 initiator handshake", "handshake", None),
            ("AEAD seal, 64 B", "seal_64", "seal_64"), ("AEAD open, 64 B", "open_64", None),
            ("AEAD seal, 1 KiB", "seal_1024", None), ("AEAD open, 1 KiB", "open_1024", None)]
    for name, key, ref in rows:
        v = q[key]
        fmt = (lambda x: f"{x / 1e6:>10.2f} M") if v > 1e6 else (lambda x: f"{x / 1e3:>10.1f} k")
        before = QEMU_BEFORE.get(ref) if ref else None
        tail = f"{fmt(before)} {v / before:>7.2f}x" if before else f"{'':>12} {'':>8}"
        print(f"{name:<40} {fmt(v)} {tail}")


def main() -> None:
    n_hs, n_env = (5, 500) if QUICK else (20, 3000)
    pub, psk, e, msg1, msg2 = fixed_handshake()
    mp = run_mp_json(MP_BENCH % ([x.hex() for x in (pub, psk, e, msg1, msg2)], SUITE, PROLOGUE,
                                 n_hs, n_env), timeout=600)
    cp = cpython_figures(pub, psk, e, msg2, n_hs * 20, n_env)
    rows = [
        ("NKpsk0 initiator handshake", "ms", mp["hs_ms"], cp["hs_ms"]),
        ("envelope encrypt, 32 B (send_into)", "us", mp["enc_us"], cp["enc_us"]),
        ("envelope decrypt, 32 B (receive_into)", "us", mp["dec_us"], cp["dec_us"]),
    ]
    print(f"{'operation':<40} {'MicroPython':>12} {'CPython':>12} {'ratio':>8}")
    for name, unit, m, c in rows:
        print(f"{name:<40} {m:>9.2f} {unit:<2} {c:>9.2f} {unit:<2} {m / c:>7.1f}x")
    print(f"same message 1 from both backends: {mp['same_msg1']}; "
          "receive_into ran under heap_lock (0 allocations)")
    root = Path(tempfile.mkdtemp(prefix="bench_mp_device_"))
    try:
        rig = None
        if "--no-heap" not in sys.argv:
            rig = DeviceRig(root)
            locked = rig.locked_messages()
            print(f"{'whole device, allocations per message':<40} {0 if locked == 50 else 'some':>9} "
                  f"   {'':>12} {'':>8}  ({locked}/50 messages over MQTT under heap_lock)")
            heap = smallest_heap_k(rig)
            print(f"{'smallest heap, whole device (.mpy, 101 msgs)':<40} {heap:>9d} KiB "
                  f"{'n/a':>12} {'':>8}  (retain 16; goal 48 KiB; 64-bit unix port)")
            heap0 = smallest_heap_k(rig, "--retain", "0")
            print(f"{'  the same without retention':<40} {heap0:>9d} KiB "
                  f"{'n/a':>12} {'':>8}  (--retain 0)")
            flash, bundle = rig.flash, rig.bundle
        else:
            from moteseal.keys.provision import Bundle, write_bundle
            b = NaclBackend()
            bundle = root / "d.bundle"
            write_bundle(bundle, Bundle(b"mote-1", [(b"hub", [b.generate_keypair()[1]])],
                                        b.random_bytes(32), SUITE,
                                        {"kind": "mqtt", "host": "127.0.0.1", "port": 1883}))
            flash = root / "flash"
            build(bundle, flash, "x64")
        sizes = mpy_sizes(flash, bundle, root)
        for arch in ("x64", "armv6m", "armv7m", "xtensawin"):
            print(f"{'flash bundle size, ' + arch:<40} {sizes[arch] / 1024:>8.1f} KiB "
                  f"{sizes['cpython_source'] / 1024:>8.1f} KiB {sizes[arch] / sizes['cpython_source']:>7.2f}x"
                  f"  (CPython column: the same modules as source; before {SIZE_BEFORE[arch]} KiB)")
        if rig is not None:
            rig.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if "--no-qemu" not in sys.argv:
        q = qemu_figures()
        if q is not None:
            print_qemu(q)
        if "--no-heap" not in sys.argv:
            root = Path(tempfile.mkdtemp(prefix="bench_mp_device_q_"))
            try:
                heaps = qemu_heap_figures(root)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            if heaps is not None:
                print(f"\n{'32-bit target, smallest heap':<40} {'KiB':>12} {'before':>12} {'ratio':>8}")
                for mode, kib in heaps.items():
                    ref = HEAP_BEFORE[mode]
                    print(f"{'whole device, ' + mode:<40} {kib:>12d} {ref or 'n/a':>12} "
                          + (f"{kib / ref:>7.2f}x" if ref else ""))
                print("  (MQTT/SHA-256 armv7m build unless named, retention 16, 20 readings acked; "
                      "frozen: not measurable, the PyPI sdist has no tools/mpy-tool.py)")


if __name__ == "__main__":
    main()
