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
  acknowledged offset are in flight; the device acknowledges every 8
  pieces, so the transfer is clocked by the device and leaves the link to
  telemetry in between. No piece is sent before the device has answered
  the manifest (which says where to start and how large a piece may be).
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
from device.errors import LocalError
from device.transport import MAX_PAYLOAD_BYTES

__all__ = ["Outgoing", "TransferError", "pack_app", "STATE_NAMES", "REASON_NAMES"]

DEFAULT_WINDOW = 16  # pieces in flight beyond the acknowledged offset (Rule 1)
STATE_NAMES = {T.ST_RECEIVING: "receiving", T.ST_INSTALLED: "installed", T.ST_STAGED: "staged",
               T.ST_REFUSED: "refused", T.ST_ABORTED: "aborted", T.ST_IDLE: "idle"}
REASON_NAMES = {T.R_NONE: "", T.R_BAD_NAME: "bad_name", T.R_TOO_LARGE: "too_large",
                T.R_OLD_VERSION: "old_version", T.R_BUSY: "busy", T.R_HASH: "hash_mismatch",
                T.R_PAST_END: "past_end", T.R_STORAGE: "storage", T.R_FLAGS: "flags",
                T.R_RESUME: "resume"}
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
                 piece_cap: int = MAX_PAYLOAD_BYTES - T.PIECE_HEAD_BYTES,
                 retry_s: float = 3.0, timeout_s: float = 600.0) -> None:
        try:
            T.check_name(name)
        except T.TransferRefused:
            raise TransferError(f"name {name!r}: 1..{T.NAME_MAX_BYTES} printable ASCII "
                                "bytes, no '/', '\\\\', ':' and not starting with '.'") from None
        if len(data) > T.FILE_MAX_BYTES:
            raise TransferError(f"{len(data)} bytes: at most {T.FILE_MAX_BYTES}")
        if not 0 < version <= 0xFFFFFFFF:
            raise TransferError("version: 1..2**32-1")
        self.name, self.data, self.version, self.flags = name, data, version, flags
        self.tid = secrets.randbits(32) if tid is None else tid
        self.sha = hashlib.sha256(data).digest()
        self.window = window
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
        except T.DecodeError:
            return []
        if tid != self.tid or self.done:
            return []
        self._heard = now
        if st in (T.ST_INSTALLED, T.ST_STAGED):
            self.state, self.offset = STATE_NAMES[st], len(self.data)
            return []
        if st in (T.ST_REFUSED, T.ST_ABORTED):
            self.state, self.reason = STATE_NAMES[st], REASON_NAMES.get(reason, str(reason))
            return []
        if st == T.ST_IDLE:  # the device lost the transfer (or never had it)
            self.piece = 0
            return self._ask(now)
        self.piece = max(1, min(self.piece_cap, piece_max))
        if offset > len(self.data):
            return []
        if reason == T.R_RESUME:  # Rule 2
            self.next = offset
        self.offset = max(self.offset, offset) if reason != T.R_RESUME else offset
        self.next = max(self.next, self.offset)
        return self._fill()

    def _fill(self) -> list[bytes]:
        out = []
        size = len(self.data)
        while self.next < size and self.next - self.offset < self.window * self.piece:
            end = min(size, self.next + self.piece)
            out.append(bytes([T.PIECE]) + self.tid.to_bytes(4, "big") +
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
        return []

    def abort(self) -> bytes:
        """The abort frame; the transfer ends as ``aborted`` here too."""
        self.state = "aborted"
        return bytes([T.ABORT]) + self.tid.to_bytes(4, "big")


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
    if len(out) > T.FILE_MAX_BYTES:
        raise TransferError(f"{root}: {len(out)} bytes packed, at most {T.FILE_MAX_BYTES}")
    return bytes(out)
