"""The peer side of sessions: the responder for many devices.

Split from ``device/session.py`` (whose Rules 1-6 apply here too) so that a
device, which only ever initiates, never loads this code.

Invariants:
- Rule 1: one current session per device, plus one earlier one, so messages
  in flight across a re-handshake still decrypt. A session is *confirmed*
  once the device has sent authenticated data on it; the newest confirmed
  session is never pushed out by unconfirmed ones, and downlink goes to the
  newest confirmed session (else the newest).
- Rule 2: message 1 is accepted only if its counter exceeds the highest the
  directory holds for that device, and the new value is stored (durably)
  before message 2 is written.
- Rule 3: a refused message 1 raises ``AuthError``, ``ReplayError``,
  ``DecodeError`` (or ``RemoteError`` with reason ``busy``, Rule 5) with a
  ``reply`` (a refusal hint; Rule 8's notice for a stale counter) and a
  ``reason``, and the directory counts the refusal by reason. Nothing else
  changes. A message 1 whose counter the directory cannot store raises
  ``StorageError`` (reason ``unstored``, counted, no reply: the device
  retries) and changes no session.
- Rule 4: a session lives only while the directory backs it. Data in and
  downlink out first re-check the device's sessions whenever the
  directory's ``revision()`` changed (read at most once per ``recheck``
  units of ``now``; on every call without ``now``): a session of a device
  since revoked or re-provisioned (``device_epoch`` differs; psk suites), or
  on a peer key since retired, is dropped, so its data gets an
  unknown-session hint and ``send`` raises ``LocalError``.
- Rule 5: unconfirmed sessions never push out confirmed ones. At
  ``max_devices`` a new device's message 1 evicts the oldest device that
  has no confirmed session; if every device has one, it is refused (``busy``).
- Rule 6: while the directory marks a device ``restored`` (its counter came
  from a backup, so recorded message 1s above it may be replays), message
  1's 0-RTT payload is held in the session, not delivered; the device's
  first data on that session proves it live (only the holder of the
  ephemeral key can send it) and releases it as ``Received.early``.
- Rule 7: a refusal does the same work whatever its reason. For an unknown
  or revoked id, message 1 is read against a random dummy PSK drawn once
  per ``PeerSessions``, so the DH and decrypt steps match a known id's bad
  message: refusal latency does not tell which ids are provisioned.
- Rule 8: a message 1 refused for its counter (Rule 2) that authenticated
  is answered with ``device/session.py`` Rule 8's counter notice, a message
  2 that makes no session, instead of a refusal hint.
- Rule 9: padding per device (``device/session.py`` Rule 9). The
  directory's optional ``padding(id)`` returns a ``PadPolicy`` or None
  (a directory without the method: None, nobody pads). It is read once
  per message 1 and kept in the session entry, so a session pads, or not,
  for its whole life. A message 1 whose padding is malformed is refused
  as ``malformed`` before its counter is stored.
- Rule 10: the fast path is a shortcut, never a second parser with its own
  verdicts. A data envelope (as ``bytes``) whose header up to the nonce is,
  byte for byte, the canonical header of a session held here (``_fast``,
  kept in step with ``_sessions`` by ``_put``), whose nonce and length heads
  are canonical and whose length is exact, goes straight to its session;
  anything else, or any session not yet re-checked at the current revision
  (Rule 4), takes the general path, which gives every verdict. On the
  shortcut the results, errors and state changes are the general path's.
"""

from device import envelope as E
from device.counter import COUNTER_BYTES, get_counter, put_counter
from device.errors import (AuthError, DecodeError, LocalError, RemoteError,
                           ReplayError, SessionExpired, StorageError)
from device.noise import (DEFAULT_SUITE, MAX_PAYLOAD_BYTES, TAG_BYTES,
                          NKResponder, parse_suite)
