"""File and application transfers to a device, inside its session
(docs/protocol.md, "Transfers"): the device's receiver, sans-I/O.

The peer sends a manifest (which file, how large, its SHA-256, a version),
then the file in pieces, in order; the device writes each piece through a
small storage interface (``micropython_port.update.FileStore`` on boards,
``MemoryStore`` below for tests), hashes it as it comes, answers with
status frames that carry the resume point, and only when every byte is
there and the hash matches has the store swap the file in. No I/O here:
``Receiver.handle_into`` takes a decrypted frame and writes the status to
send back into the caller's buffer.

Wire forms (inside the encrypted payload; big-endian):
- manifest, peer to device: ``0x10 | tid u32 | version u32 | size u32 |
  flags u8 | sha256 32 | name_len u8 | name`` (``MANIFEST_HEAD_BYTES``
  before the name).
- piece, peer to device: ``0x11 | tid u32 | offset u32 | data``
  (1..``piece_max`` bytes of data; ``piece_max`` is in every status).
- status, device to peer: ``0x12 | tid u32 | state u8 | reason u8 |
  offset u32 | piece_max u16`` (``STATUS_BYTES``).
- abort, peer to device: ``0x13 | tid u32``.

Invariants:
- Rule 1 (in order, fixed memory): a piece is taken only at the high-water
  offset, so the file grows by appending and the SHA-256 is updated
  incrementally; nothing of the file is held in RAM beyond the frame being
  handled. A piece elsewhere is dropped (counted in ``counts``) and
  answered once with the resume point (go-back-N at the sender).
- Rule 2 (resumable): the store holds the manifest and the bytes written;
  after a reboot ``resume`` takes the offset from the store and re-hashes
  what is there, so the transfer continues where flash says it stopped.
- Rule 3 (verified, atomic): the store installs (or stages, for an
  application) only after the last byte, and only if the SHA-256 matches
  the manifest; otherwise the partial file is discarded and the installed
  one is untouched.
- Rule 4 (no rollback, one at a time): a manifest whose version is not
  above the installed version of that name is refused (``R_OLD_VERSION``).
  At most one transfer is in flight: an acceptable manifest of another
  transfer replaces it (its partial file is discarded; the hub runs one
  transfer per device, so it has given the old one up, e.g. after a
  timeout that left the device holding a partial file). The same manifest
  again (same tid) is a resume request and is answered with the current
  state; the same tid with another manifest is refused (``R_BUSY``).
- Rule 5: bad frames never raise out of ``handle_into``: a malformed frame
  is a counted drop (``DecodeError`` inside), a refused manifest or piece
  is answered with ``ST_REFUSED`` and its reason (``TransferRefused``).

The constants are module-private so that MicroPython inlines them (2.6 KiB
less heap than as globals); the host's public names for them, and the
peer's side, are ``moteseal/hub/transfer.py``.
"""

import hashlib

# The big-endian u32 helpers are delivery's: a device retains readings by
# default (``--retain 16``), so delivery is loaded when a transfer comes and
# the import costs no module (70 bytes less .mpy than a copy here).
from device.delivery import _get32, _put32
from device.errors import DecodeError, RemoteError

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_MANIFEST = const(0x10)
_PIECE = const(0x11)
_STATUS = const(0x12)
_ABORT = const(0x13)

_MANIFEST_HEAD_BYTES = const(1 + 4 + 4 + 4 + 1 + 32 + 1)  # kind tid version size flags sha len
_PIECE_HEAD_BYTES = const(1 + 4 + 4)  # kind tid offset
_STATUS_BYTES = const(1 + 4 + 1 + 1 + 4 + 2)  # kind tid state reason offset piece_max
_ABORT_BYTES = const(1 + 4)
# A name fits a manifest in the smallest device buffer (64 bytes: 47 + 16
# < 64), and is a plain file name: no path separator, no "..".
_NAME_MAX_BYTES = const(16)
# The largest file a manifest may announce (the size field is a u32; a
# device's store may refuse less, ``R_TOO_LARGE``): room on small flash.
_FILE_MAX_BYTES = const(1048576)
_SHA256_BYTES = const(32)

_F_APP = const(0x01)  # an application bundle: staged, applied at the next boot

# States in a status frame.
_ST_RECEIVING = const(0)  # offset = the resume point (bytes held)
_ST_INSTALLED = const(1)  # swapped in
_ST_STAGED = const(2)  # an application: applied at the next boot
_ST_REFUSED = const(3)  # see the reason; nothing installed
_ST_ABORTED = const(4)  # the peer aborted it; the partial file is gone
_ST_IDLE = const(5)  # no such transfer here (a stray piece or abort)

