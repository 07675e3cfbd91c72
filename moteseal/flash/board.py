"""Deploying a flash build to a board and checking it there (CPython only):
the scripts mpremote runs on the board, reading its answers, and ``deploy``.
The build itself is ``moteseal.flash.build``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

from moteseal.flash.build import ARCHES, FlashError, Manifest, verify_local  # noqa: F401

# --- the board side: scripts mpremote runs there (MicroPython) -------------

def board_info_script(shipped_mpy: Iterable[str], romfs: bool = False) -> str:
    """MicroPython source that prints ``mpy <sys.implementation._mpy>``, makes
    the package directories and removes every ``.py`` that would shadow a
    shipped ``.mpy`` (Rule 3), and any package ``__init__`` left by an older
    flash (builds ship none; an old one would still load and cost RAM),
    printing ``rm <path>`` for each. With ``romfs`` the ``.mpy`` files on the
    filesystem go too: they would shadow those in ``/rom``."""
    paths = sorted(shipped_mpy)
    dirs = sorted({p.rsplit("/", 1)[0] for p in paths if "/" in p})
    stale = [p[:-4] + ".py" for p in paths] + [
        f"{d}/__init__.{ext}" for d in dirs for ext in ("py", "mpy")] + (paths if romfs else [])
    return (
        "import os, sys\n"
        "print('mpy', getattr(sys.implementation, '_mpy', 0))\n"
        f"for d in {dirs!r}:\n"
        "    try:\n        os.mkdir(d)\n    except OSError:\n        pass\n"
        f"for p in {sorted(stale)!r}:\n"
        "    try:\n        os.remove(p)\n        print('rm', p)\n    except OSError:\n        pass\n"
    )


def hash_script(paths: Iterable[str]) -> str:
    """MicroPython source that prints ``H <path> <sha256 hex>`` per file
    (``M <path>`` if it is missing), reading in 512-byte blocks so a board
    needs no room for a whole file."""
    return (
        "import hashlib, binascii\n"
        "b = bytearray(512)\n"
        "m = memoryview(b)\n"
        f"for p in {sorted(paths)!r}:\n"
        "    try:\n"
        "        f = open(p, 'rb')\n"
        "    except OSError:\n"
        "        print('M', p)\n"
        "        continue\n"
        "    h = hashlib.sha256()\n"
        "    while True:\n"
        "        n = f.readinto(b)\n"
        "        if not n:\n"
        "            break\n"
        "        h.update(m[:n])\n"
        "    f.close()\n"
        "    print('H', p, binascii.hexlify(h.digest()).decode())\n"
    )


def parse_board_info(out: str) -> tuple[int, int, int, list[str]]:
    """``(major, sub, native_arch, removed)`` from ``board_info_script``
    output. Raises ``FlashError`` if the version line is missing."""
    value = None
    removed = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "mpy":
            try:
                value = int(parts[1])
            except ValueError:
                pass
        elif len(parts) == 2 and parts[0] == "rm":
            removed.append(parts[1])
    if value is None:
        raise FlashError("the board did not report its .mpy version (is it running MicroPython?)")
    # sys.implementation._mpy: bits 0-7 major, 8-9 sub-version, 10+ native arch.
    return value & 0xFF, (value >> 8) & 3, value >> 10, removed


def arch_loads(board_code: int, bundle_arch: str) -> bool:
    """Whether a board whose ``sys.implementation._mpy`` names native arch
    ``board_code`` loads .mpy native code built for ``bundle_arch``: the same
    arch, or on ARM an older Thumb one (py/persistentcode.h,
    MPY_FEATURE_ARCH_TEST: armv6m <= x <= the board's). A Cortex-M3's
    MicroPython names itself armv7em (it picks the arch from the compiler's
    __thumb2__ and FPU macros), and loads an armv7m build."""
    code = ARCHES[bundle_arch]
    lo, hi = ARCHES["armv6m"], ARCHES["armv7emdp"]
    if lo <= board_code <= hi:
        return lo <= code <= board_code
    return code == board_code


def check_board(manifest: Manifest, major: int, sub: int, arch_code: int) -> None:
    """Raises ``FlashError`` if the board cannot load the manifest's .mpy."""
    if (major, sub) != tuple(manifest.mpy):
        raise FlashError(f"the board loads .mpy v{major}.{sub}; this bundle is "
                         f"v{manifest.mpy[0]}.{manifest.mpy[1]}: use an mpy-cross that matches "
                         "the board's MicroPython, or update the firmware")
    if arch_code and not arch_loads(arch_code, manifest.arch):
        names = {v: k for k, v in ARCHES.items()}
        raise FlashError(f"the board's native architecture is {names.get(arch_code, arch_code)}; "
                         f"the bundle was built for {manifest.arch} (flash build --arch)")
    if not arch_code:
        raise FlashError("the board's MicroPython has no native emitter; the viper modules "
                         "cannot load there")


def parse_hashes(out: str) -> dict[str, str | None]:
    """``{path: sha256 hex or None (missing)}`` from ``hash_script`` output."""
    got: dict[str, str | None] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "H":
            got[parts[1]] = parts[2].lower()
        elif len(parts) == 2 and parts[0] == "M":
            got[parts[1]] = None
    return got


def compare_hashes(manifest: Manifest, got: dict[str, str | None]) -> list[str]:
    """Paths the board lacks, or holds with another SHA-256."""
    return [p for p, _, h in manifest.files if got.get(p) != h]


# --- mpremote ----------------------------------------------------------------

Runner = Callable[[list[str]], str]


def mpremote_argv(port: str, *command: str) -> list[str]:
    """``mpremote connect <port> resume <command...>``: ``resume`` keeps the
    board from soft-resetting (and starting main.py) between steps."""
    return [sys.executable, "-m", "mpremote", "connect", port, "resume", *command]


def run_mpremote(argv: list[str]) -> str:
    """Run one mpremote command; returns stdout. Raises ``FlashError``."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FlashError(f"mpremote failed: {exc}") from None
    if proc.returncode != 0:
        # argv[6] is the command (exec, fs); the script it ran is no news to anyone.
        raise FlashError(f"mpremote {' '.join(argv[4:7])} failed: "
                         f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def serial_ports() -> list[str]:
    """The serial ports present, USB ones (boards) first."""
    from serial.tools import list_ports

    ports = sorted(list_ports.comports(), key=lambda p: (p.vid is None, p.device))
    return [p.device for p in ports]


def resolve_port(port: str) -> str:
    """``port``, checked to exist and be usable, or with ``auto`` the one
    USB serial port present. Raises ``FlashError`` (exit 2) naming the
    ports there are and, for a permission problem, the dialout group."""
    from serial.tools import list_ports

    if port == "auto":
        boards = sorted(p.device for p in list_ports.comports() if p.vid is not None)
        if len(boards) == 1:
            return boards[0]
        if not boards:
            raise FlashError("--port auto: no board found (no USB serial port); plug it in with a "
                             "data cable, or give --port", 2)
        raise FlashError(f"--port auto: {len(boards)} boards found ({', '.join(boards)}); "
                         "pick one with --port", 2)
    if not os.path.exists(port):
        present = serial_ports()
        there = f"serial ports present: {', '.join(present)}" if present else "no serial port is present"
        raise FlashError(f"{port} does not exist ({there}); is the board plugged in?", 2)
    if not os.access(port, os.R_OK | os.W_OK):
        raise FlashError(f"{port}: permission denied; add your user to the dialout group "
                         "(sudo usermod -aG dialout $USER, then log in again)", 2)
    return port


def deploy(directory: Path, port: str, runner: Runner = run_mpremote,
           progress: Callable[[str, int], None] | None = None) -> Manifest:
    """Copy a flash directory to the board on ``port`` and verify it
    (Rule 3). ``progress(path, size)`` is called after each file. Raises
    ``FlashError`` naming every file that failed verification."""
    manifest = Manifest.load(directory)
    bad = verify_local(directory, manifest)
    if bad:
        raise FlashError(f"{directory}: changed since the build: {', '.join(bad)}; build again")
    mpys = [p for p, _, _ in manifest.files if p.endswith(".mpy")]
    major, sub, arch_code, _ = parse_board_info(
        runner(mpremote_argv(port, "exec", board_info_script(mpys, manifest.romfs is not None))))
    check_board(manifest, major, sub, arch_code)
    if manifest.romfs is not None:
        # The .mpy files go to the ROM partition in one image; /rom is on
        # the board's sys.path after the filesystem, whose copies the info
        # script removed.
        runner(mpremote_argv(port, "romfs", "deploy", str(directory / manifest.romfs[0])))
        if progress is not None:
            progress(manifest.romfs[0], manifest.romfs[1])
    for path, size, _ in manifest.files:
        if manifest.romfs is not None and path.endswith(".mpy"):
            continue
        runner(mpremote_argv(port, "fs", "cp", str(directory / path), ":" + path))
        if progress is not None:
            progress(path, size)
    where = {p: ("/rom/" + p if manifest.romfs is not None and p.endswith(".mpy") else p)
             for p, _, _ in manifest.files}
    on_board = parse_hashes(runner(mpremote_argv(port, "exec", hash_script(where.values()))))
    got = {p: on_board.get(w) for p, w in where.items()}
    wrong = compare_hashes(manifest, got)
    if wrong:
        raise FlashError(f"verification failed on the board for: {', '.join(wrong)}")
    return manifest