from device.padding import pad_bytes, padded_size, pad_into, unpad_len
from device.session import (COUNTER_NOTICE_BYTES, COUNTER_NOTICE_TAG,
                            DEFAULT_MAX_DEVICES, _limits, _session_suite)

DEFAULT_RECHECK = 0.5  # Rule 4: directory re-read at most this often (units of `now`)


class NonpersistingDirectory:
    """An in-memory peer directory: forgets counters and devices on restart.
    Tests and the demo only; ``moteseal.keys.registry.Registry`` persists.

    The directory duck type PeerSessions needs: ``psk_for(id)``,
    ``is_revoked(id)``, ``counter_get(id)``, ``counter_set(id, v)`` (durable;
    raises ``StorageError`` if it cannot be), ``note_static_used(id, pub)``,
    ``statics()`` (newest first), ``count_refusal(id, reason)``; for Rule 4
    ``revision()`` (a value that changes whenever a device or a peer key may
    have changed), ``device_epoch(id)`` (None if unknown or revoked, else a
    value that changes on re-provisioning) and ``static_live(pub)``; for
    Rule 6 ``restored(id)`` and ``clear_restored(id)``; optionally, for
    Rule 9, ``padding(id)`` (a ``PadPolicy`` or None).

    Not thread-safe: the ``PeerSessions`` using it serialises its calls."""

    def __init__(self, statics):
        self._statics = list(statics)
        self.psks = {}
        self.revoked = set()
        self.counters = {}
        self.used = {}
        self.refusals = {}
        self.epochs = {}
        self.pads = {}
        self.rev = 0

    def add(self, device_id, psk, pad=None):
        device_id = bytes(device_id)
        self.psks[device_id] = psk
        self.pads[device_id] = pad
        self.epochs[device_id] = self.epochs.get(device_id, 0) + 1
        self.revoked.discard(device_id)
        self.rev += 1

    def revoke(self, device_id):
        self.revoked.add(bytes(device_id))
        self.rev += 1

    def retire(self, static_pub):
        self._statics = [k for k in self._statics if k[1] != static_pub]
        self.rev += 1

    def psk_for(self, device_id):
        return self.psks.get(bytes(device_id))

    def is_revoked(self, device_id):
        return bytes(device_id) in self.revoked

    def counter_get(self, device_id):
        return self.counters.get(bytes(device_id), -1)

    def counter_set(self, device_id, value):
        self.counters[bytes(device_id)] = value

    def note_static_used(self, device_id, static_pub):
        self.used[bytes(device_id)] = static_pub

    def statics(self):
        return self._statics

    def count_refusal(self, device_id, reason):
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def revision(self):
        return self.rev

    def device_epoch(self, device_id):
        device_id = bytes(device_id)
        if device_id in self.revoked:
            return None
        return self.epochs.get(device_id)

    def static_live(self, static_pub):
        for k in self._statics:
            if k[1] == static_pub:
                return True
        return False

    def padding(self, device_id):
        return self.pads.get(bytes(device_id))

    def restored(self, device_id):
        return False  # nothing here outlives the process, so nothing is restored

    def clear_restored(self, device_id):
        pass


class Received:
    """What ``PeerSessions.receive`` made of one envelope. A plain value:
    safe to hand to another thread once returned."""

    __slots__ = ("kind", "device_id", "payload", "reply", "early")

    def __init__(self, kind, device_id, payload, reply, early=None):
        self.kind = kind  # "hs1" (0-RTT payload), "data", or "hint"
        self.device_id = device_id
        self.payload = payload  # decrypted application bytes, or None (hint; held, Rule 6)
        self.reply = reply  # envelope to send back to device_id, or None
        self.early = early  # a held message-1 payload this data released (Rule 6), sent before it


# A session entry: [sid, transport, confirmed, epoch, static pub, revision
# it was last checked at, held 0-RTT payload or None, PadPolicy or None,
# its fast-path key or None].
_CONFIRMED = 2
_HELD = 6
_PAD = 7
_FAST_KEY = 8
_HEAD_DATA = E.HEAD_DATA


