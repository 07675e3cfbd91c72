"""The whole device WITH TLS on the 32-bit target, in the recommended deploy
mode (ROMFS): ``moteseal flash build --arch armv7m --romfs`` of a bundle
with the broker's CA (EC P-256) runs ``micropython_port/main.py`` on the
lane's TLS firmware (``qemu_fw.build(tls=True)``: MicroPython's ``tls`` on
mbedtls, configured as rp2/stm32 build it, so every mbedtls allocation is
on the GC heap), its MQTT connection tunnelled over the console UART
(``tests/qemu/uart_net/``) to a real Mosquitto TLS listener on loopback,
with ``moteseal gateway run`` and a CPython peer on the broker's plain
listener, as ``test_qemu_romfs.py`` does without TLS.

The tunnel carries the TLS records: the host only relays bytes, so the
handshake, the certificate check (chain, name, dates against the board's
RTC stand-in) and the encryption run on the target. mbedtls's entropy
there is the port's os.urandom, which is NOT a secure source (the board
has no TRNG; qemu/port/tls/mbedtls_port.c): the lane proves the code path
and its heap, not secrecy.

Skipped, with the reason, when the firmware cannot be built (a missing
tool, or the Debian sources cannot be fetched); a port that does not
compile is an error.
"""

from __future__ import annotations

import hashlib
import json
import select
import time
from pathlib import Path
from typing import Any

import pytest

from moteseal.flash.build import build
from moteseal.keys.provision import Bundle, write_bundle
from tests.micropython.test_mp_device import DEVICE, PEER, Fleet, Peer
from tests.micropython.test_mp_link_events import Pki, _tls_broker
from tests.qemu.test_qemu_romfs import _PROVISION, READINGS, UartRelay, _romfs_files, all_acked
from tests.serial_fixtures import wait_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(900)]

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
# test_qemu_romfs.py's run (main() as at boot, READINGS readings), bounded
# to 15 s of the target's clock (about 3 s of it when all goes well), so
# that a device that cannot connect in a small heap stops too.
_MAIN = """{ballast}
import gc
import micropython_port.main as m
s = m.main(["main.py", "--count", "{count}", "--interval-ms", "0", "--drain-ms", "10000",
            "--run-ms", "15000"])
gc.collect()
print("heap", gc.mem_alloc() + gc.mem_free(), gc.mem_free())
"""
# A failing device: three readings' worth of tries within 20 s of its clock.
_FAILING = """import micropython_port.main as m
m.main(["main.py", "--count", "3", "--interval-ms", "200", "--run-ms", "20000"])
"""


def tls_elf(heap_kb: int, record: int | None = None) -> Path:
    """The TLS firmware with a ``heap_kb`` heap (and ``record``-byte mbedtls
    record buffers, default ``qemu_fw.TLS_RECORD``); skips as the lane's
    ``qemu_firmware`` fixture does when it cannot be built."""
    import qemu_fw

    missing = qemu_fw.missing_tools()
    if missing:
        pytest.skip("qemu lane: missing " + ", ".join(missing)
                    + " (apt-get install " + " ".join(missing) + ")")
    try:
        return qemu_fw.build(heap_kb=heap_kb, tls=True,
                             tls_record=qemu_fw.TLS_RECORD if record is None else record)
    except qemu_fw.BuildError as exc:
        if "make failed" in str(exc):
            raise
        pytest.skip(f"qemu lane: TLS firmware cannot be built: {exc}")


@pytest.fixture(scope="module")
def tls_firmware() -> Path:
    """The TLS firmware with the lane's default (256 KiB) heap."""
    import qemu_fw

    return tls_elf(qemu_fw.HEAP_KB)


@pytest.fixture(scope="module")
def tls_firmware_64k() -> Path:
    """The TLS firmware with a 64 KiB heap, a board's."""
    return tls_elf(64)


