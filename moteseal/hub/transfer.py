"""The sending side of transfers (docs/protocol.md, "Transfers"; the device's
side is ``device/transfer.py``): ``Outgoing`` cuts one file into pieces
and decides, from the device's status frames and the clock, which frames
to send next. Sans-I/O: the hub's ``moteseal.hub.push.TransferService``
seals and publishes what it returns.

``pack_app`` turns a ``moteseal flash build`` directory into the archive
an application update carries (``micropython_port/update.py`` unpacks it
at the device's next boot).

Invariants:
- Rule 1 (pacing): at most ``window`` pieces beyond the device's last
  acknowledged offset are in flight (at least twice the 8 pieces the
  device acknowledges at a time, or the two would wait for each other);
  the transfer is clocked by the device's acknowledgements, and ``rate``
  (pieces per second, 0: no cap) leaves the link to telemetry in between.
  No piece is sent before the device has answered the manifest (which
  says where to start and how large a piece may be).
- Rule 2 (resume): a status with ``R_RESUME`` (the device's answer to a
  manifest, or to the first piece after a gap) moves the next piece back
  to its offset. If the device says nothing for ``retry_s`` (a cut link, a
  reboot), the manifest goes again: the device answers with where it is.
- Rule 3 (final): installed, staged, refused or aborted ends the transfer;
  ``timeout_s`` without any status ends it as ``timeout``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from device import transfer as T
from device.errors import DecodeError, LocalError
from device.transport import MAX_PAYLOAD_BYTES

__all__ = ["Outgoing", "TransferError", "pack_app", "STATE_NAMES", "REASON_NAMES"]

# The wire constants of device/transfer.py under public names (the core
# keeps them private, so that MicroPython inlines them).
MANIFEST = T._MANIFEST
PIECE = T._PIECE
STATUS = T._STATUS
ABORT = T._ABORT
MANIFEST_HEAD_BYTES = T._MANIFEST_HEAD_BYTES
PIECE_HEAD_BYTES = T._PIECE_HEAD_BYTES
STATUS_BYTES = T._STATUS_BYTES
ABORT_BYTES = T._ABORT_BYTES
NAME_MAX_BYTES = T._NAME_MAX_BYTES
FILE_MAX_BYTES = T._FILE_MAX_BYTES
SHA256_BYTES = T._SHA256_BYTES
F_APP = T._F_APP
ST_RECEIVING = T._ST_RECEIVING
ST_INSTALLED = T._ST_INSTALLED
ST_STAGED = T._ST_STAGED
ST_REFUSED = T._ST_REFUSED
ST_ABORTED = T._ST_ABORTED
ST_IDLE = T._ST_IDLE
R_NONE = T._R_NONE
R_BAD_NAME = T._R_BAD_NAME
R_TOO_LARGE = T._R_TOO_LARGE
R_OLD_VERSION = T._R_OLD_VERSION
R_BUSY = T._R_BUSY
R_HASH = T._R_HASH
R_PAST_END = T._R_PAST_END
R_STORAGE = T._R_STORAGE
R_FLAGS = T._R_FLAGS
R_RESUME = T._R_RESUME

DEFAULT_WINDOW = 16  # pieces in flight beyond the acknowledged offset (Rule 1)
MIN_WINDOW = 16  # twice the device's acknowledgement interval (Receiver ack_every)
STATE_NAMES = {ST_RECEIVING: "receiving", ST_INSTALLED: "installed", ST_STAGED: "staged",
               ST_REFUSED: "refused", ST_ABORTED: "aborted", ST_IDLE: "idle"}
REASON_NAMES = {R_NONE: "", R_BAD_NAME: "bad_name", R_TOO_LARGE: "too_large",
                R_OLD_VERSION: "old_version", R_BUSY: "busy", R_HASH: "hash_mismatch",
                R_PAST_END: "past_end", R_STORAGE: "storage", R_FLAGS: "flags",
                R_RESUME: "resume"}
# Files of a flash directory that are not the application: the device's
# secrets and state, and the host-side manifest (moteseal/flash/build.py).
_NOT_APP = {"moteseal.bundle", "wifi.json", "manifest.json"}


class TransferError(LocalError):
    """A transfer cannot be made as asked (bad name, too large, an
    unreadable or empty bundle directory); the CLI exits 2."""

    exit_code = 2


class Outgoing:
    """One file to one device (Rules 1-3). ``start(now)`` returns the
    manifest; ``on_status(frame, now)`` and ``due(now)`` return the frames
    to send next. ``state`` is ``sending`` until it ends as ``installed``,
    ``staged``, ``refused`` (``reason`` says why), ``aborted`` or
    ``timeout``; ``offset`` is what the device has acknowledged.

    Not thread-safe: the transfer service's one thread drives it."""

    def __init__(self, name: bytes, data: bytes, version: int, flags: int = 0,
                 tid: int | None = None, window: int = DEFAULT_WINDOW,
                 piece_cap: int = MAX_PAYLOAD_BYTES - PIECE_HEAD_BYTES,
                 retry_s: float = 3.0, timeout_s: float = 600.0, rate: float = 0.0) -> None:
        try:
            T.check_name(name)
        except T.TransferRefused:
            raise TransferError(f"name {name!r}: 1..{NAME_MAX_BYTES} printable ASCII "
                                "bytes, no '/', '\\\\', ':' and not starting with '.'") from None
        if len(data) > FILE_MAX_BYTES:
            raise TransferError(f"{len(data)} bytes: at most {FILE_MAX_BYTES}")
        if not 0 < version <= 0xFFFFFFFF:
            raise TransferError("version: 1..2**32-1")
        self.name, self.data, self.version, self.flags = name, data, version, flags
        self.tid = secrets.randbits(32) if tid is None else tid
        self.sha = hashlib.sha256(data).digest()
        self.window = max(window, MIN_WINDOW)
        self.rate = rate
        self._tokens = float(self.window)
        self._filled = 0.0
        self.piece_cap = piece_cap
        self.retry_s, self.timeout_s = retry_s, timeout_s
        self.piece = 0  # the device's piece_max, once it answered (Rule 1)
        self.offset = 0  # acknowledged by the device
        self.next = 0  # the next byte to send
        self.state = "sending"
        self.reason = ""
        self.sent_pieces = 0
        self.manifests = 0
        self._heard = self._asked = 0.0

    def manifest(self) -> bytes:
        return bytes(T.encode_manifest(self.tid, self.version, len(self.data), self.flags,
                                       self.sha, self.name))

    def start(self, now: float) -> list[bytes]:
        self._heard = now
        return self._ask(now)

    def _ask(self, now: float) -> list[bytes]:
        self._asked = now
        self.manifests += 1
        return [self.manifest()]

    @property
    def done(self) -> bool:
        return self.state != "sending"

    def on_status(self, frame: bytes, now: float) -> list[bytes]:
        """The device's status frame; returns the frames to send now. A
        status of another transfer, or a malformed one, is ignored."""
        try:
            tid, st, reason, offset, piece_max = T.parse_status(frame, len(frame))
        except DecodeError:
            return []
        if tid != self.tid or self.done:
            return []
        self._heard = now
        if st in (ST_INSTALLED, ST_STAGED):
            self.state, self.offset = STATE_NAMES[st], len(self.data)
            return []
        if st in (ST_REFUSED, ST_ABORTED):
            self.state, self.reason = STATE_NAMES[st], REASON_NAMES.get(reason, str(reason))
            return []
        if st == ST_IDLE:  # the device lost the transfer (or never had it)
            self.piece = 0
            return self._ask(now)
        self.piece = max(1, min(self.piece_cap, piece_max))
        if offset > len(self.data):
            return []
        if reason == R_RESUME:  # Rule 2
            self.next = offset
        self.offset = max(self.offset, offset) if reason != R_RESUME else offset
        self.next = max(self.next, self.offset)
        return self._fill(now)

    def _fill(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        if not self.piece:
            return out
        if self.rate:
            self._tokens = min(float(self.window), self._tokens + (now - self._filled) * self.rate)
        self._filled = now
        size = len(self.data)
        while self.next < size and self.next - self.offset < self.window * self.piece:
            if self.rate:
                if self._tokens < 1:
                    break
                self._tokens -= 1
            end = min(size, self.next + self.piece)
            out.append(bytes([PIECE]) + self.tid.to_bytes(4, "big") +
                       self.next.to_bytes(4, "big") + self.data[self.next:end])
            self.next = end
            self.sent_pieces += 1
        return out

    def due(self, now: float) -> list[bytes]:
        """Frames the clock calls for (Rules 2-3): the manifest again after
        ``retry_s`` of silence; ``timeout`` after ``timeout_s``."""
        if self.done:
            return []
        if now - self._heard >= self.timeout_s:
            self.state = "timeout"
            return []
        if now - max(self._heard, self._asked) >= self.retry_s:
            return self._ask(now)
        return self._fill(now) if self.rate else []

    def abort(self) -> bytes:
        """The abort frame; the transfer ends as ``aborted`` here too."""
        self.state = "aborted"
        return bytes([ABORT]) + self.tid.to_bytes(4, "big")


def pack_app(bundle_dir: str | os.PathLike[str]) -> bytes:
    """The application archive of a ``moteseal flash build`` directory: each
    ``.mpy`` file and ``main.py`` (never the bundle, Wi-Fi file or manifest)
    as ``name_len u8 | path | size u32 | data``, sorted by path. Raises
    ``TransferError`` (no such directory, nothing to send, a path too long
    or too large in total)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise TransferError(f"{root}: not a directory (a `moteseal flash build` output)")
    out = bytearray()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel in _NOT_APP or not (rel.endswith(".mpy") or rel == "main.py"):
            continue
        name = rel.encode()
        if len(name) > 64 or ".." in rel.split("/") or any(s.startswith(".") for s in rel.split("/")):
            raise TransferError(f"{rel}: not a path a device takes (at most 64 bytes, no dot names)")
        body = p.read_bytes()
        out += bytes([len(name)]) + name + len(body).to_bytes(4, "big") + body
    if not out:
        raise TransferError(f"{root}: no .mpy files or main.py")
    if len(out) > FILE_MAX_BYTES:
        raise TransferError(f"{root}: {len(out)} bytes packed, at most {FILE_MAX_BYTES}")
    return bytes(out)
