"""Application updates at boot (docs/protocol.md, "Transfers"): apply a
staged application archive (``.stage``, received through
``micropython_port.update``) or roll back one that failed its trial.
``micropython_port/main.py`` calls ``boot()`` before it imports the
application; the application calls ``confirm()`` once it has reached its
peer (when its trial is over without that, the application restarts the
board: ``micropython_port/app.py`` Rule 8).

The archive: ``name_len u8 | path | size u32 | data``, repeated; a path is
relative, of plain names joined by "/", at most
``ARCHIVE_PATH_MAX_BYTES``.

Invariants:
- Rule 1: applying writes every file beside its target (``<path>.new``),
  records the trial (version and paths) in ``.xstate``, then renames the
  old file to ``<path>.old`` and the new one in. A boot that finds a trial
  not confirmed (the last boot failed, or gave up) rolls back: every
  ``.old`` goes back, files the update added go, and the version is
  recorded as ``bad`` (never applied again).
- Rule 2: ``confirm`` (the new application completed a handshake with
  its peer) removes the ``.old`` files and records the version.
- Rule 3: a damaged archive (a bad path, truncated) is not applied: the
  old application stays, the version is recorded as ``bad``.
"""

import os

from micropython_port.update_state import (_STAGE, _STATE, _exists, _remove, APP_NAME,
                                           read_state, write_state)

TRIAL_S = 120  # seconds a new application has to reach its peer (main.py --trial-s)
ARCHIVE_PATH_MAX_BYTES = 64  # a member's path in an application archive


class ArchiveError(ValueError):
    """The staged archive is damaged (Rule 3)."""


def _check_path(p):
    # A relative path of plain names (device.transfer.check_name's charset,
    # plus "/" between names): no "..", no absolute path, no state file.
    if not p or len(p) > ARCHIVE_PATH_MAX_BYTES or p[0] in "/." or "//" in p or p[-1] == "/":
        raise ArchiveError("archive path")
    for part in p.split("/"):
        if part in ("", ".", "..") or part[0] == ".":
            raise ArchiveError("archive path")
        for c in part:
            if c <= " " or c > "~" or c in "\\:":
                raise ArchiveError("archive path")


def _members(f):
    # (path, size) of each member of an open archive, leaving f at its data:
    # name_len u8 | path | size u32 | data, repeated.
    while True:
        h = f.read(1)
        if not h:
            return
        p = f.read(h[0]).decode()
        s = f.read(4)
        if len(s) != 4:
            raise ArchiveError("archive truncated")
        yield p, (s[0] << 24) | (s[1] << 16) | (s[2] << 8) | s[3]


def _mkdirs(p):
    i = p.find("/")
    while i > 0:
        d = p[:i]
        if not _exists(d):
            os.mkdir(d)
        i = p.find("/", i + 1)


def _rollback(st):
    version, paths = st.pop("trial")
    for p in paths:
        _remove(p + ".new")
        if _exists(p + ".old"):
            os.rename(p + ".old", p)
        else:
            _remove(p)  # a file the new application added
    st["bad"] = version  # never applied again (no rollback to it, Rule 3)
    st.pop("stage", None)
    write_state(st)


def _apply(st):
    paths = []
    buf = bytearray(256)
    try:
        with open(_STAGE, "rb") as f:
            for p, size in _members(f):
                _check_path(p)
                if size > (1 << 20):  # device.transfer's FILE_MAX_BYTES
                    raise ArchiveError("archive member")
                _mkdirs(p)
                paths.append(p)
                with open(p + ".new", "wb") as out:
                    while size:
                        k = f.readinto(memoryview(buf)[:min(size, 256)])
                        if not k:
                            raise ArchiveError("archive truncated")
                        out.write(memoryview(buf)[:k])
                        size -= k
    except Exception:
        for p in paths:  # Rule 3: nothing of a damaged archive stays
            _remove(p + ".new")
        raise
    st["trial"] = [st.pop("stage"), paths]
    write_state(st)  # from here on, a failed boot rolls back
    for p in paths:
        if _exists(p):
            os.rename(p, p + ".old")
        os.rename(p + ".new", p)
    _remove(_STAGE)


def boot():
    """At boot, before the application is imported (``main.py``): roll an
    unconfirmed trial back, or apply a staged application and start its
    trial. Returns ``"rolled_back"``, ``"trial"`` or None (nothing to do).
    A damaged archive is dropped (the old application stays)."""
    if not (_exists(_STATE) and (_exists(_STAGE) or "trial" in read_state())):
        return None
    st = read_state()
    if "trial" in st:
        _rollback(st)
        return "rolled_back"
    try:
        _apply(st)
    except (OSError, ValueError):
        st = read_state()
        if "trial" in st:
            _rollback(st)
        else:
            st["bad"] = st.pop("stage", -1)
            write_state(st)
        _remove(_STAGE)
        return "rolled_back"
    return "trial"


def confirm():
    """The new application reached its peer: keep it (Rule 2). Drops this
    module and the state module from ``sys.modules`` (they are needed once)."""
    import sys
    for m in ("micropython_port.app_update", "micropython_port.update_state"):
        sys.modules.pop(m, None)
    st = read_state()
    if "trial" not in st:
        return
    version, paths = st.pop("trial")
    for p in paths:
        _remove(p + ".old")
    st["v"][APP_NAME.decode()] = version
    write_state(st)
