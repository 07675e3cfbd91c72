"""The flash build on the 32-bit target: ``moteseal flash build --arch armv7m``
writes the ``.mpy`` files a Cortex-M3 board gets, and the target (whose
firmware loads ``.mpy`` from its file table like a board from its
filesystem) runs them: the asm_thumb X25519 and AEAD from their ``.mpy`` machine code, a
full NKpsk0 handshake against CPython, transport messages both ways, and the
device's heap for each deploy mode (MQTT or serial link, SHA-256 or BLAKE2s),
printed for docs/micropython.md.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Iterator

import pytest

from moteseal.crypto.backend_nacl import NaclBackend
from moteseal.flash.build import build
from moteseal.keys.provision import Bundle, write_bundle
from device.noise import NKInitiator, NKResponder

PROLOGUE = b"moteseal/v1 qemu"
SHA = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
BLAKE = "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s"
MQTT = {"kind": "mqtt", "host": "10.0.0.2", "port": 1883, "username": "m", "password": "p"}
SERIAL = {"kind": "serial", "port": "/dev/ttyS1", "baud": 115200}
MODES = {"mqtt, SHA-256": (MQTT, SHA), "serial, SHA-256": (SERIAL, SHA), "serial, BLAKE2s": (SERIAL, BLAKE)}
# The qemu port has neither: stand-ins so that mqtt.mpy imports (its code is
# what is measured; nothing here opens a socket).
STUBS = [("socket.py", b"AF_INET = 2\nSOCK_STREAM = 1\n"), ("select.py", b"POLLIN = 1\nPOLLOUT = 4\n")]


def _flash(tmp: Path, link: dict, suite: str) -> list[tuple[str, bytes]]:
    b = NaclBackend()
    write_bundle(tmp / "d.bundle", Bundle(b"mote-1", [(b"hub", [b.generate_keypair()[1]])],
                                          b.random_bytes(32), suite, link))
    build(tmp / "d.bundle", tmp / "flash", "armv7m")
    return [(p.relative_to(tmp / "flash").as_posix(), p.read_bytes())
            for p in sorted((tmp / "flash").rglob("*.mpy"))]


@pytest.fixture(scope="module")
def flash_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, bytes]]]:
    return {mode: _flash(tmp_path_factory.mktemp("flash"), link, suite)
            for mode, (link, suite) in MODES.items()}


@pytest.fixture
def boards(qemu_firmware: Path) -> Iterator[Any]:
    import qemu_board

    opened: list[Any] = []

    def open_board(files: list[tuple[str, bytes]]) -> Any:
        b = qemu_board.Board(qemu_firmware, files=files + STUBS)
        opened.append(b)
        return b

    yield open_board
    for b in opened:
        b.close()


def _handshake(suite: str) -> tuple[bytes, bytes, bytes, bytes, bytes, list[bytes]]:
    """Keys, the initiator's fixed ephemeral, messages 1 and 2, and three
    transport messages from the responder (nonces 0, 1, 2)."""
    b = NaclBackend()
    priv, pub = b.generate_keypair()
    psk, e = b.random_bytes(32), b.random_bytes(32)
    b.fixed_ephemeral_key_for_testing_only = [e]
    init = NKInitiator(b, pub, psk, PROLOGUE, suite)
    msg1 = init.write_message(b"")
    resp = NKResponder(b, (priv, pub), psk, PROLOGUE, suite)
    resp.read_message(msg1)
    msg2 = resp.write_message(b"")
    t = resp.into_transport()
    return pub, psk, e, msg1, msg2, [t.encrypt(b"reply %d" % i) for i in range(3)]


_DEVICE = """
import gc, sys
gc.collect()
total = gc.mem_alloc() + gc.mem_free()
base = gc.mem_alloc()
{imports}
gc.collect()
code = gc.mem_alloc() - base
from device.noise import NKInitiator
from micropython_port.backend import MicroBackend, paths
U = bytes.fromhex
pub, psk, e, msg1, msg2 = [U(x) for x in {keys!r}]
replies = [U(x) for x in {replies!r}]
b = MicroBackend()
b.fixed_ephemeral_key_for_testing_only = [e]
hs = NKInitiator(b, pub, psk, {prologue!r}, {suite!r})
m1 = hs.write_message(b"")
hs.read_message(msg2)
t = hs.into_transport()
hs = None
pt = bytearray(32)
ct = bytearray(32 + 16)
for i in range(100):
    t.encrypt_into(b"h", 1, pt, 0, 32, ct, 0)
