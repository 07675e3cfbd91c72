"""Backing up and restoring a peer's registry without re-opening replay
(CPython only).

A registry's message-1 counters only go up; a backup holds older ones, so
after a restore every message 1 recorded since the backup would pass the
counter check again. Both directions therefore mark every device
*restored* (``moteseal.keys.registry``, table ``restored``): the peer then
holds a device's message-1 payload until the device confirms the session
with data, which a replayed message 1 never can (``device.peer`` Rule 6);
after that the stored counter is above anything the device sent before.

Invariants:
- ``backup`` writes a consistent copy (SQLite's online backup: a running
  peer may keep writing) to a new 0600 file, never over an existing one,
  and marks every device in the copy, so restoring it by any means (also
  by copying the file back while the peer is stopped) is safe.
- ``restore`` refuses a file that others may read, that is not a moteseal
  registry, or that belongs to another peer; it replaces the registry's
  contents through SQLite (a running peer sees the change at its next
  re-check and drops the sessions it no longer backs) and marks every
  device, so a backup made by plain file copy is safe to restore too.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from moteseal.keys.keyfile import check_private_mode
from moteseal.keys.records import RESTORED_DDL, SCHEMA_VERSION, RegistryError, RegistryRefusal, show_id
from moteseal.keys.registry import Registry

_MARK_ALL = "INSERT OR IGNORE INTO restored SELECT device_id FROM devices"


def backup(reg: Registry, out: str | os.PathLike[str]) -> int:
    """Copy ``reg`` to the new file ``out`` with every device marked
    restored; returns the number of devices. Raises ``FileExistsError``."""
    out = Path(out)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    dst = sqlite3.connect(out, isolation_level=None)
    try:
        with reg._lock:
            reg._db.backup(dst)
        dst.execute(RESTORED_DDL)
        dst.execute("BEGIN IMMEDIATE")
        dst.execute(_MARK_ALL)
        n = dst.execute("SELECT count(*) FROM devices").fetchone()[0]
        dst.execute("COMMIT")
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except BaseException:
        dst.close()
        out.unlink(missing_ok=True)
        raise
    dst.close()
    return int(n)


def restore(reg: Registry, src_path: str | os.PathLike[str]) -> int:
    """Replace ``reg``'s contents with the backup at ``src_path`` and mark
    every device restored; returns the number of devices.

    Raises ``RegistryError`` for a file that is not a moteseal registry,
    ``RegistryRefusal`` for another peer's registry, ``KeyPermissionError``
    for a file others may access, ``FileNotFoundError``.
    """
    check_private_mode(src_path)
    if not Path(src_path).is_file():
        raise FileNotFoundError(2, "no such file", str(src_path))
    src = sqlite3.connect(src_path, isolation_level=None)
    try:
        try:
            meta = dict(src.execute("SELECT k, v FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise RegistryError(f"{src_path}: not a moteseal registry ({e})") from None
        if meta.get("schema") != str(SCHEMA_VERSION) or "peer_id" not in meta:
            raise RegistryError(f"{src_path}: unsupported registry schema {meta.get('schema')!r}")
        if meta["peer_id"].encode("ascii") != reg.peer_id:
            raise RegistryRefusal(
                f"{src_path}: a backup of peer {show_id(meta['peer_id'].encode('ascii'))}, "
                f"not of {show_id(reg.peer_id)}"
            )
        with reg._lock:
            src.backup(reg._db)
            reg._db.execute(RESTORED_DDL)
            with reg._tx():
                reg._db.execute(_MARK_ALL)
                n = reg._db.execute("SELECT count(*) FROM devices").fetchone()[0]
            reg._keys.clear()
            reg._local_rev += 1
    finally:
        src.close()
    return int(n)
