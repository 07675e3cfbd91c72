"""Sessions in envelopes: the device (initiator) here, the peer (responder)
in ``device/peer.py``.

This is where the Noise core (``noise``, ``transport``) meets the envelope
(``envelope``) and the message-1 counter (``counter``). Still sans-I/O: bytes
in, bytes out; the caller moves them over MQTT or a serial link and passes
``now`` from its own clock.

Invariants:
- Rule 1: the routing header is bound to the crypto. Handshake prologue =
  ``PROLOGUE || hs1 header``; transport associated data = the data
  envelope's header bytes (docs/protocol.md, "Binding"). A relay that alters
  src, dst, sid or nonce makes the message fail authentication.
- Rule 2: message 1 carries a 4-byte big-endian counter before the app
  payload. The peer accepts message 1 only if the counter exceeds the highest
  accepted for that device, and stores the new value (``counter_set``,
  durable) before it answers. Plain NK senders are anonymous: anybody who
  knows the peer's public key can choose any counter, so for them the counter
  stops only verbatim replays of a message 1 (docs/security.md).
- Rule 3: anything that does not authenticate raises ``AuthError`` and
  changes no session; a refused message 1 is counted by reason in the
  directory (``count_refusal``).
- Rule 4: a device re-handshakes on an (unauthenticated) hint at most once
  per ``hint_interval`` of the caller's clock, so forged hints cannot force a
  storm of handshakes. Without a clock (``now=None``) the limit counts
  instead: at most one per ``hint_interval`` data messages sent.
- Rule 5: ``DeviceSession.send_into`` and ``receive_into`` allocate nothing
  per message on MicroPython once the session exists.
- Rule 7: threads. The core imports no threading (MicroPython), so a
  ``DeviceSession`` is used by one thread at a time (boards,
  single-threaded hosts). A host that shares one between threads uses
  ``moteseal.peer.locked.LockedDeviceSession`` (host-only, never shipped:
  the device's heap pays nothing for it), whose public methods run under a
  lock, which makes reading a ``Transport``'s send nonce for the header and
  using it one step (no nonce goes out twice), and a replay-window check and
  its commit one step; a ``PeerSessions`` takes ``lock=`` itself
  (``device/peer.py``). A ``Transport`` is never shared on its own: it is
  reached through its session's lock.
- Rule 8: a lost counter store recovers. A message 1 that authenticates
  but whose counter is not above the highest the peer holds (the device's
  store was wiped or restored) is refused as before (peer Rule 2), and the
  peer answers with a message 2 of that same handshake whose payload is
  ``COUNTER_NOTICE_TAG || highest counter`` (no session is made on either
  side). Only the peer holding the pinned key (and PSK) can write it, bound
  to this attempt's ephemeral, so it can be neither forged nor replayed;
  the device's counter jumps past that value (``EV_COUNTER_BEHIND``) and
  the next handshake succeeds. Replay protection is unchanged: the peer
  still refuses every counter at or below the highest it holds.
- Rule 9: padding (``device/padding.py``). A session made with ``pad=``
  a ``PadPolicy`` pads message 1's 0-RTT payload (after the counter),
  message 2's payload (the counter notice too) and every data plaintext
  to its bucket, and strips the padding from everything it receives; one
  made without pads and strips nothing. The peer decides per device from
  its directory (``padding(id)``), the device from its bundle, so both
  ends agree and a device provisioned before padding existed is unchanged.
  ``device.padding`` is imported only by a session that pads, so a device
  that does not pad spends no heap on it (tests/micropython/test_mp_device.py).
- Rule 6: sessions run NK or NKpsk0 (``SESSION_SUITES``). NKpsk2 mixes the
  PSK in only at message 2, so its message 1 (the 0-RTT reading and the
  replay counter) would authenticate nobody: anyone knowing the peer's key
  could forge readings for any device and lock it out with a high counter.
  NKpsk2 stays available at the Noise layer (``device.noise``).
"""

from device import envelope as E
from device.counter import COUNTER_BYTES, put_counter
from device.errors import (BufferTooSmall, DecodeError, LocalError, MessageTooLarge,
                           SessionExpired)
