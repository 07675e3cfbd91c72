"""Boot the moteseal MicroPython firmware under ``qemu-system-arm -M
mps2-an385`` and run code on it through the raw REPL's raw-paste mode.

The repository's ``device/`` and ``micropython_port/`` sources are packed into
a read-only file table (``pack_files``) that qemu loads into the board's PSRAM
at 0x21000000 before the CPU starts; the firmware's import hooks (see
``port/main.c``) serve ``import`` from it, so nothing but the script itself
crosses the emulated UART.

qemu is started with ``-icount shift=0``: one guest instruction is one
nanosecond of virtual time, so ``time.ticks_us()`` on the target counts
thousands of instructions, the same on every machine. The process dies with
its parent (``PR_SET_PDEATHSIG``) and ``Board.close`` kills and reaps it.

Usage (or ``python qemu/qemu_board.py SCRIPT.py``)::

    with Board(firmware_elf) as b:
        print(b.exec("import sys; print(sys.platform)"))
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
MSFS_ADDR = 0x21000000
# The RTC stand-in (port/tls/mbedtls_port.c): above the RAM file system.
RTC_ADDR = 0x21FFFFF8
MSFS_MAX = 0x00C00000  # the PSRAM's last 4 MiB are the RAM file system (port/ramfs.c)
# The device stack, plus the one host module that runs on MicroPython too: the
# conformance runner (docs/architecture.md).
PACKAGES = ("device", "micropython_port", "moteseal/conformance")
PACKAGE_FILES = ("moteseal/__init__.py",)


class BoardError(AssertionError):
    """qemu or the firmware misbehaved; the message holds what it printed."""


class TargetException(BoardError):
    """The code raised on the target; ``.stdout`` and ``.traceback`` hold
    what it printed."""

    def __init__(self, stdout: str, traceback: str) -> None:
        super().__init__(f"exception on the target:\n{traceback}\nstdout:\n{stdout}")
        self.stdout = stdout
        self.traceback = traceback


def qemu_binary() -> str | None:
    from shutil import which

    return os.environ.get("MOTESEAL_QEMU") or which("qemu-system-arm")


def repo_files(root: Path = ROOT, packages: Sequence[str] = PACKAGES) -> list[tuple[str, bytes]]:
    """(import path, source) of every ``.py`` under ``packages``."""
    out = []
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            out.append((p.relative_to(root).as_posix(), p.read_bytes()))
    if packages is PACKAGES:
        out += [(name, (root / name).read_bytes()) for name in PACKAGE_FILES]
    return out


def pack_files(files: Iterable[tuple[str, bytes]]) -> bytes:
    """The file table ``port/main.c`` reads: ``MSF1``, then per file
    ``u32 name_len, u32 data_len, name, data`` padded to 4, then a zero
    name_len."""
    out = bytearray(b"MSF1")
    for name, data in files:
        n = name.encode()
        rec = struct.pack("<II", len(n), len(data)) + n + data
        out += rec + b"\0" * (-len(rec) % 4)
    out += b"\0" * 8
    if len(out) > MSFS_MAX:
        raise ValueError(f"file table of {len(out)} bytes exceeds the {MSFS_MAX}-byte PSRAM")
    return bytes(out)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Board:
    """One qemu instance running the firmware, driven over its UART."""

    def __init__(
        self,
        firmware: str | Path,
        files: Iterable[tuple[str, bytes]] | None = None,
        boot_timeout: float = 30,
        extra_args: Sequence[str] = (),
        romfs: bool = False,
        rtc: int | None = None,
    ) -> None:
        """``files`` (import path, data) become the board's file table:
        an MSF1 table (``pack_files``; a ``.mpy`` is read into RAM), or
        with ``romfs`` a ROMFS image (``moteseal.flash.build.romfs_image``,
        the format of ``moteseal flash build --romfs``; a ``.mpy``'s
        bytecode then runs in place, as from a ROMFS mount on rp2/stm32).
        ``rtc``: the board's wall clock at power-on in seconds since 1970
        (default: the host's time, as if set by ntptime; 0: unset, reads
        2000-01-01), a word at ``RTC_ADDR`` that the TLS firmware's mbedtls
        reads for certificate dates (``port/tls/mbedtls_port.c``)."""
        qemu = qemu_binary()
        if not qemu:
            raise BoardError("qemu-system-arm not found (apt-get install qemu-system-arm)")
        self._tmp = tempfile.TemporaryDirectory(prefix="moteseal-qemu-")
        table = Path(self._tmp.name) / "files.bin"
        files = repo_files() if files is None else list(files)
        if romfs:
            from moteseal.flash.build import romfs_image

            image = romfs_image(files)
            if len(image) > MSFS_MAX:
                raise ValueError(f"ROMFS image of {len(image)} bytes exceeds the {MSFS_MAX}-byte PSRAM")
            table.write_bytes(image)
        else:
            table.write_bytes(pack_files(files))
        clock = int(time.time()) if rtc is None else rtc
        self.cmd = [
            qemu, "-M", "mps2-an385", "-cpu", "cortex-m3",
            "-display", "none", "-monitor", "none", "-nodefaults",
            "-chardev", "stdio,id=uart0,signal=off", "-serial", "chardev:uart0",
            "-semihosting", "-icount", "shift=0",
            "-device", f"loader,file={table},addr={MSFS_ADDR:#x},force-raw=on",
            "-device", f"loader,addr={RTC_ADDR:#x},data={clock},data-len=4",
            "-kernel", str(firmware),
            *extra_args,
        ]
        self._buf = bytearray()
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        try:
            self._enter_raw(boot_timeout)
        except BaseException:
            self.close()
            raise

    # --- low level -------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise BoardError(f"qemu exited ({self.proc.poll()}); output:\n{self._tail()}") from None

    def _tail(self) -> str:
        return bytes(self._buf[-2000:]).decode(errors="replace")

    def _fill(self, deadline: float) -> bool:
        """Read what qemu printed; False once the deadline passed."""
        assert self.proc.stdout is not None
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        fd = self.proc.stdout.fileno()
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise BoardError(f"qemu exited ({self.proc.wait()}); output:\n{self._tail()}")
            self._buf += chunk
        return True

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        """Consume and return everything up to and including ``marker``."""
        deadline = time.monotonic() + timeout
        while True:
            i = self._buf.find(marker)
            if i >= 0:
                out = bytes(self._buf[: i + len(marker)])
                del self._buf[: i + len(marker)]
                return out
            if not self._fill(deadline):
                raise BoardError(f"timed out after {timeout}s waiting for {marker!r}; output:\n{self._tail()}")

    def _read_n(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self._buf) < n:
            if not self._fill(deadline):
                raise BoardError(f"timed out after {timeout}s; output:\n{self._tail()}")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _enter_raw(self, timeout: float) -> None:
        self._read_until(b">>> ", timeout)
        self._write(b"\r\x03\x03\x01")  # interrupt anything, then ctrl-A: raw REPL
        self._read_until(b"raw REPL; CTRL-B to exit\r\n>", timeout)

    # --- API -------------------------------------------------------------

    def exec_raw(self, code: str | bytes, timeout: float = 120) -> tuple[str, str]:
        """Run ``code`` and return (stdout, traceback text or "")."""
        if isinstance(code, str):
            code = code.encode()
        self._paste(code, timeout)
        out = self._read_until(b"\x04", timeout)[:-1]
        err = self._read_until(b"\x04", timeout)[:-1]
        self._read_until(b">", timeout)
        return out.decode(errors="replace"), err.decode(errors="replace")

    def _paste(self, code: bytes, timeout: float) -> None:
        # Send ``code`` in raw-paste mode; returns once the target has
        # acknowledged its end (it is running then).
        self._write(b"\x05A\x01")  # ctrl-E A ctrl-A: ask for raw paste
        if self._read_n(2, 10) != b"R\x01":
            raise BoardError(f"raw-paste refused; output:\n{self._tail()}")
        window = struct.unpack("<H", self._read_n(2, 10))[0]
        room, i = window, 0
        while i < len(code):
            while room == 0 or self._buf:
                c = self._read_n(1, timeout)
                if c == b"\x01":
                    room += window
                elif c == b"\x04":  # the target ended the paste (e.g. a syntax error)
                    self._write(b"\x04")
                    i = len(code)
                    break
                else:
                    raise BoardError(f"unexpected {c!r} during raw paste; output:\n{self._tail()}")
            else:
                chunk = code[i : i + room]
                self._write(chunk)
                room -= len(chunk)
                i += len(chunk)
        self._write(b"\x04")
        self._read_until(b"\x04", 10)  # end of the paste acknowledged

    def exec_talk(self, code: str | bytes, answer: Callable[[bytes], bytes | None],
                  timeout: float = 120) -> tuple[str, str]:
        """Run ``code`` as ``exec_raw`` does, but call ``answer(line)`` for
        each line it prints (without the line end) as it comes; what
        ``answer`` returns is written to the target's stdin (the script
        reads it with ``sys.stdin``). Returns (the lines ``answer`` passed
        over, i.e. returned None for, joined; traceback text or "")."""
        if isinstance(code, str):
            code = code.encode()
        self._paste(code, timeout)
        deadline = time.monotonic() + timeout
        kept = []
        while True:
            end = self._buf.find(b"\x04")
            nl = self._buf.find(b"\n")
            if nl >= 0 and (end < 0 or nl < end):
                line = bytes(self._buf[:nl]).rstrip(b"\r")
                del self._buf[: nl + 1]
                reply = answer(line)
                if reply is None:
                    kept.append(line.decode(errors="replace"))
                else:
                    self._write(reply)
                continue
            if end >= 0:
                if end:
                    kept.append(bytes(self._buf[:end]).decode(errors="replace"))
                del self._buf[: end + 1]
                break
            if not self._fill(deadline):
                raise BoardError(f"timed out after {timeout}s; output:\n{self._tail()}")
        err = self._read_until(b"\x04", timeout)[:-1]
        self._read_until(b">", timeout)
        return "\n".join(kept), err.decode(errors="replace")

    def exec(self, code: str | bytes, timeout: float = 120) -> str:
        """Run ``code``; return its stdout or raise ``TargetException``."""
        out, err = self.exec_raw(code, timeout)
        if err:
            raise TargetException(out, err)
        return out

    def soft_reset(self, timeout: float = 30) -> None:
        """Ctrl-D at the raw prompt: a fresh interpreter (modules unloaded)."""
        self._write(b"\x04")
        self._read_until(b"soft reboot", timeout)
        self._read_until(b"raw REPL; CTRL-B to exit\r\n>", timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._tmp.cleanup()

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python qemu/qemu_board.py SCRIPT.py``: build (or take from the cache)
    the firmware, boot it with this checkout's device/ and micropython_port/,
    run the script and print its output; exit 1 if it raised."""
    import argparse
    import sys

    import qemu_fw

    ap = argparse.ArgumentParser(description="run a MicroPython script on the qemu Cortex-M3 target")
    ap.add_argument("script", help="a .py file, or - for standard input")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    code = sys.stdin.read() if args.script == "-" else Path(args.script).read_text()
    try:
        elf = qemu_fw.build()
    except qemu_fw.BuildError as exc:
        print(f"qemu_board: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    with Board(elf) as board:
        out, err = board.exec_raw(code, timeout=args.timeout)
    sys.stdout.write(out.replace("\r\n", "\n"))
    sys.stderr.write(err.replace("\r\n", "\n"))
    print(f"qemu_board: {time.monotonic() - t0:.2f}s wall", file=sys.stderr)
    return 1 if err else 0


if __name__ == "__main__":
    raise SystemExit(main())
