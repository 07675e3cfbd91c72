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
- Rule 3: a refused message 1 raises ``AuthError``, ``ReplayError`` or
  ``DecodeError`` with a ``reply`` (a refusal hint) and a ``reason``, and the
  directory counts the refusal by reason. Nothing else changes.
- Rule 4: a refusal does the same work whatever its reason. For an unknown
  or revoked id, message 1 is read against a random dummy PSK drawn once
  per ``PeerSessions``, so the DH and decrypt steps match a known id's bad
  message: refusal latency does not tell which ids are provisioned.
"""

from device import envelope as E
from device.counter import COUNTER_BYTES, get_counter, put_counter
from device.errors import (AuthError, DecodeError, LocalError, ReplayError,
                           SessionExpired)
from device.noise import (DEFAULT_SUITE, MAX_PAYLOAD_BYTES, TAG_BYTES,
                          NKResponder, parse_suite)
from device.session import (COUNTER_NOTICE_BYTES, COUNTER_NOTICE_TAG,
                            DEFAULT_MAX_DEVICES, _limits, _session_suite)


class NonpersistingDirectory:
    """An in-memory peer directory: forgets counters and devices on restart.
    Tests and the demo only; ``moteseal.keys.registry.Registry`` persists.

    The directory duck type PeerSessions needs: ``psk_for(id)``,
    ``is_revoked(id)``, ``counter_get(id)``, ``counter_set(id, v)`` (durable),
    ``note_static_used(id, pub)``, ``statics()`` (newest first),
    ``count_refusal(id, reason)``."""

    def __init__(self, statics):
        self._statics = list(statics)
        self.psks = {}
        self.revoked = set()
        self.counters = {}
        self.used = {}
        self.refusals = {}

    def add(self, device_id, psk):
        self.psks[bytes(device_id)] = psk

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


class Received:
    """What ``PeerSessions.receive`` made of one envelope."""

    def __init__(self, kind, device_id, payload, reply):
        self.kind = kind  # "hs1" (0-RTT payload), "data", or "hint"
        self.device_id = device_id
        self.payload = payload  # decrypted application bytes, or None
        self.reply = reply  # envelope to send back to device_id, or None


class PeerSessions:
    """The responder for many devices (the peer). One current session per
    device, plus the previous one so messages in flight across a
    re-handshake still decrypt.

    ``receive(data, now)`` -> ``Received``; ``send(device_id, payload, now)``
    -> data envelope. A refused message 1 raises ``AuthError`` or
    ``ReplayError`` whose ``reply`` attribute holds a refusal hint to send.

    Threads: shareable only if made with ``lock=`` (``device/session.py``
    Rule 7: ``receive`` and ``send`` then run under it); else one thread at
    a time. The directory must then be usable from any thread that calls.
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
        self._sessions = {}  # device id -> [(sid, Transport) newest first, <= 2]
        self._max_devices = opts.get("max_devices", DEFAULT_MAX_DEVICES)
        self._env = E.Envelope()
        self._limit = E.envelope_limit(self.max_payload)
        self._lock = opts.get("lock")
        # Rule 4: read unknown and revoked ids' message 1 against this.
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

    def receive(self, data, now=None):
        lk = self._lock
        if lk is None:
            return self._receive(data, now)
        with lk:
            return self._receive(data, now)

    def _receive(self, data, now):
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
        psk = refusal = None
        if self._psk_pos >= 0:
            revoked = d.is_revoked(dev)  # both looked up whatever the answer (Rule 4)
            psk = d.psk_for(dev)
            if revoked or psk is None:
                refusal = "revoked" if revoked else "unknown-device"
                psk = self._dummy_psk  # the same DH/decrypt work, bound to fail
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
        c = get_counter(payload, 0)
        highest = d.counter_get(dev)
        if c <= highest:
            err = self._refuse(ReplayError("replayed handshake message 1"), env, dev, "replay")
            # session.py Rule 8: tell the holder of this handshake's ephemeral
            # (authenticated, in message 2) the highest counter we hold; no
            # session is kept. A replayer cannot read it.
            notice = bytearray(COUNTER_NOTICE_BYTES)
            notice[0] = COUNTER_NOTICE_TAG
            put_counter(notice, 1, highest)
            err.reply = E.encode(E.HEAD_HS2, self.peer_id, dev, env.sid, hs.write_message(notice))
            raise err
        d.counter_set(dev, c)  # durable before we answer (Rule 2)
        d.note_static_used(dev, used)
        msg2 = hs.write_message(b"")
        reply = E.encode(E.HEAD_HS2, self.peer_id, dev, env.sid, msg2)
        tr = hs.into_transport(**_limits(self._opts, now))
        old = [s for s in self._sessions.get(dev, []) if s[0] != env.sid]
        if not old and len(self._sessions) >= self._max_devices:
            # Bounded memory: plain NK lets anyone open sessions under new ids.
            del self._sessions[next(iter(self._sessions))]
        # Keep the newest confirmed session, so a flood of message 1s (with
        # plain NK, from anybody) cannot push out a working session.
        keep = old[:1]
        for e in old:
            if e[2]:
                keep = [e]
                break
        # [sid, transport, confirmed]: confirmed once the device has sent
        # authenticated data on it, which proves it holds message 2's keys.
        self._sessions[dev] = [[env.sid, tr, False]] + keep
        return Received("hs1", dev, bytes(payload[COUNTER_BYTES:]), reply)

    def _data(self, data, env, dev, now):
        tr = entry = None
        for e in self._sessions.get(dev, []):
            if e[0] == env.sid:
                entry, tr = e, e[1]
        if tr is None:
            return Received("hint", dev, None, self._hint(env, E.HINT_UNKNOWN_SESSION))
        out = bytearray(max(0, env.msg_len - TAG_BYTES))
        try:
            n = tr.decrypt_into(env.nonce, data, env.msg_off, data, env.msg_off,
                                env.msg_len, out, 0, now)
        except SessionExpired:
            self._sessions[dev] = [s for s in self._sessions[dev] if s[1] is not tr]
            return Received("hint", dev, None, self._hint(env, E.HINT_SESSION_EXPIRED))
        entry[2] = True
        return Received("data", dev, bytes(out[:n]), None)

    def send(self, device_id, payload, now=None):
        """A data envelope to ``device_id`` on the newest session the device
        is known to hold: the newest one it has sent data on, else the
        newest (message 2 may still be on its way). Raises ``LocalError`` if
        the device has no session."""
        lk = self._lock
        if lk is None:
            return self._send(device_id, payload, now)
        with lk:  # the header's nonce and the sealing nonce are one
            return self._send(device_id, payload, now)

    def _send(self, device_id, payload, now):
        dev = bytes(device_id)
        s = self._sessions.get(dev)
        if not s:
            raise LocalError("no session with that device")
        sid, tr = s[0][0], s[0][1]
        for e in s:
            if e[2]:
                sid, tr = e[0], e[1]
                break
        if tr.expired(now):
            raise SessionExpired("session spent; the device must handshake again")
        out = bytearray(E.HEADER_MAX_BYTES + len(payload) + TAG_BYTES)
        off = E.encode_header_into(out, E.HEAD_DATA, self.peer_id, dev, sid,
                                   tr.send_nonce, len(payload) + TAG_BYTES)
        n = off + tr.encrypt_into(out, off, payload, 0, len(payload), out, off, now)
        return bytes(out[:n])
