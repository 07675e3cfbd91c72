"""The sources of the qemu lane's TLS firmware (``qemu_fw.build(tls=True)``)
and of ``bench/tls_heap.py``: Debian trixie's ``mbedtls`` and
``micropython`` source packages, fetched with ``apt-get source
--download-only`` through a private apt configuration (deb-src only, its
own lists and cache; nothing is installed and the system's apt state is not
touched), into ``~/.cache/moteseal/tls_heap/src`` (``$XDG_CACHE_HOME``
honoured), and reused from there.

What is taken from them (``extract_into``):

- ``mbedtls-<v>/include`` and ``library`` (``mbedtls_<v>.orig.tar.bz2``),
  as ``lib/mbedtls`` of the firmware's source tree, where MicroPython's
  ``extmod/extmod.mk`` expects its submodule;
- from ``micropython_<v>+ds.orig.tar.xz`` (the Debian tarball has
  ``extmod/`` but an empty ``lib/mbedtls``): ``extmod/modtls_mbedtls.c``
  (the ``tls`` module), ``extmod/mbedtls/mbedtls_config_common.h`` (the
  configuration every MicroPython port includes), ``extmod/vfs.h`` (a header
  the module includes) and ``lib/mbedtls_errors/mp_mbedtls_errors.c``
  (mbedtls's error strings, MicroPython's compact table).

Deleting the cache fetches trixie's current versions again; the firmware's
cache key hashes the tarballs (``digest``), so a new version is a new build.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

DEB_SRC = "deb-src http://deb.debian.org/debian trixie main\n"
MP_FILES = ("extmod/modtls_mbedtls.c", "extmod/mbedtls/mbedtls_config_common.h", "extmod/vfs.h",
            "lib/mbedtls_errors/mp_mbedtls_errors.c")


class FetchError(RuntimeError):
    """The sources could not be fetched (no network, no apt-get, no such
    package); the message says which step failed."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moteseal" / "tls_heap"


def _tarballs(src: Path) -> tuple[Path, Path] | None:
    def tars(pattern: str) -> list[Path]:
        return sorted(p for p in src.glob(pattern) if p.suffix in (".gz", ".bz2", ".xz"))

    mbedtls = tars("mbedtls_*.orig.tar.*")
    mp = tars("micropython_*.orig.tar.*")
    return (mbedtls[-1], mp[-1]) if mbedtls and mp else None


def fetch(cache: Path | None = None) -> tuple[Path, Path]:
    """(mbedtls tarball, micropython tarball), from the cache or fetched
    now through apt (raises ``FetchError``)."""
    cache = cache or cache_dir()
    src = cache / "src"
    got = _tarballs(src) if src.is_dir() else None
    if got:
        return got
    apt = cache / "apt"
    for d in (apt / "lists" / "partial", apt / "cache", apt / "parts", src):
        d.mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(DEB_SRC)
    opts = ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={apt / 'parts'}",
            "-o", f"Dir::State::Lists={apt / 'lists'}",
            "-o", f"Dir::Cache={apt / 'cache'}"]
    for cmd in (["update", "--error-on=any"], ["source", "--download-only", "mbedtls", "micropython"]):
        try:
            r = subprocess.run(["apt-get", *opts, "-q", *cmd], cwd=src, capture_output=True, text=True,
                               timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FetchError(f"apt-get {cmd[0]}: {exc}") from None
        if r.returncode:
            raise FetchError(f"cannot fetch the TLS sources through apt ({DEB_SRC.strip()}): "
                             f"'apt-get {cmd[0]}' failed:\n{(r.stderr.strip() or r.stdout.strip())[-2000:]}")
    got = _tarballs(src)
    if not got:
        raise FetchError(f"apt-get source left no mbedtls/micropython .orig tarball in {src}")
    return got


def digest(tarballs: tuple[Path, Path]) -> str:
    """SHA-256 over both tarballs' names and contents (kept beside each
    tarball in ``<name>.sha256`` after the first time)."""
    h = hashlib.sha256()
    for t in tarballs:
        side = t.with_name(t.name + ".sha256")
        if side.exists() and side.stat().st_mtime >= t.stat().st_mtime:
            d = side.read_text().strip()
        else:
            d = hashlib.sha256(t.read_bytes()).hexdigest()
            side.write_text(d + "\n")
        h.update(f"{t.name} {d}\n".encode())
    return h.hexdigest()


def _safe(name: str) -> bool:
    return not name.startswith("/") and ".." not in Path(name).parts


def extract_into(tarballs: tuple[Path, Path], mptop: Path) -> str:
    """Puts mbedtls's ``include/`` and ``library/`` at ``mptop/lib/mbedtls``
    and ``MP_FILES`` at their paths in ``mptop``; returns the versions
    (e.g. ``mbedtls-3.6.6 + micropython-1.25.0``)."""
    mbedtls_tar, mp_tar = tarballs
    with tarfile.open(mbedtls_tar) as tf:
        top = ""
        for m in tf:
            parts = m.name.split("/", 2)
            top = top or parts[0]
            if len(parts) < 3 or parts[1] not in ("include", "library") or not _safe(m.name):
                continue
            if m.isfile():
                dest = mptop / "lib" / "mbedtls" / parts[1] / parts[2]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tf.extractfile(m).read())
    with tarfile.open(mp_tar) as tf:
        mp_top, found = "", set()
        for m in tf:
            head, _, rel = m.name.partition("/")
            if rel in MP_FILES and m.isfile():
                mp_top = head
                dest = mptop / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tf.extractfile(m).read())
                found.add(rel)
                if len(found) == len(MP_FILES):
                    break
    missing = set(MP_FILES) - found
    if missing:
        raise FetchError(f"{mp_tar.name} lacks {', '.join(sorted(missing))}")
    return f"{top} + {mp_top}"
