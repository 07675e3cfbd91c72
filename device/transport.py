"""The transport phase of a finished NK handshake, over lossy, unordered links.

Only a finished handshake makes one (``NKInitiator.into_transport()``); it
holds the two cipher states, the remote static key, the handshake hash and
the replay window, nothing else (STYLE.md section 2).

Invariants:
- Rule 1: every message carries its nonce explicitly (the envelope's
  ``nonce`` field); the AEAD nonce is that number (Noise section 5.1 with
  the nonce taken from the wire instead of counted). Sending uses each nonce
  exactly once, 0, 1, 2, ... per direction.
- Rule 2: keys rotate by Noise ``Rekey()`` (section 11.3) every
  ``rekey_interval`` nonces: nonce ``n`` is sealed under the key of epoch
  ``n // rekey_interval``. The receiver keeps the current epoch's key and the
  previous one; since ``window <= rekey_interval``, every nonce inside the
  replay window belongs to one of those two epochs, so reordering across a
  rekey boundary still decrypts.
- Rule 3: a failed decrypt changes nothing: the window, the epoch and its
  keys move only after the tag verified.
- Rule 4: limits. A message whose plaintext exceeds ``max_payload`` is
  refused; after ``max_messages`` in a direction, or once ``now - started``
  exceeds ``max_age`` (in the caller's clock units), the session is spent and
  ``SessionExpired`` says to handshake again. The core has no clock: callers
  pass ``now``.
- Rule 5: the hot path allocates nothing on MicroPython: callers pass
  buffers with offsets and lengths (``*_into`` returning a byte count), and
  with the default ``max_messages`` (2^30 - 1) every nonce stays a small int
  even on a 32-bit port (tests/qemu/test_qemu_heap.py).
"""

from device import errors
from device.replay import DEFAULT_WINDOW, ReplayWindow

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

TAG_BYTES = const(16)  # ChaCha20-Poly1305 (RFC 8439 section 2.8)
MAX_PAYLOAD_BYTES = const(1024)  # default plaintext bound for every buffer
_MAXNONCE = const(0xFFFFFFFFFFFFFFFF)
NONCE_BYTES = const(8)  # the bare wire form of encrypt(): 8-byte big-endian nonce || ct
DEFAULT_REKEY_INTERVAL = const(65536)
# Per direction. Noise allows up to 2^64 - 2; we stop at 2^30 - 1 so that every
# nonce (at most 2^30 - 2) and the next send_nonce (at most 2^30 - 1) are small
# ints on a 32-bit MicroPython port (31-bit signed: 2^30 - 1 is the largest),
# where a larger nonce is a heap integer and the message path would allocate.
# At one message a second that is 34 years; SessionExpired asks for a new
# handshake before then. A caller passing a larger max_messages gets an
# allocating message path from nonce 2^30 on 32-bit ports.
DEFAULT_MAX_MESSAGES = const(0x3FFFFFFF)  # 2^30 - 1
MAX_EPOCH_SKIP = const(8)  # bounds the Rekey() work a forged far-future nonce can cause


def rekey(backend, k):
    """Noise section 11.3: REKEY(k) = ENCRYPT(k, maxnonce, zerolen, zeros)[:32]."""
    out = bytearray(48)
    backend.cipher(k).encrypt_into(_MAXNONCE, b"", 0, bytes(32), 0, 32, out, 0)
    return bytes(out[:32])