from device.noise import (DEFAULT_SUITE, DHLEN_BYTES, MAX_PAYLOAD_BYTES, SUITES,
                          TAG_BYTES, NKInitiator, parse_suite)

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# A flash build for a bundle without a pad policy sets this to const(0)
# (moteseal/flash/features.py ``target_flags``; Rule 9): no padding code ships.
_PAD = const(1)
SID_SPACE = const(24)  # sids 0..23 encode in one CBOR byte; consecutive handshakes differ
DEFAULT_HINT_INTERVAL = const(5)
DEFAULT_MAX_DEVICES = const(65536)  # sessions a peer holds before evicting the oldest

# Events returned by DeviceSession.receive_into.
EV_NONE = const(0)  # nothing for the application (e.g. an ignored hint)
EV_HANDSHAKE = const(1)  # handshake finished; out holds message 2's payload
EV_DATA = const(2)  # out holds a transport plaintext
EV_REHANDSHAKE = const(3)  # the peer lost our session: call handshake() again
EV_REFUSED = const(4)  # the peer refused our message 1 (wrong pinned key, PSK, revoked)
EV_COUNTER_BEHIND = const(5)  # our message-1 counter was behind the peer's; it jumped: handshake again

# Message 2's payload is empty when the peer accepts message 1; on a stale
# counter it is this tag and the highest counter the peer holds (Rule 8).
COUNTER_NOTICE_TAG = const(1)
COUNTER_NOTICE_BYTES = const(1 + 4)  # the tag, then COUNTER_BYTES (4)


# NK and NKpsk0 of each hash (Rule 6); the same str objects as noise.SUITES.
SESSION_SUITES = tuple(s for s in SUITES if "NKpsk2" not in s)


def _session_suite(suite):
    parse_suite(suite)
    if suite not in SESSION_SUITES:
        raise LocalError("sessions refuse NKpsk2 (Rule 6)")


def _limits(opts, now):
    d = {}
    for k in ("window", "rekey_interval", "max_messages", "max_age", "max_payload"):  # Transport's
        if k in opts:
            d[k] = opts[k]
    d["now"] = now
    return d