# Reasons (ST_REFUSED).
_R_NONE = const(0)
_R_BAD_NAME = const(1)  # empty, too long, a separator, "..", a control byte
_R_TOO_LARGE = const(2)  # size above FILE_MAX_BYTES or the store's room
_R_OLD_VERSION = const(3)  # version not above the installed one (no rollback)
_R_BUSY = const(4)  # the transfer id is in flight with another manifest
_R_HASH = const(5)  # the bytes received do not hash to the manifest's SHA-256
_R_PAST_END = const(6)  # a piece beyond the announced size
_R_STORAGE = const(7)  # flash failed; nothing installed
_R_FLAGS = const(8)  # unknown flags
# With ST_RECEIVING, the reason says what the offset means: R_NONE, the
# bytes held so far (a cumulative acknowledgement: pieces beyond it may be
# in flight); R_RESUME, send again from here (the answer to a manifest, and
# to the first piece after a gap).
_R_RESUME = const(9)


class TransferRefused(RemoteError):
    """A well-formed manifest or piece the device will not take; ``reason``
    is one of the ``R_*`` codes, sent back in the status frame."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def check_name(name):
    """Raises ``TransferRefused(R_BAD_NAME)`` unless ``name`` (bytes) is
    1..NAME_MAX_BYTES of printable ASCII without "/", "\\" or "..", and not
    starting with a dot (no hidden or state files)."""
    n = len(name)
    if n < 1 or n > _NAME_MAX_BYTES or name[0] == 0x2E:
        raise TransferRefused(_R_BAD_NAME)
    for c in name:
        if c <= 0x20 or c >= 0x7F or c == 0x2F or c == 0x5C or c == 0x3A:
            raise TransferRefused(_R_BAD_NAME)


def parse_manifest(buf, n):
    """``(tid, version, size, flags, sha256, name)`` of a manifest frame
    ``buf[:n]``. Raises ``DecodeError`` (malformed) or ``TransferRefused``
    (``R_BAD_NAME``, ``R_TOO_LARGE``, ``R_FLAGS``)."""
    if n < _MANIFEST_HEAD_BYTES or buf[0] != _MANIFEST:
        raise DecodeError("transfer: short manifest")
    nl = buf[_MANIFEST_HEAD_BYTES - 1]
    if n != _MANIFEST_HEAD_BYTES + nl:
        raise DecodeError("transfer: manifest length")
    flags = buf[13]
    if flags & ~_F_APP:
        raise TransferRefused(_R_FLAGS)
    name = bytes(buf[_MANIFEST_HEAD_BYTES:n])
    check_name(name)
    size = _get32(buf, 9)
    if size > _FILE_MAX_BYTES:
        raise TransferRefused(_R_TOO_LARGE)
    return (_get32(buf, 1), _get32(buf, 5), size, flags,
            bytes(buf[14:14 + _SHA256_BYTES]), name)


def encode_manifest(tid, version, size, flags, sha, name):
    """The manifest frame (the peer's side; allocates). Raises
    ``TransferRefused`` for a name or size the device would refuse."""
    check_name(name)
    if size > _FILE_MAX_BYTES or len(sha) != _SHA256_BYTES:
        raise TransferRefused(_R_TOO_LARGE)
    b = bytearray(_MANIFEST_HEAD_BYTES + len(name))
    b[0] = _MANIFEST
    _put32(b, 1, tid)
    _put32(b, 5, version)
    _put32(b, 9, size)
    b[13] = flags
    b[14:46] = sha
    b[46] = len(name)
    b[_MANIFEST_HEAD_BYTES:] = name
    return b


def encode_status_into(buf, tid, state, reason, offset, piece_max):
    """Writes a status frame; returns ``STATUS_BYTES``."""
    buf[0] = _STATUS
    _put32(buf, 1, tid)
    buf[5] = state
    buf[6] = reason
    _put32(buf, 7, offset)
    buf[11] = (piece_max >> 8) & 0xFF
    buf[12] = piece_max & 0xFF
    return _STATUS_BYTES


def parse_status(buf, n):
    """``(tid, state, reason, offset, piece_max)`` of a status frame.
    Raises ``DecodeError``."""
    if n != _STATUS_BYTES or buf[0] != _STATUS or buf[5] > _ST_IDLE:
        raise DecodeError("transfer: bad status")
    return _get32(buf, 1), buf[5], buf[6], _get32(buf, 7), (buf[11] << 8) | buf[12]


class MemoryStore:
    """A store that keeps everything in RAM, for tests and the conformance
    of ``Receiver``: it does NOT persist (a reboot loses it), and it holds
    the whole file, which a device must never do. The interface a device's
    store implements (``micropython_port.update.FileStore``):

    - ``load()``: the manifest of the transfer in flight, ``(tid, version,
      size, flags, sha256, name)``, or None; ``length()``: bytes held.
    - ``begin(manifest, frame, n)``: start a transfer (an empty partial
      file; ``frame[:n]`` is the manifest frame, to keep for ``load``).
    - ``append(buf, off, n)``: add ``buf[off:off + n]`` at the end.
    - ``rehash(h)``: feed the bytes held into the hash ``h``.
    - ``install()``: swap the file in (or stage it, ``F_APP``) and record
      its version and tid; ``discard()``: forget the partial file.
    - ``installed(name)``: the installed version, -1 if none;
      ``finished()``: ``(tid, state)`` of the last finished transfer.
    - ``room()``: the largest size it can take.
    Failing calls raise ``OSError`` (the device's ``errors`` module carries
    no ``StorageError``: a flash build strips it) and leave the
    installed file as it was.

    Not thread-safe (one device loop)."""

    def __init__(self, room=_FILE_MAX_BYTES):
        self.files = {}
        self.versions = {}
        self.man = None
        self.part = bytearray()
        self.last = (-1, _ST_IDLE)
        self._room = room

    def load(self):
        return self.man

    def length(self):
        return len(self.part)

    def begin(self, man, frame, n):
        self.man = man
        self.part = bytearray()

    def append(self, buf, off, n):
        self.part.extend(buf[off:off + n])

    def rehash(self, h):
        h.update(self.part)

    def install(self):
        tid, version, _size, flags, _sha, name = self.man
        self.files[name] = bytes(self.part)
        self.versions[name] = version
        self.last = (tid, _ST_STAGED if flags & _F_APP else _ST_INSTALLED)
        self.discard()

    def discard(self):
        self.man = None
        self.part = bytearray()

    def installed(self, name):
        return self.versions.get(name, -1)

    def finished(self):
        return self.last

    def room(self):
        return self._room


class Receiver:
    """The device's side of transfers (Rules 1-5) over ``store``.

    ``piece_max`` is the most data a piece may carry: the device's receive
    buffer less ``PIECE_HEAD_BYTES``. ``ack_every`` pieces in a row are
    answered with one status (the sender keeps a window of about twice
    that in flight). ``resume()`` once at boot; then ``handle_into(buf, n,
    out)`` for every transfer frame, which returns the length of the status
    to send (written into ``out``, ``STATUS_BYTES`` long), or 0.

    ``frame(buf, n)`` is ``handle_into`` that keeps the status in ``out``
    and its length in ``pending`` (cleared by the caller once sent).

    ``counts``: pieces taken, dropped (out of order, stray, malformed) and
    refusals. Not thread-safe: one device loop owns it."""

    def __init__(self, store, piece_max, ack_every=8):
        if piece_max < 1 or piece_max > 0xFFFF:
            raise DecodeError("transfer: piece_max")
        self.store = store
        self.piece_max = piece_max
        self.ack_every = ack_every
        self.man = None  # the manifest in flight
        self.offset = 0
        self._h = None
        self._run = 0  # pieces since the last status
        self._told = False  # the resume point was sent for the current gap
        self.counts = {"pieces": 0, "out_of_order": 0, "stray": 0, "malformed": 0,
                       "refused": 0, "installed": 0}
        self.last_reason = _R_NONE
        self.out = bytearray(_STATUS_BYTES)
        self.pending = 0

    def resume(self):
        """Rule 2: continue the store's transfer in flight, if any: the
        offset is what flash holds, re-hashed. A store holding more than
        the manifest announces is discarded; one holding all of it (the
        device stopped between the last piece and the swap) is finished
        now (Rule 3), its status left in ``out[:pending]``. Raises
        ``OSError`` if the store cannot be read."""
        man = self.store.load()
        if man is None:
            return
        n = self.store.length()
        if n > man[2]:
            self.store.discard()
            return
        self.man = man
        self.offset = n
        self._h = hashlib.sha256()
        self.store.rehash(self._h)
        if n == man[2]:
            try:
                self.pending = self._finish(self.out)
            except TransferRefused as e:
                self._drop()
                self.pending = self._status(self.out, man[0], _ST_REFUSED, e.reason)

    def _status(self, out, tid, state, reason):
        if state == _ST_REFUSED:
            self.counts["refused"] += 1
            self.last_reason = reason
        self._run = 0
        return encode_status_into(out, tid, state, reason,
                                  self.offset if state == _ST_RECEIVING else 0, self.piece_max)

    def frame(self, buf, n):
        k = self.handle_into(buf, n, self.out)
        if k:
            self.pending = k

    def handle_into(self, buf, n, out):
        """One decrypted transfer frame ``buf[:n]``; returns the length of the
        status written into ``out`` (0: nothing to send). Never raises for
        remote bytes (Rule 5); a failing store refuses with ``R_STORAGE``."""
        k = buf[0] if n else 0
        tid = _get32(buf, 1) if n >= 5 else 0
        try:
            if k == _MANIFEST:
                return self._manifest(buf, n, out)
            if k == _PIECE:
                return self._piece(buf, n, out)
            if k == _ABORT and n == _ABORT_BYTES:
                if self.man is not None and tid == self.man[0]:
                    self._drop()
                    return self._status(out, tid, _ST_ABORTED, _R_NONE)
                return self._status(out, tid, _ST_IDLE, _R_NONE)
            raise DecodeError("transfer: unknown frame")
        except TransferRefused as e:
            if self.man is not None and tid == self.man[0]:
                self._drop()
            return self._status(out, tid, _ST_REFUSED, e.reason)
        except DecodeError:
            self.counts["malformed"] += 1
            return 0
        except OSError:
            if self.man is not None and tid == self.man[0]:
                self._drop()
            return self._status(out, tid, _ST_REFUSED, _R_STORAGE)

    def _drop(self):
        self.man = None
        self._h = None
        self.offset = 0
        self.store.discard()

    def _manifest(self, buf, n, out):
        m = parse_manifest(buf, n)
        tid = m[0]
        cur = self.man
        if cur is not None:
            if tid == cur[0]:
                if m != cur:
                    raise TransferRefused(_R_BUSY)  # same id, other file: not ours
                self._told = False
                return self._status(out, tid, _ST_RECEIVING, _R_RESUME)  # a resume request
        last_tid, last_state = self.store.finished()
        if tid == last_tid:
            return self._status(out, tid, last_state, _R_NONE)  # its answer was lost
        if m[1] <= self.store.installed(m[5]):
            raise TransferRefused(_R_OLD_VERSION)  # Rule 4: no rollback
        if m[2] > self.store.room():
            raise TransferRefused(_R_TOO_LARGE)
        if cur is not None:
            self._drop()  # Rule 4: the hub moved on; the new transfer replaces it
        self.store.begin(m, buf, n)
        self.man = m
        self.offset = 0
        self._h = hashlib.sha256()
        self._told = False
        if m[2] == 0:
            return self._finish(out)
        return self._status(out, tid, _ST_RECEIVING, _R_RESUME)

    def _piece(self, buf, n, out):
        if n <= _PIECE_HEAD_BYTES or n - _PIECE_HEAD_BYTES > self.piece_max:
            raise DecodeError("transfer: piece size")
        tid = _get32(buf, 1)
        man = self.man
        if man is None or tid != man[0]:
            self.counts["stray"] += 1
            last_tid, last_state = self.store.finished()
            if self._told:
                return 0  # answered once already: the sender is told, not flooded
            self._told = True
            if tid == last_tid:  # late pieces of a finished transfer
                return self._status(out, tid, last_state, _R_NONE)
            return self._status(out, tid, _ST_IDLE, _R_NONE)
        off = _get32(buf, 5)
        if off != self.offset:  # Rule 1: in order only
            self.counts["out_of_order"] += 1
            if self._told:
                return 0
            self._told = True
            return self._status(out, tid, _ST_RECEIVING, _R_RESUME)
        d = n - _PIECE_HEAD_BYTES
        if off + d > man[2]:
            raise TransferRefused(_R_PAST_END)
        self.store.append(buf, _PIECE_HEAD_BYTES, d)
        self._h.update(memoryview(buf)[_PIECE_HEAD_BYTES:n])
        self.offset = off + d
        self.counts["pieces"] += 1
        self._told = False
        self._run += 1
        if self.offset == man[2]:
            return self._finish(out)
        if self._run >= self.ack_every:
            return self._status(out, tid, _ST_RECEIVING, _R_NONE)
        return 0

    def _finish(self, out):
        # Rule 3: every byte is here; swap in only if the hash matches.
        man = self.man
        tid = man[0]
        if self._h.digest() != man[4]:
            raise TransferRefused(_R_HASH)
        self.store.install()
        self.man = None
        self._h = None
        self.offset = 0
        self.counts["installed"] += 1
        self._told = True  # late pieces are answered once, not each
        return self._status(out, tid, _ST_STAGED if man[3] & _F_APP else _ST_INSTALLED, _R_NONE)