class Transport:
    """Encrypts and decrypts transport messages with explicit nonces.

    Threads: not shareable. Reading ``send_nonce`` for a header and sealing
    under it, or a replay check and its commit, are separate steps; reach a
    shared one only through a session made with ``lock=``
    (``device/session.py`` Rule 7)."""

    def __init__(self, backend, send_key, recv_key, remote_static, handshake_hash,
                 window=DEFAULT_WINDOW, rekey_interval=DEFAULT_REKEY_INTERVAL,
                 max_messages=DEFAULT_MAX_MESSAGES, max_age=None, now=None,
                 max_payload=MAX_PAYLOAD_BYTES):
        if rekey_interval < window:
            raise errors.LocalError("rekey_interval < window")
        self._backend = backend
        self.remote_static = remote_static
        self.handshake_hash = handshake_hash
        self.max_payload = max_payload
        self.max_messages = max_messages
        self.max_age = max_age
        self.started = now
        self._interval = rekey_interval
        self.send_nonce = 0
        self._s_epoch = 0
        self._s_key = send_key
        self._s = backend.cipher(send_key)
        self._r_epoch = 0
        self._r_key = recv_key
        self._r_cur = backend.cipher(recv_key)
        self._r_prev = None
        self.window = ReplayWindow(window)

    def expired(self, now=None):
        """True once this session must be replaced by a new handshake."""
        return self.send_nonce >= self.max_messages or self._too_old(now)

    def _too_old(self, now):
        return now is not None and self.max_age is not None and self.started is not None \
            and now - self.started > self.max_age

    def encrypt_into(self, ad, ad_len, src, src_off, src_len, dst, dst_off, now=None):
        """Seals ``src[src_off:src_off+src_len]`` under nonce ``self.send_nonce``
        (read it first: it belongs in the authenticated header) into ``dst``
        at ``dst_off``; returns the ciphertext length (``src_len + 16``).
        Raises ``MessageTooLarge``, ``BufferTooSmall``, ``SessionExpired``."""
        if src_len > self.max_payload:
            raise errors.MessageTooLarge("message exceeds max_payload")
        n = self.send_nonce
        epoch = n // self._interval
        if epoch != self._s_epoch or n >= self.max_messages or \
                (now is not None and self.max_age is not None):
            # The slow path: a new epoch, the message limit or the age limit.
            if self.expired(now):
                raise errors.SessionExpired("session spent; handshake again")
            if epoch != self._s_epoch:
                # Sending is sequential, so the epoch only ever moves up by one.
                self._s_key = rekey(self._backend, self._s_key)
                self._s = self._backend.cipher(self._s_key)
                self._s_epoch = epoch
        w = self._s.encrypt_into(n, ad, ad_len, src, src_off, src_len, dst, dst_off)
        self.send_nonce = n + 1
        return w

    def decrypt_into(self, nonce, ad, ad_len, src, src_off, src_len, dst, dst_off, now=None,
                     unpad=None):
        """Opens a message sealed under ``nonce``; returns the plaintext length
        (with ``unpad``, ``device.padding.unpad_len``: the length before the
        padding; passed in so a device that does not pad never loads it).
        Raises ``ReplayError`` (duplicate, too old), ``DecodeError`` (nonce
        beyond the session's limits, oversized, malformed padding),
        ``AuthError`` (anything that does not authenticate),
        ``SessionExpired``. On any error nothing changes (Rule 3)."""
        if nonce < 0 or nonce >= self.max_messages:
            raise errors.DecodeError("nonce out of session range")
        if src_len - TAG_BYTES > self.max_payload:
            raise errors.DecodeError("message exceeds max_payload")
        if now is not None and self.max_age is not None and self._too_old(now):
            raise errors.SessionExpired("session spent; handshake again")
        w = self.window
        if nonce <= w.hi:  # in order needs no check (replay.py Rule 1)
            w.check(nonce)
        epoch = nonce // self._interval
        cur = self._r_epoch
        if epoch == cur:
            c = self._r_cur
        elif epoch == cur - 1 and self._r_prev is not None:
            c = self._r_prev
        elif epoch < cur:
            raise errors.ReplayError("message older than the window")
        elif epoch - cur > MAX_EPOCH_SKIP:
            raise errors.DecodeError("nonce too far ahead")
        else:
            # A later epoch: Rekey() forward from the current key (Rule 2),
            # keeping the key before it as the new previous epoch's.
            new_key = self._r_key
            prev_key = None
            while cur < epoch:
                prev_key = new_key
                new_key = rekey(self._backend, new_key)
                cur += 1
            c = self._backend.cipher(new_key)
        n = c.decrypt_into(nonce, ad, ad_len, src, src_off, src_len, dst, dst_off)
        if unpad is not None:
            # Stripped before the commit, so a malformed padding changes
            # nothing either (device/padding.py Rule 2).
            n = unpad(dst, dst_off, n)
        # Authenticated: commit (Rule 3).
        if epoch > self._r_epoch:
            self._r_prev = self._r_cur if epoch == self._r_epoch + 1 \
                else self._backend.cipher(prev_key)
            self._r_cur = c
            self._r_key = new_key
            self._r_epoch = epoch
        w.commit(nonce)
        return n

    # Convenience forms that allocate (CPython, tests, examples). The bare wire
    # form is an 8-byte big-endian nonce followed by the ciphertext.

    def encrypt(self, plaintext, ad=b"", now=None):
        """Returns ``nonce (8 bytes, big-endian) || ciphertext``."""
        out = bytearray(NONCE_BYTES + len(plaintext) + TAG_BYTES)
        n = self.send_nonce
        for i in range(NONCE_BYTES):
            out[i] = (n >> (8 * (NONCE_BYTES - 1 - i))) & 0xFF
        self.encrypt_into(ad, len(ad), plaintext, 0, len(plaintext), out, NONCE_BYTES, now)
        return bytes(out)

    def decrypt(self, message, ad=b"", now=None):
        """Opens ``encrypt()``'s output. Raises as ``decrypt_into``."""
        if len(message) < NONCE_BYTES + TAG_BYTES:
            raise errors.DecodeError("transport message truncated")
        n = 0
        for i in range(NONCE_BYTES):
            n = (n << 8) | message[i]
        out = bytearray(len(message) - NONCE_BYTES - TAG_BYTES)
        self.decrypt_into(n, ad, len(ad), message, NONCE_BYTES,
                          len(message) - NONCE_BYTES, out, 0, now)
        return bytes(out)
