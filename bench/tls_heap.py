"""Heap that mbedtls needs for one TLS 1.2 client handshake, as it would cost
on MicroPython's GC heap. Not a test (CI never runs it).

    python3 bench/tls_heap.py [--repeat N]

On rp2/stm32 mbedtls allocates from the MicroPython heap (``m_tracked_calloc``),
so its buffers count against a 64 KiB heap. This builds mbedtls with
MicroPython's configuration (``extmod/mbedtls/mbedtls_config_common.h``, taken
from the MicroPython source at run time) into ``bench/tls_heap/client.c``,
which counts every allocation as GC blocks (16-byte blocks, plus the 8-byte
tracked-alloc node), and handshakes with ``openssl s_server`` on 127.0.0.1
with a throwaway self-signed EC P-256 certificate. Two builds: MicroPython's
default record buffers (16 KiB in, 4 KiB out), and 2 KiB/2 KiB with the
``max_fragment_length`` extension.

Columns (bytes): peak during the handshake; held after ``ssl_setup`` (before
connecting); the largest single block; the mbedtls structs that
``modtls_mbedtls`` keeps in GC objects; total = peak + structs.

Sources: Debian trixie's ``mbedtls`` and ``micropython`` source packages,
fetched with ``apt-get source`` through a private apt configuration (only
deb-src, nothing installed) into ``~/.cache/moteseal/tls_heap`` and reused
(delete it to fetch trixie's current versions again; the first line printed
names them). Needs apt-get, gcc, openssl.

Caveat: the host is 64-bit, so the structs (and the pointers inside mbedtls's
allocations) are somewhat larger than on a 32-bit board; the record buffers,
which dominate, are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent / "tls_heap"
sys.path.insert(0, str(HERE.parents[1] / "qemu"))
import tls_sources  # noqa: E402  (qemu/: the fetch the lane's TLS firmware uses)

MP_CONFIG = "extmod/mbedtls/mbedtls_config_common.h"
CONFIGS = (("16K in/4K out (MicroPython default)", 0), ("2K/2K + max_fragment_length", 1))
COLUMNS = ("peak", "setup", "largest", "structs", "total")


cache_dir = tls_sources.cache_dir


def fetch_sources(cache: Path) -> tuple[Path, Path]:
    """The mbedtls source tree and MicroPython's config header, in the cache
    (the tarballs fetched by ``qemu/tls_sources.py``, which the qemu lane's
    TLS firmware is built from too)."""
    src = cache / "src"
    mbedtls = next(src.glob("mbedtls-*/library"), None)
    header = next(src.glob("micropython-*/mbedtls_config_common.h"), None)
    if mbedtls and header:
        return mbedtls.parent, header
    try:
        mbedtls_tar, mp_tar = tls_sources.fetch(cache)
    except tls_sources.FetchError as exc:
        sys.exit(f"tls_heap: {exc}")
    with tarfile.open(mbedtls_tar) as t:
        t.extractall(src, filter="data")
    with tarfile.open(mp_tar) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("/" + MP_CONFIG))
        header = src / member.name.split("/")[0] / "mbedtls_config_common.h"  # micropython-<version>/
        header.parent.mkdir(exist_ok=True)
        header.write_bytes(t.extractfile(member).read())
    return next(src.glob("mbedtls-*/library")).parent, header


def build(cache: Path, mbedtls: Path, header: Path, maxfrag: int, out: Path) -> Path:
    """The client for one configuration; the mbedtls library is built once per
    configuration and kept in the cache."""
    cfg_hash = hashlib.sha256(header.read_bytes() + (HERE / "config.h").read_bytes()).hexdigest()[:12]
    flags = ["-O2", "-I", str(mbedtls / "include"), "-I", str(HERE), "-I", str(header.parent),
             '-DMBEDTLS_CONFIG_FILE="config.h"', f"-DTLS_HEAP_MAXFRAG={maxfrag}"]
    lib = cache / "build" / f"{mbedtls.name}-{maxfrag}-{cfg_hash}" / "libmbedtls.a"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        sources = sorted((mbedtls / "library").glob("*.c"))

        def cc(c: Path) -> str:
            o = lib.parent / (c.stem + ".o")
            subprocess.run(["gcc", *flags, "-c", str(c), "-o", str(o)], check=True)
            return str(o)

        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            objects = list(pool.map(cc, sources))
        subprocess.run(["ar", "rcs", str(lib) + ".tmp", *objects], check=True)
        os.replace(str(lib) + ".tmp", lib)
    exe = out / f"client{maxfrag}"
    subprocess.run(["gcc", *flags, str(HERE / "client.c"), str(lib), "-o", str(exe)], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tls_server(tmp: Path) -> Iterator[int]:
    """``openssl s_server`` on a free loopback port, with a fresh P-256 key and
    self-signed certificate (CN=localhost) in ``tmp``; the key is never printed."""
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-days", "1"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER", "-out", str(tmp / "ca.der")],
                   check=True, capture_output=True)
    port = free_port()
    log = tmp / "server.log"
    with open(log, "wb") as out:  # stdin stays open: s_server quits at its end
        server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
                                   "-key", str(key)],
                                  stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while b"ACCEPT" not in log.read_bytes():
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"tls_heap: openssl s_server did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield port
    finally:
        server.kill()
        server.wait()


def handshake(exe: Path, port: int, ca: Path) -> dict[str, int | str]:
    r = subprocess.run([str(exe), str(port), str(ca)], capture_output=True, text=True, timeout=30)
    if r.returncode:
        sys.exit(f"tls_heap: {exe.name} failed: {r.stderr.strip()}")
    fields = dict(kv.split("=", 1) for kv in r.stdout.split())
    out: dict[str, int | str] = {k: (v if k in ("version", "suite") else int(v)) for k, v in fields.items()}
    out["total"] = out["peak"] + out["structs"]
    return out


def cell(values: list[int]) -> str:
    med = int(statistics.median(values))
    return f"{med}" if len(values) == 1 else f"{med} ±{(max(values) - min(values)) // 2}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="handshakes per configuration (median, ±half the range)")
    args = ap.parse_args()
    cache = cache_dir()
    mbedtls, header = fetch_sources(cache)
    with tempfile.TemporaryDirectory(prefix="tls_heap-") as tmp_name:
        tmp = Path(tmp_name)
        exes = [(name, build(cache, mbedtls, header, maxfrag, tmp)) for name, maxfrag in CONFIGS]
        with tls_server(tmp) as port:
            results = [(name, [handshake(exe, port, tmp / "ca.der") for _ in range(args.repeat)])
                       for name, exe in exes]
    first = results[0][1][0]
    print(f"{mbedtls.name} with {header.parent.name}'s {MP_CONFIG}, 64-bit host; "
          f"{first['version']} {first['suite']} against openssl s_server (EC P-256)")
    print("bytes as GC blocks" + (f", median of {args.repeat} ± half the range" if args.repeat > 1 else ""))
    width = max(len(name) for name, _ in results)
    print(f"{'config':<{width}}  " + "  ".join(f"{c:>12}" for c in COLUMNS))
    for name, runs in results:
        print(f"{name:<{width}}  " + "  ".join(f"{cell([r[c] for r in runs]):>12}" for c in COLUMNS))


if __name__ == "__main__":
    main()