def _fast_key(dev, peer_id, sid):
    """The canonical data-envelope header through ``sid`` (Rule 10), or None
    if the sid takes more than one byte (then only the general path)."""
    if sid >= 24:
        return None
    return (bytes((0x86, E.HEAD_DATA, 0x40 | len(dev))) + dev
            + bytes((0x40 | len(peer_id),)) + peer_id + bytes((sid,)))


class PeerSessions:
    """The responder for many devices (the peer). One current session per
    device, plus the previous one so messages in flight across a
    re-handshake still decrypt.

    ``receive(data, now)`` -> ``Received``; ``send(device_id, payload, now)``
    -> data envelope. A refused message 1 raises ``AuthError`` or
    ``ReplayError`` whose ``reply`` attribute holds a refusal hint to send;
    one the directory cannot store raises ``StorageError``.

    Options (besides the transport limits): ``max_devices``, ``recheck``
    (Rule 4), ``lock``.

    Threads: shareable only if made with ``lock=`` (``device/session.py``
    Rule 7: ``receive`` and ``send`` then run under it, and so every call
    into the directory); else one caller at a time.
    """

    def __init__(self, backend, peer_id, directory, suite=DEFAULT_SUITE, **opts):
        _session_suite(suite)
        self._psk_pos = parse_suite(suite)[0]
        self._backend = backend
        self.peer_id = bytes(peer_id)
        self.directory = directory
        self.suite = suite
        self._opts = opts
        self.max_payload = opts.get("max_payload", MAX_PAYLOAD_BYTES)
        self._sessions = {}  # device id -> [entry, ...] newest first, <= 2
        self._fast = {}  # Rule 10: fast-path key -> (device id, entry)
        self._fast_skip = 5 + len(self.peer_id)  # fast-path key length less the src id
        self._unconfirmed = {}  # device ids with no confirmed session (Rule 5), oldest first
        self._max_devices = opts.get("max_devices", DEFAULT_MAX_DEVICES)
        self._recheck = opts.get("recheck", DEFAULT_RECHECK)
        self._rev = None
        self._rev_at = None
        self._env = E.Envelope()
        self._limit = E.envelope_limit(self.max_payload)
        self._lock = opts.get("lock")
        # Rule 7: read unknown and revoked ids' message 1 against this.
        self._dummy_psk = backend.random_bytes(32) if self._psk_pos >= 0 else None

    def sessions(self, device_id):
        """``[(sid, Transport), ...]`` for a device, newest first (at most 2)."""
        return [(e[0], e[1]) for e in self._sessions.get(bytes(device_id), [])]

    def _hint(self, env, reason):
        return E.encode(E.HEAD_HINT, self.peer_id, env.src, env.sid, reason)

    def _refuse(self, err, env, device_id, reason):
        self.directory.count_refusal(device_id, reason)
        err.reply = self._hint(env, E.HINT_REFUSED)
        err.reason = reason
        return err

    def _put(self, dev, entries):
        # Keeps _unconfirmed (Rule 5) and _fast (Rule 10) in step with _sessions.
        self._unconfirmed.pop(dev, None)
        fast = self._fast
        for e in self._sessions.get(dev, ()):
            fast.pop(e[_FAST_KEY], None)
        for e in entries:
            if e[_FAST_KEY] is not None:
                fast[e[_FAST_KEY]] = (dev, e)
        if not entries:
            self._sessions.pop(dev, None)
            return
        self._sessions[dev] = entries
        for e in entries:
            if e[_CONFIRMED]:
                return
        self._unconfirmed[dev] = True

    def _revision(self, now):
        if now is None or self._rev_at is None or not 0 <= now - self._rev_at < self._recheck:
            self._rev = self.directory.revision()
            self._rev_at = now
        return self._rev

    def _live(self, dev, now):
        """The device's entries the directory still backs (Rule 4)."""
        entries = self._sessions.get(dev)
        if not entries:
            return None
        rev = self._revision(now)
        for e in entries:
            if e[5] != rev:
                break
        else:
            return entries  # all checked at this revision: the common case
        d = self.directory
        keep = []
        for e in entries:
            if e[5] != rev:
                if self._psk_pos >= 0:
                    epoch = d.device_epoch(dev)
                    if epoch is None or epoch != e[3]:
                        continue  # revoked or re-provisioned since
                if not d.static_live(e[4]):
                    continue  # its peer key was retired
                e[5] = rev
            keep.append(e)
        if len(keep) != len(entries):
            self._put(dev, keep)
        return keep

    def receive(self, data, now=None):
        lk = self._lock
        if lk is None:
            if data.__class__ is bytes and len(data) > 2 and data[1] == _HEAD_DATA:
                got = self._fast_data(data, now)  # Rule 10, without a call more
                if got is not None:
                    return got
            return self._general(data, now)
        with lk:
            return self._receive(data, now)

    def _receive(self, data, now):
        if data.__class__ is bytes and len(data) > 2 and data[1] == _HEAD_DATA:
            got = self._fast_data(data, now)  # Rule 10
            if got is not None:
                return got
        return self._general(data, now)

    def _general(self, data, now):
        env = self._env.decode_into(data, len(data), self._limit)
        if not env.dst_is(self.peer_id):
            raise DecodeError("envelope not addressed to this peer")
        dev = env.src
        if env.type == E.HS1:
            return self._hs1(data, env, dev, now)
        if env.type == E.DATA:
            return self._data(data, env, dev, now)
        raise DecodeError("a peer accepts only handshake message 1 and data")

    def _hs1(self, data, env, dev, now):
        d = self.directory
        # Read before the checks below, so a change made meanwhile shows as
        # a newer revision and the session is re-checked (Rule 4).
        rev = self._revision(now)
        psk = epoch = refusal = None
        if self._psk_pos >= 0:
            epoch = d.device_epoch(dev)  # before the PSK: a change between them drops the session
            revoked = d.is_revoked(dev)  # both looked up whatever the answer (Rule 7)
            psk = d.psk_for(dev)
            if revoked or psk is None:
                refusal = "revoked" if revoked else "unknown-device"
                psk = self._dummy_psk  # the same DH/decrypt work, bound to fail (Rule 7)
        prologue = E.PROLOGUE + bytes(data[:env.msg_off])
        msg = env.msg
        hs = payload = used = None
        for priv, pub in d.statics():  # two during a key rotation overlap
            cand = NKResponder(self._backend, (priv, pub), psk, prologue, self.suite,
                               self.max_payload + COUNTER_BYTES)
            try:
                payload = cand.read_message(msg)
            except AuthError:
                continue
            except DecodeError as e:
                if refusal is not None:
                    break
                raise self._refuse(e, env, dev, "malformed")
            hs, used = cand, pub
            break
        if refusal is not None:
            # Even if the dummy PSK authenticated (it cannot: 256 random bits).
            raise self._refuse(AuthError("message does not authenticate"), env, dev, refusal)
        if hs is None:
            raise self._refuse(AuthError("message does not authenticate"), env, dev, "auth")
        if len(payload) < COUNTER_BYTES:
            raise self._refuse(DecodeError("message 1 lacks its counter"), env, dev, "malformed")
        pad = getattr(d, "padding", None)
        pad = pad(dev) if pad is not None else None  # Rule 9
        end = len(payload)
        if pad is not None:
            try:
                end = COUNTER_BYTES + unpad_len(payload, COUNTER_BYTES, end - COUNTER_BYTES)
            except DecodeError as e:
                raise self._refuse(e, env, dev, "malformed")
        c = get_counter(payload, 0)
        highest = d.counter_get(dev)
        if c <= highest:
            err = self._refuse(ReplayError("replayed handshake message 1"), env, dev, "replay")
            # Rule 8 (session.py Rule 8): tell the holder of this handshake's
            # ephemeral (authenticated, in message 2) the highest counter we
            # hold; no session is kept. A replayer cannot read it.
            notice = bytearray(COUNTER_NOTICE_BYTES)
            notice[0] = COUNTER_NOTICE_TAG
            put_counter(notice, 1, highest)
            if pad is not None:
                notice = pad_bytes(notice, pad.hs)
            err.reply = E.encode(E.HEAD_HS2, self.peer_id, dev, env.sid, hs.write_message(notice))
            raise err
        old = [s for s in self._sessions.get(dev, []) if s[0] != env.sid]
        victim = None
        if not old and dev not in self._sessions and len(self._sessions) >= self._max_devices:
            # Bounded memory: plain NK lets anyone open sessions under new ids,
            # but only a device without a confirmed session makes room (Rule 5).
            for victim in self._unconfirmed:
                break
            if victim is None:
                raise self._refuse(RemoteError("every session slot holds a confirmed session"),
                                   env, dev, "busy")
        try:
            d.counter_set(dev, c)  # durable before we answer (Rule 2)
            d.note_static_used(dev, used)
        except StorageError as e:
            d.count_refusal(dev, "unstored")
            e.reason = "unstored"
            raise
        msg2 = hs.write_message(b"" if pad is None else pad_bytes(b"", pad.hs))
        reply = E.encode(E.HEAD_HS2, self.peer_id, dev, env.sid, msg2)
        tr = hs.into_transport(**_limits(self._opts, now))
        if victim is not None:
            self._put(victim, [])
        # Keep the newest confirmed session, so a flood of message 1s (with
        # plain NK, from anybody) cannot push out a working session.
        keep = old[:1]
        for e in old:
            if e[_CONFIRMED]:
                keep = [e]
                break
        early = bytes(payload[COUNTER_BYTES:end])
        held = None
        if d.restored(dev):
            held, early = early, None  # Rule 6: released by the device's first data
        # confirmed once the device has sent authenticated data on it, which
        # proves it holds message 2's keys.
        self._put(dev, [[env.sid, tr, False, epoch, used, rev, held, pad,
                         _fast_key(dev, self.peer_id, env.sid)]] + keep)
        return Received("hs1", dev, early, reply)

    def _fast_data(self, data, now):
        """Rule 10: a ``Received`` for a data envelope on a session held here,
        or None to take the general path (which then gives every verdict)."""
        n = len(data)
        off = self._fast_skip + (data[2] & 31)
        if n > self._limit or off + 2 > n:
            return None
        hit = self._fast.get(data[:off])
        if hit is None:
            return None
        dev, entry = hit
        at = self._rev_at
        if now is None or at is None or not 0 <= now - at < self._recheck:
            rev = self._revision(now)
        else:
            rev = self._rev  # as _revision(now) would answer, without the call
        for e in self._sessions[dev]:
            if e[5] != rev:
                return None  # Rule 4 first
        b = data[off]  # the nonce: canonical uint
        if b < 24:
            nonce = b
            off += 1
        elif b == 25 and off + 3 <= n:
            nonce = (data[off + 1] << 8) | data[off + 2]
            if nonce < 0x100:
                return None
            off += 3
        elif b == 24 and off + 2 <= n:
            nonce = data[off + 1]
            if nonce < 24:
                return None
            off += 2
        elif (b == 26 or b == 27) and off + 1 + (1 << (b - 24)) <= n:
            size = 1 << (b - 24)
            nonce = int.from_bytes(data[off + 1:off + 1 + size], "big")
            if nonce > E.NONCE_MAX or nonce < (1 << (4 * size)):
                return None
            off += 1 + size
        else:
            return None
        if off + 1 > n:
            return None
        b = data[off]  # the ciphertext: canonical bstr head, exact length
        if 0x40 <= b < 0x58:
            m = b - 0x40
            off += 1
        elif b == 0x58 and off + 2 <= n and data[off + 1] >= 24:
            m = data[off + 1]
            off += 2
        elif b == 0x59 and off + 3 <= n and data[off + 1]:
            m = (data[off + 1] << 8) | data[off + 2]
            off += 3
        else:
            return None
        if off + m != n:
            return None
        try:
            if entry[_CONFIRMED] and entry[_PAD] is None:  # the steady state, without _open's call
                out = bytearray(m - TAG_BYTES if m > TAG_BYTES else 0)
                entry[1].decrypt_into(nonce, data, off, data, off, m, out, 0, now)
                return Received("data", dev, bytes(out), None, None)
            return self._open(data, off, m, nonce, dev, entry, now)
        except SessionExpired:
            return None  # nothing changed (Rule 3): the general path answers it

    def _data(self, data, env, dev, now):
        tr = entry = None
        for e in self._live(dev, now) or ():
            if e[0] == env.sid:
                entry, tr = e, e[1]
        if tr is None:
            return Received("hint", dev, None, self._hint(env, E.HINT_UNKNOWN_SESSION))
        try:
            return self._open(data, env.msg_off, env.msg_len, env.nonce, dev, entry, now)
        except SessionExpired:
            self._put(dev, [s for s in self._sessions[dev] if s[1] is not tr])
            return Received("hint", dev, None, self._hint(env, E.HINT_SESSION_EXPIRED))

    def _open(self, data, msg_off, msg_len, nonce, dev, entry, now):
        # Decrypts a data message on entry's session; raises as
        # Transport.decrypt_into.
        out = bytearray(msg_len - TAG_BYTES if msg_len > TAG_BYTES else 0)
        n = entry[1].decrypt_into(nonce, data, msg_off, data, msg_off, msg_len, out, 0, now,
                                  None if entry[_PAD] is None else unpad_len)
        early = None
        if not entry[_CONFIRMED]:
            entry[_CONFIRMED] = True
            self._unconfirmed.pop(dev, None)
            if entry[_HELD] is not None:
                early, entry[_HELD] = entry[_HELD], None
                try:
                    self.directory.clear_restored(dev)
                except StorageError:
                    pass  # stays marked: its next 0-RTT payload waits too (the safe side)
        return Received("data", dev, bytes(out) if n == len(out) else bytes(out[:n]), None, early)

    def send(self, device_id, payload, now=None, buckets=None):
        """A data envelope to ``device_id`` on the newest session the device
        is known to hold: the newest one it has sent data on, else the
        newest (message 2 may still be on its way). If that session pads
        (Rule 9) the payload pads to ``buckets`` (default: its policy's
        ``down``). Raises ``LocalError`` if the device has no session (also
        once revoked, Rule 4), ``MessageTooLarge``."""
        lk = self._lock
        if lk is None:
            return self._send(device_id, payload, now, buckets)
        with lk:  # the header's nonce and the sealing nonce are one
            return self._send(device_id, payload, now, buckets)

    def _send(self, device_id, payload, now, buckets):
        dev = bytes(device_id)
        s = self._live(dev, now)
        if not s:
            raise LocalError("no session with that device")
        sid, tr, pad = s[0][0], s[0][1], s[0][_PAD]
        for e in s:
            if e[2]:
                sid, tr, pad = e[0], e[1], e[_PAD]
                break
        if tr.expired(now):
            raise SessionExpired("session spent; the device must handshake again")
        n = len(payload)
        size = n if pad is None else padded_size(n, buckets or pad.down)
        out = bytearray(E.HEADER_MAX_BYTES + size + TAG_BYTES)
        off = E.encode_header_into(out, E.HEAD_DATA, self.peer_id, dev, sid,
                                   tr.send_nonce, size + TAG_BYTES)
        out[off:off + n] = payload
        if pad is not None:
            pad_into(out, off, n, size)
        n = off + tr.encrypt_into(out, off, out, off, size, out, off, now)
        return bytes(out[:n])
