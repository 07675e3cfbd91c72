"""Transfers on flash (docs/protocol.md, "Transfers"): the storage behind
``device.transfer.Receiver``. The boot step
that applies a staged application update or rolls a failed one back is
``micropython_port/app_update.py`` (loaded only at boot and for a trial,
so a transfer does not carry its code on the heap).

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
- Rule 3: an application (``F_APP``) is only staged (``.stage``);
  ``micropython_port.app_update`` applies it at the next boot and rolls
  it back if it fails.
- Rule 4: nothing here logs file contents.
"""

import os

from micropython import const

from device.transfer import Receiver, parse_manifest
from micropython_port.update_state import APP_NAME, _STAGE, _remove, read_state, write_state

# device.transfer's constants, inlined here instead of imported as globals.
_F_APP = const(0x01)
_FILE_MAX_BYTES = const(1048576)
_ST_INSTALLED = const(1)
_ST_STAGED = const(2)
_STATUS_BYTES = const(13)

_PART = ".part"
_MAN = ".xfer"


class FileStore:
    """``device.transfer``'s store on the device's file system (Rules 1-2).
    ``room`` is the largest file it accepts. Not thread-safe (the device
    loop owns it)."""

    def __init__(self, room=_FILE_MAX_BYTES):
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

    def begin(self, man, frame, n):
        self.discard()
        with open(_MAN, "wb") as f:
            f.write(memoryview(frame)[:n])
        self._f = open(_PART, "wb")
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
        if flags & _F_APP:  # Rule 3: applied at the next boot
            os.rename(_PART, _STAGE)
            st["stage"] = version
            state = _ST_STAGED
        else:
            os.rename(_PART, name.decode())  # Rule 2
            st["v"][name.decode()] = version
            state = _ST_INSTALLED
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


def receiver(piece_max):
    """The device's ``Receiver`` over a ``FileStore``, resumed from flash
    (``device.transfer`` Rule 2). Its status waits in ``out[:pending]``
    until the application sends it from its loop, never from the link's
    receive callback."""
    rx = Receiver(FileStore(), piece_max)
    try:
        rx.resume()
    except OSError:  # unreadable flash: drop that transfer, the hub starts it again
        rx.man = None
        try:
            rx.store.discard()
        except OSError:
            pass
    return rx