back = bytearray(16)
got = []
for r in replies:
    n = 0
    for i in range(8):
        n = (n << 8) | r[i]
    k = t.decrypt_into(n, b"", 0, r, 8, len(r) - 8, back, 0)
    got.append(bytes(back[:k]))
gc.collect()
print(repr((total, code, gc.mem_alloc() - base, m1 == msg1, got, t.send_nonce, paths(),
            sys.implementation._mpy >> 10)))
"""


def _imports(mode: str) -> str:
    link = ["micropython_port.mqtt", "micropython_port.mqtt_codec"] if mode.startswith("mqtt") \
        else ["micropython_port.uart_link", "device.framing"]
    mods = ["device.errors", "device.backend", "device.replay", "device.transport", "device.noise",
            "device.envelope", "device.counter", "device.counter_file", "device.session",
            "micropython_port.hashes", "micropython_port.x25519", "micropython_port.chacha20poly1305",
            "micropython_port.backend", "micropython_port.app"] + link
    if "BLAKE2s" in mode:
        mods.append("micropython_port.blake2s")
    return "import socket, select\ngc.collect()\nbase = gc.mem_alloc()\n" + \
        "\n".join(f"import {m}" for m in mods)


def _script(mode: str) -> tuple[str, list[bytes]]:
    suite = MODES[mode][1]
    pub, psk, e, msg1, msg2, replies = _handshake(suite)
    code = _DEVICE.format(imports=_imports(mode), keys=[x.hex() for x in (pub, psk, e, msg1, msg2)],
                          replies=[r.hex() for r in replies], prologue=PROLOGUE, suite=suite)
    return code, replies


def test_the_armv7m_flash_build_runs_the_device_on_the_target(flash_files, boards) -> None:
    files = flash_files["mqtt, SHA-256"]
    names = {n for n, _ in files}
    assert "micropython_port/_fe25519_thumb.mpy" in names and "micropython_port/_fe25519_viper.mpy" not in names
    assert "micropython_port/_chachapoly_thumb.mpy" in names
    assert not any(n.endswith(".py") for n in names)  # nothing but the build's .mpy
    code, _ = _script("mqtt, SHA-256")
    board = boards(files)
    got = ast.literal_eval(board.exec(code, timeout=120).strip().splitlines()[-1])
    _total, _code, _heap, same_msg1, replies, sent, paths, arch = got
    assert same_msg1 and replies == [b"reply 0", b"reply 1", b"reply 2"] and sent == 100
    # The Cortex-M3's MicroPython names its arch armv7em (6); it loads the armv7m .mpy.
    assert paths == "x25519=asm_thumb aead=asm_thumb" and arch == 6


def _smallest_heap(board: Any, code: str, total: int) -> int:
    """The smallest heap (KiB) the script runs in: ballast of 1 KiB blocks
    taken before it, binary search, a fresh interpreter for each try."""
    lo, hi = 0, total // 1024  # KiB of ballast known to work / to fail
    while hi - lo > 1:
        mid = (lo + hi) // 2
        board.soft_reset()
        try:
            board.exec(f"_ballast = [bytearray(1008) for _ in range({mid})]\n" + code, timeout=120)
            lo = mid
        except Exception:  # noqa: BLE001 - a MemoryError on the target
            hi = mid
    return total // 1024 - lo


def test_device_heap_per_deploy_mode_on_the_32_bit_target(flash_files, boards) -> None:
    rows = []
    for mode in MODES:
        code, _ = _script(mode)
        board = boards(flash_files[mode])
        total, code_b, heap_b, same, replies, sent, paths, _arch = ast.literal_eval(
            board.exec(code, timeout=120).strip().splitlines()[-1])
        assert same and sent == 100 and len(replies) == 3
        assert paths.startswith("x25519=asm_thumb aead=asm_thumb")
        rows.append((mode, code_b, heap_b, _smallest_heap(board, code, total)))
    print("\n32-bit target (armv7m .mpy), per deploy mode: code after import / resident after a "
          "handshake and 100 messages / smallest heap for that run")
    for mode, c, h, s in rows:
        print(f"  {mode:<16} {c / 1024:5.1f} KiB  {h / 1024:5.1f} KiB  {s:4d} KiB")
    # A BLAKE2s device carries the BLAKE2s modules on top of the same code.
    assert rows[2][1] > rows[1][1]