@pytest.fixture
def record_firmware(record: int) -> Path:
    """The 256 KiB TLS firmware with ``record``-byte record buffers."""
    import qemu_fw

    return tls_elf(qemu_fw.HEAP_KB, record)


class TlsRelay(UartRelay):
    """``UartRelay`` that keeps every byte the target wrote (to show they
    are TLS records, never plain MQTT) and lets a read wait up to 20 ms for
    data (the handshake's reads otherwise spin over the UART). Not
    thread-safe (one board)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.writes: list[bytes] = []

    def __call__(self, line: bytes) -> bytes | None:
        if line.startswith(b"~W "):
            data = bytes.fromhex(line[3:].decode())
            self.sent += data
            self.writes.append(data)
        elif line.startswith(b"~R ") and self.sock is not None:
            select.select([self.sock], [], [], 0.02)
        return super().__call__(line)


@pytest.fixture
def setup(mosquitto: Any, gateway_process: Any, tmp_path: Path) -> Any:
    pki = Pki(tmp_path)
    broker, port, pki.server_der = _tls_broker(mosquitto, tmp_path, pki)
    gateway_process(broker)
    fleet = Fleet(tmp_path)
    peer = Peer(fleet, broker)
    try:
        yield broker, port, pki, fleet, peer
    finally:
        peer.close()


def _files(setup: Any, tmp_path: Path, tag: str = "ca") -> list[tuple[str, bytes]]:
    """``moteseal flash build --arch armv7m --romfs`` of a TLS device of
    this broker, as the target's files: with its CA (``tag`` "ca"),
    another CA ("other") or, without a CA, the pin of the broker's
    certificate ("pin")."""
    broker, port, pki, fleet, _ = setup
    if tag == "pin":
        trust = {"pin": hashlib.sha256(pki.server_der).digest()}
    else:
        trust = {"ca": pki.ca_der(other=tag == "other"), "server_name": "localhost"}
    bundle = tmp_path / f"{tag}.bundle"
    out = tmp_path / f"flash-tls-{tag}"
    if (out / "romfs.img").exists():  # built for an earlier run of this test
        return _romfs_files(out, tmp_path)
    write_bundle(bundle, Bundle(DEVICE.encode(), [(PEER.encode(), [fleet.pub])], fleet.psk, SUITE,
                                {"kind": "mqtt", "host": "127.0.0.1", "port": port,
                                 "username": DEVICE, "password": broker.passwords[DEVICE], **trust}))
    build(bundle, out, "armv7m", romfs=True, force=True)
    assert (out / "micropython_port" / "mqtt_tls.mpy").exists()  # the build kept the TLS wrap
    return _romfs_files(out, tmp_path)


def run_tls_device(setup: Any, tmp_path: Path, elf: Path, ballast_kb: int = 0, counter: int = 0,
                   tag: str = "ca", code: str | None = None,
                   rtc: int | None = None) -> tuple[str, str, TlsRelay]:
    """The device's output lines, traceback, and the relay (what it sent);
    ``rtc`` as ``qemu_board.Board`` takes it (default: the host's time)."""
    import qemu_board

    files = _files(setup, tmp_path, tag)
    relay = TlsRelay()
    ballast = f"_ballast = [bytearray(1008) for _ in range({ballast_kb})]" if ballast_kb else ""
    code = code or _MAIN.format(count=READINGS, ballast=ballast)
    bundle = (tmp_path / f"{tag}.bundle").read_bytes()
    try:
        with qemu_board.Board(elf, files=files, romfs=True, rtc=rtc) as board:
            board.exec(_PROVISION.format(bundle=bundle.hex(), counter=counter))
            board.soft_reset()  # the files stay (flash); the heap is the boot's
            out, err = board.exec_talk(code, relay, timeout=600)
            return out, err, relay
    finally:
        relay.close()


def _events(out: str) -> list[tuple[str, Any]]:
    evs = []
    for ln in out.splitlines():
        if ln.startswith("{"):
            e = json.loads(ln)
            evs.append((e["event"], e.get("detail")))
    return evs


def _only_tls_records(relay: TlsRelay, password: str) -> None:
    # Everything the target wrote is TLS records (content types 20-23,
    # version 3.x), never a plain MQTT CONNECT, and the password never
    # crosses in the clear.
    assert relay.writes, "the target wrote nothing"
    assert relay.writes[0][:2] == b"\x16\x03", relay.writes[0][:16]  # a ClientHello
    buf, off = bytes(relay.sent), 0
    while off < len(buf):
        assert buf[off] in (20, 21, 22, 23) and buf[off + 1] == 3, (off, buf[off:off + 8])
        off += 5 + int.from_bytes(buf[off + 3:off + 5], "big")
    assert off == len(buf)
    assert password.encode() not in buf


def test_the_whole_device_with_tls_runs_from_romfs_in_a_64k_heap(tls_firmware_64k: Path, setup: Any,
                                                                  tmp_path: Path) -> None:
    broker, _, _, _, peer = setup
    t0 = time.monotonic()
    out, err, relay = run_tls_device(setup, tmp_path, tls_firmware_64k)
    assert not err, err + out
    lines = out.splitlines()
    assert lines[0] == "moteseal paths x25519=asm_thumb aead=asm_thumb"
    total, free = map(int, [ln for ln in lines if ln.startswith("heap ")][-1].split()[1:])
    assert total <= 64 * 1024
    assert wait_for(lambda: len(peer.telemetry()) == READINGS, timeout=20), peer.reports
    tele = peer.telemetry()
    assert [r["reading"]["seq"] for r in tele] == list(range(READINGS))
    summary = json.loads([ln for ln in lines if '"event": "summary"' in ln][-1])
    assert all_acked(out) and summary["handshakes"] == 1
    assert not [e for e in _events(out) if e[0] in ("tls_failed", "connection_failed", "timeout")], out
    _only_tls_records(relay, broker.passwords[DEVICE])
    print(f"\nTLS from romfs, 64 KiB heap: {READINGS} readings acknowledged through Mosquitto's "
          f"TLS listener; {free} bytes free at the end; {len(relay.sent)} bytes of TLS records "
          f"sent; {time.monotonic() - t0:.0f} s")


def test_a_pinned_certificate_delivers_on_the_target(tls_firmware: Path, setup: Any,
                                                     tmp_path: Path) -> None:
    # A bundle with the pin of the broker's certificate and no CA
    # (mqtt_tls.wrap: verify_callback hashes the certificate on the target).
    broker, _, _, _, peer = setup
    out, err, relay = run_tls_device(setup, tmp_path, tls_firmware, tag="pin")
    assert not err, err + out
    assert all_acked(out), out
    assert wait_for(lambda: len(peer.telemetry()) == READINGS, timeout=20), peer.reports
    _only_tls_records(relay, broker.passwords[DEVICE])


@pytest.mark.parametrize("case, detail", [("wrong_ca", "untrusted"), ("unset_clock", "not_yet_valid")])
def test_a_refused_certificate_is_tls_failed_and_never_plain(tls_firmware: Path, setup: Any, tmp_path: Path,
                                                  case: str, detail: str) -> None:
    # wrong_ca: the bundle holds another CA. unset_clock: the right CA, but
    # the board's RTC was never set (2000-01-01), so the certificate is not
    # yet valid: the dates are checked on the target, against its clock.
    broker, _, _, _, peer = setup
    out, err, relay = run_tls_device(setup, tmp_path, tls_firmware,
                                     tag="other" if case == "wrong_ca" else "ca", code=_FAILING,
                                     rtc=0 if case == "unset_clock" else None)
    assert not err, err + out
    evs = [e for e in _events(out) if e[0] not in ("handshake_sent", "read_failed", "summary")]
    assert evs and evs[0] == ("tls_failed", detail), out
    # Every attempt failed the same way: no plain-TCP fallback (it would
    # show as not_mqtt or a CONNACK result) and nothing reached the peer.
    assert set(evs) == {("tls_failed", detail)}, out
    _only_tls_records(relay, broker.passwords[DEVICE])
    assert all(w[0] in (21, 22) for w in relay.writes)  # handshake and alerts only
    time.sleep(1)
    assert peer.telemetry() == []


@pytest.mark.parametrize("record", [2048, 512, 0])
def test_smallest_heap_with_tls_from_romfs(record_firmware: Path, setup: Any, tmp_path: Path,
                                           record: int) -> None:
    # Binary search over 1 KiB ballast blocks on the 256 KiB TLS firmware,
    # as test_qemu_romfs.smallest_heap_kb does without TLS. 512: the
    # smallest max_fragment_length (this test's one-certificate chain fits
    # it; a longer chain may not). record 0 is
    # the control: MicroPython's own mbedtls buffers (16 KiB in, 4 KiB out)
    # without max_fragment_length, which do not fit a 64 KiB heap.
    import qemu_fw

    elf = record_firmware
    total = qemu_fw.HEAP_KB
    lo, hi = total - 128, total - 40  # ballast known to work (128 KiB heap) / to fail (40 KiB)
    runs = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        runs += 1
        out, err, _ = run_tls_device(setup, tmp_path, elf, mid, counter=1000 * runs)
        ok = not err and all_acked(out)
        lo, hi = (mid, hi) if ok else (lo, mid)
    kb = total - lo
    what = f"{record} B records + max_fragment_length" if record else "MicroPython's 16 KiB/4 KiB records"
    print(f"\n32-bit target, whole MQTT/SHA-256 device with TLS (EC P-256 CA, mbedtls with {what}): "
          f"smallest heap from ROMFS {kb} KiB")
    if record:
        assert kb <= 64
    else:
        assert kb > 64


# The handshake's allocations fail on the target: the GC heap is filled
# with 64-byte blocks until less than LEFT bytes are free (the SSL socket
# objects fit or not, see the test), then the
# device's own TLS step (mqtt_tls.wrap) runs and its failure is named as
# the MQTT client names it (stage 2: TLS).
_OOM = """import gc
import socket
from micropython_port import mqtt_tls

class C:
    tls = ({ca!r}, None, "localhost")

s = socket.socket()
s.connect(("127.0.0.1", {port}))
gc.collect()
fill = []
try:
    while gc.mem_free() > {left}:
        fill.append(bytearray(48))
except MemoryError:
    pass
try:
    mqtt_tls.wrap(C(), s)
    print("wrapped")
except Exception as e:
    fill = None
    gc.collect()
    print("named", mqtt_tls.name_failure(2, e), repr(e))
"""


@pytest.mark.parametrize("left, raised", [(1500, "MemoryError"), (4000, "OSError(12")])
def test_no_heap_for_the_handshake_is_named_out_of_memory(tls_firmware: Path, setup: Any,
                                                          tmp_path: Path, left: int,
                                                          raised: str) -> None:
    # 1500 bytes: the SSLContext object (with mbedtls's entropy and DRBG
    # state in it) does not fit, MemoryError; 4000: it does, and
    # mbedtls_ssl_setup's record buffers do not (MBEDTLS_ERR_SSL_ALLOC_FAILED,
    # raised by the tls module as ENOMEM). Both are out_of_memory.
    import qemu_board

    _, port, pki, _, _ = setup
    files = _files(setup, tmp_path)
    relay = TlsRelay()
    try:
        with qemu_board.Board(tls_firmware, files=files, romfs=True) as board:
            out, err = board.exec_talk(_OOM.format(ca=pki.ca_der(), port=port, left=left), relay,
                                       timeout=120)
    finally:
        relay.close()
    assert not err, err + out
    named = [ln for ln in out.splitlines() if ln.startswith("named ")]
    assert named and named[0].startswith("named ('tls_failed', 'out_of_memory') " + raised), out
    assert not relay.writes  # nothing sent: the buffers were never there