class DeviceSession:
    """A device's session with its peer, pinned to the peer's static key.

    ``handshake(payload, now)`` -> hs1 envelope bytes (0-RTT payload);
    ``receive_into(buf, n, out, now)`` -> an ``EV_*`` event, with
    ``self.last_len`` bytes of plaintext in ``out``;
    ``send_into(src, n, out, now)`` -> length of a data envelope in ``out``.
    Optional keyword limits: window, rekey_interval, max_messages, max_age,
    max_payload, hint_interval; ``pad``, a ``PadPolicy`` (Rule 9).

    Threads: one at a time; ``moteseal.peer.locked.LockedDeviceSession``
    is the shareable one (Rule 7). Raises ``LocalError`` for ``lock=``
    (a device session takes no lock; sharing it would be unsafe).
    """

    def __init__(self, backend, device_id, peer_id, peer_static, psk, counter,
                 suite=DEFAULT_SUITE, **opts):
        _session_suite(suite)
        self._backend = backend
        self.device_id = bytes(device_id)
        self.peer_id = bytes(peer_id)
        # One pinned key, or several (newest first) during a key rotation
        # overlap; the next handshake uses the first (a refusal rotates them).
        pins = [peer_static] if len(peer_static) == DHLEN_BYTES and \
            isinstance(peer_static[0], int) else list(peer_static)
        self._pins = []
        for k in pins:
            if len(k) != DHLEN_BYTES:
                raise LocalError("pinned peer keys are 32 bytes")
            self._pins.append(bytes(k))
        self._psk = psk
        self._counter = counter
        self.suite = suite
        self._opts = opts
        self.max_payload = opts.get("max_payload", MAX_PAYLOAD_BYTES)
        self._last_hint = None
        if "lock" in opts:  # Rule 7: never ignore a caller who means to share it
            raise LocalError("DeviceSession takes no lock: use LockedDeviceSession")
        self.pad = opts.get("pad")  # Rule 9
        self._P = self._unpad = None
        if _PAD and self.pad is not None:
            from device import padding
            self._P = padding  # a module: its functions are looked up without allocating
            self._unpad = padding.unpad_len
        # Rule 4 without a clock: data messages still to send before a hint
        # is acted on again (counts down to 0; stays a small int).
        self._hint_wait = 0
        self._hs = None
        self._pending_sid = -1
        self.transport = None
        self.sid = -1
        self._prev = None  # (transport, sid) of the session before, for downlink in flight
        self.last_len = 0
        self._env = E.Envelope()

    def handshake(self, payload=b"", now=None, buckets=None):
        """Starts a new handshake; returns the hs1 envelope. The current
        session (if any) keeps working until message 2 arrives. With
        padding (Rule 9) the payload pads to ``buckets`` (default: the
        policy's ``hs``). Raises ``MessageTooLarge`` (also when the padded
        payload exceeds ``max_payload``), ``LocalError`` (counter
        exhausted)."""
        n = len(payload)
        pad = self.pad
        size = n if not _PAD or pad is None else self._P.padded_size(n, buckets or pad.hs)
        if size > self.max_payload:
            raise MessageTooLarge("payload exceeds max_payload")
        c = self._counter.next()
        sid = c % SID_SPACE
        if sid == self.sid:
            # Never the live session's id: the peer would replace that session
            # at once, and if this attempt then dies the live one is gone too.
            sid = (sid + 1) % SID_SPACE
        pt = bytearray(COUNTER_BYTES + size)
        put_counter(pt, 0, c)
        pt[COUNTER_BYTES:COUNTER_BYTES + n] = payload
        if _PAD and pad is not None:
            self._P.pad_into(pt, COUNTER_BYTES, n, size)
        msg_len = DHLEN_BYTES + len(pt) + TAG_BYTES  # e, then the sealed payload
        hdr = bytearray(E.HEADER_MAX_BYTES)
        off = E.encode_header_into(hdr, E.HEAD_HS1, self.device_id, self.peer_id, sid, -1, msg_len)
        header = bytes(hdr[:off])
        hs = NKInitiator(self._backend, self._pins[0], self._psk,
                         E.PROLOGUE + header, self.suite,
                         self.max_payload + COUNTER_BYTES)
        msg = hs.write_message(pt)
        self._hs = hs
        self._pending_sid = sid
        return header + msg

    @property
    def peer_static(self):
        """The pinned peer key the next handshake uses."""
        return self._pins[0]

    @property
    def handshaking(self):
        return self._hs is not None

    def receive_into(self, buf, n, out, now=None):
        """Handles one envelope from the peer. Returns ``EV_*``. Raises
        ``DecodeError`` (malformed, not for us, unexpected), ``ReplayError``,
        ``AuthError``; on any error the session is unchanged, except that a
        message 2 that fails authentication ends that handshake attempt."""
        env = self._env.decode_into(buf, n, E.envelope_limit(self.max_payload))
        if not env.dst_is(self.device_id) or not env.src_is(self.peer_id):
            raise DecodeError("envelope not addressed to us")
        t = env.type
        if t == E.DATA:
            tr = self.transport
            if env.sid != self.sid or tr is None:
                prev = self._prev
                tr = prev[0] if prev is not None and env.sid == prev[1] else None
                if tr is None:
                    raise DecodeError("no such session")
            self.last_len = tr.decrypt_into(env.nonce, buf, env.msg_off, buf, env.msg_off,
                                            env.msg_len, out, 0, now,
                                            self._unpad)  # None without padding
            return EV_DATA
        if t == E.HS2:
            hs = self._hs
            if hs is None or env.sid != self._pending_sid:
                raise DecodeError("unexpected handshake message")
            if env.msg_len - DHLEN_BYTES - TAG_BYTES > len(out):
                raise DecodeError("hs2 payload larger than out")
            # Spent whatever happens: a Noise handshake cannot be retried, so
            # a replayed message 2 meets "unexpected", a remote error.
            self._hs = None
            payload = hs.read_message(memoryview(buf)[env.msg_off:env.msg_off + env.msg_len])
            pn = len(payload)
            if _PAD and self.pad is not None:
                pn = self._unpad(payload, 0, pn)  # Rule 9; DecodeError ends this attempt
            if pn == COUNTER_NOTICE_BYTES and payload[0] == COUNTER_NOTICE_TAG:
                # Authenticated: our counter store was lost (Rule 8). The
                # big-endian counter is read here: a device build strips
                # counter.get_counter (peer-only).
                v = 0
                for i in range(1, COUNTER_NOTICE_BYTES):
                    v = (v << 8) | payload[i]
                self._counter.skip_past(v)
                self.last_len = 0
                return EV_COUNTER_BEHIND
            if self.transport is not None:
                self._prev = (self.transport, self.sid)
            self.transport = hs.into_transport(**_limits(self._opts, now))
            self.sid = self._pending_sid
            for i in range(pn):
                out[i] = payload[i]
            self.last_len = pn
            return EV_HANDSHAKE
        if t == E.HINT:
            if env.reason == E.HINT_REFUSED and self._hs is not None \
                    and env.sid == self._pending_sid:
                # Unauthenticated, so it only ends this attempt; the next
                # handshake tries the next pinned key, if there is one.
                self._hs = None
                self._pins.append(self._pins.pop(0))
                return EV_REFUSED
            if env.sid != self.sid and env.sid != self._pending_sid:
                return EV_NONE  # about a session we no longer have
            gap = self._opts.get("hint_interval", DEFAULT_HINT_INTERVAL)
            if now is None:
                # Rule 4 without a clock: data messages sent are the clock.
                if self._hint_wait > 0:
                    return EV_NONE
                self._hint_wait = gap
                return EV_REHANDSHAKE
            if self._last_hint is not None and now - self._last_hint < gap:
                return EV_NONE  # Rule 4
            self._last_hint = now
            return EV_REHANDSHAKE
        raise DecodeError("unexpected handshake message")  # hs1: devices only send it

    def receive(self, data, now=None):
        """Allocating convenience: returns ``(event, payload_bytes)``."""
        out = bytearray(max(self.max_payload, len(data)))
        ev = self.receive_into(data, len(data), out, now)
        return ev, bytes(out[:self.last_len])

    def send_into(self, src, n, out, now=None, buckets=None):
        """Seals ``src[:n]`` into a data envelope in ``out``; returns its
        length. With padding (Rule 9) the plaintext is copied into ``out``,
        padded there to ``buckets`` (default: the policy's ``up``) and sealed
        in place, so ``out`` needs room for the padded size. Raises
        ``LocalError`` (no session), ``SessionExpired``, ``MessageTooLarge``,
        ``BufferTooSmall``."""
        tr = self.transport
        if tr is None:
            raise LocalError("no session: handshake first")
        if tr.expired(now):
            raise SessionExpired("session spent; handshake again")
        pad = self.pad
        size = n if not _PAD or pad is None else self._P.padded_size(n, buckets or pad.up)
        if size > tr.max_payload:
            raise MessageTooLarge("message exceeds max_payload")
        off = E.encode_header_into(out, E.HEAD_DATA, self.device_id, self.peer_id,
                                   self.sid, tr.send_nonce, size + TAG_BYTES)
        if not _PAD or pad is None:
            w = off + tr.encrypt_into(out, off, src, 0, n, out, off, now)
        else:
            if off + size + TAG_BYTES > len(out):
                raise BufferTooSmall("envelope buffer too small")
            for i in range(n):  # no slice: a memoryview slice allocates (STYLE.md 4)
                out[off + i] = src[i]
            self._P.pad_into(out, off, n, size)
            w = off + tr.encrypt_into(out, off, out, off, size, out, off, now)
        if self._hint_wait > 0:
            self._hint_wait -= 1
        return w

    def send(self, payload, now=None, buckets=None):
        """Allocating convenience: returns the data envelope bytes."""
        size = len(payload)
        if self.pad is not None:
            size = self._P.padded_size(size, buckets or self.pad.up)
        out = bytearray(E.HEADER_MAX_BYTES + size + TAG_BYTES)
        return bytes(out[:self.send_into(payload, len(payload), out, now, buckets)])
