"""Transfers on flash (docs/protocol.md, "Transfers"): the storage behind
``device.transfer.Receiver``, the device's status buffer, and the boot
step that applies a staged application update or rolls a failed one back.

Files, in the device's working directory (a board's root):
- ``.part``: the file being received, written piece by piece as it comes.
- ``.xfer``: the manifest of the transfer in flight (its frame, 47-63
  bytes), written once when it starts.
- ``.xstate``: JSON ``{"v": {name: version}, "t": tid, "s": state}`` (the
  installed versions and the last finished transfer) plus, during an
  application trial, ``"trial": [version, [paths]]``; replaced atomically
  (written beside, renamed).
- ``.stage``: a verified application archive waiting for the next boot.
- ``<path>.old`` / ``<path>.new``: an application's previous and next
  files while it is on trial.

Invariants:
- Rule 1: never the whole file in RAM: each piece is appended to ``.part``
  and flushed; after a reboot the bytes in ``.part`` are the resume point
  and are re-hashed from flash (``rehash``, through a 256-byte buffer).
- Rule 2: a file is swapped in with one ``os.rename`` of ``.part`` over
  it, only after the receiver checked the SHA-256; the installed file is
  never opened for writing.
- Rule 3: an application (``F_APP``) is only staged; ``boot()`` applies it
  at the next boot (each file written beside as ``.new``, the old one
  kept as ``.old``, then renamed in) and puts it on trial. The trial ends
  well when the new application completes a handshake with its peer
  (``confirm``: the ``.old`` files go, the version is recorded); if it
  does not within ``TRIAL_S`` (``give_up`` resets the board) or the boot
  fails, the next ``boot()`` puts every ``.old`` file back.
- Rule 4: nothing here logs file contents.
"""

import json
import os

from device.errors import StorageError
from device.transfer import (F_APP, FILE_MAX_BYTES, ST_IDLE, ST_INSTALLED, ST_STAGED,
                             STATUS_BYTES, Receiver, encode_manifest, parse_manifest)

_PART = ".part"
_MAN = ".xfer"
_STATE = ".xstate"
_STAGE = ".stage"
APP_NAME = b"app"  # the manifest name of an application archive
TRIAL_S = 120  # seconds a new application has to reach its peer
ARCHIVE_PATH_MAX_BYTES = 64  # a member's path in an application archive


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


def read_state():
    """The parsed ``.xstate`` (an empty one if absent or damaged)."""
    try:
        with open(_STATE) as f:
            st = json.load(f)
        if isinstance(st, dict):
            return st
    except (OSError, ValueError):
        pass
    return {"v": {}, "t": -1, "s": ST_IDLE}


def write_state(st):
    """Replaces ``.xstate`` atomically (Rule 2). Raises ``StorageError``."""
    try:
        with open(_STATE + ".tmp", "w") as f:
            json.dump(st, f)
        os.rename(_STATE + ".tmp", _STATE)
    except OSError:
        raise StorageError("transfer state")


class FileStore:
    """``device.transfer``'s store on the device's file system (Rules 1-2).
    ``room`` is the largest file it accepts. Not thread-safe (the device
    loop owns it)."""

    def __init__(self, room=FILE_MAX_BYTES):
        self._room = room
        self._f = None
        self._man = None
        self._st = read_state()

    def load(self):
        if self._man is None:
            try:
                with open(_MAN, "rb") as f:
                    b = f.read()
                self._man = parse_manifest(b, len(b))
            except Exception:  # absent or damaged: no transfer in flight
                self._man = None
                _remove(_MAN)
                return None
            self._f = open(_PART, "ab")
        return self._man

    def length(self):
        try:
            return os.stat(_PART)[6]
        except OSError:
            return 0

    def begin(self, man):
        self.discard()
        try:
            with open(_MAN, "wb") as f:
                f.write(encode_manifest(*man))
            self._f = open(_PART, "wb")
        except OSError:
            raise StorageError("transfer begin")
        self._man = man

    def append(self, buf, off, n):
        self._f.write(memoryview(buf)[off:off + n])
        self._f.flush()

    def rehash(self, h):
        b = bytearray(256)
        with open(_PART, "rb") as f:
            while True:
                k = f.readinto(b)
                if not k:
                    break
                h.update(memoryview(b)[:k])

    def install(self):
        tid, version, _size, flags, _sha, name = self._man
        self._f.close()
        self._f = None
        st = self._st
        if flags & F_APP:  # Rule 3: applied at the next boot
            os.rename(_PART, _STAGE)
            st["stage"] = version
            state = ST_STAGED
        else:
            os.rename(_PART, name.decode())  # Rule 2
            st["v"][name.decode()] = version
            state = ST_INSTALLED
        st["t"] = tid
        st["s"] = state
        write_state(st)
        _remove(_MAN)
        self._man = None

    def discard(self):
        if self._f is not None:
            self._f.close()
            self._f = None
        self._man = None
        _remove(_PART)
        _remove(_MAN)

    def installed(self, name):
        st = self._st
        v = st["v"].get(name.decode(), -1)
        if name == APP_NAME:  # a staged or tried version counts: no going back to it
            v = max(v, st.get("stage", -1), st.get("bad", -1))
        return v

    def finished(self):
        return self._st["t"], self._st["s"]

    def room(self):
        return self._room


class Updater:
    """A ``Receiver`` over a ``FileStore``, with the status waiting to be
    sent: ``out[:pending]`` (the application sends it from its loop, never
    from the link's receive callback). Not thread-safe."""

    def __init__(self, piece_max):
        self.rx = Receiver(FileStore(), piece_max)
        self.rx.resume()
        self.out = bytearray(STATUS_BYTES)
        self.pending = 0

    def frame(self, buf, n):
        k = self.rx.handle_into(buf, n, self.out)
        if k:
            self.pending = k


# -- application archives and the boot step (Rule 3) ------------------------------

def _check_path(p):
    # A relative path of plain names (device.transfer.check_name's charset,
    # plus "/" between names): no "..", no absolute path, no state file.
    if not p or len(p) > ARCHIVE_PATH_MAX_BYTES or p[0] in "/." or "//" in p or p[-1] == "/":
        raise StorageError("archive path")
    for part in p.split("/"):
        if part in ("", ".", "..") or part[0] == ".":
            raise StorageError("archive path")
        for c in part:
            if c <= " " or c > "~" or c in "\\:":
                raise StorageError("archive path")


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
            raise StorageError("archive truncated")
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
    with open(_STAGE, "rb") as f:
        for p, size in _members(f):
            _check_path(p)
            if size > FILE_MAX_BYTES:
                raise StorageError("archive member")
            _mkdirs(p)
            with open(p + ".new", "wb") as out:
                while size:
                    k = f.readinto(memoryview(buf)[:min(size, 256)])
                    if not k:
                        raise StorageError("archive truncated")
                    out.write(memoryview(buf)[:k])
                    size -= k
            paths.append(p)
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
    except (OSError, StorageError, UnicodeError):
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
    """The new application reached its peer: keep it (Rule 3)."""
    st = read_state()
    if "trial" not in st:
        return
    version, paths = st.pop("trial")
    for p in paths:
        _remove(p + ".old")
    st["v"][APP_NAME.decode()] = version
    write_state(st)


def give_up():
    """The trial's deadline passed without a handshake: restart, so that the
    next ``boot()`` rolls back (Rule 3). On the unix port: exit 4."""
    try:
        import machine
        machine.reset()
    except ImportError:
        import sys
        sys.exit(4)
