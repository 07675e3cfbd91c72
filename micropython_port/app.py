"""The device application on MicroPython: one ``Device`` (a session, a
link, readings and replies) and its MQTT link. ``micropython_port/main.py``
loads the provisioned bundle first and imports this module afterwards, so
the bundle reader's code is gone from the heap before the session's code
arrives (docs/micropython.md, "Memory").

Flow: the first reading rides in handshake message 1 (0-RTT); later ones in
data envelopes. The link is MQTT (``micropython_port.mqtt``; publish on
``moteseal/v1/up/<id>``, subscribe to ``moteseal/v1/down/<id>``) or a UART
(``micropython_port.uart_link``), as the bundle's ``link`` says.

Invariants:
- Rule 1: the device handshakes again when it has no session, when its
  session is spent (``SessionExpired``), when the peer says it lost the
  session (``EV_REHANDSHAKE``, which ``DeviceSession`` accepts at most once
  per ``hint_interval``), after a refusal (``EV_REFUSED``: the next pinned
  key), after the peer's counter notice (``EV_COUNTER_BEHIND``: the counter
  has jumped past the peer's), or when message 2 does not come within
  ``hs_timeout_ms``; nothing
  else is sent while message 2 is awaited, and handshakes are at least
  ``_HS_GAP_MS`` apart whatever the trigger, so forged hints cannot make it
  flood the peer.
- Rule 2: the message-1 counter lives in ``FileCounterStore`` on flash,
  reserved in chunks (``device/counter.py``): one flash write per chunk of
  handshakes, and a reboot never reuses a value.
- Rule 3: bad envelopes from the link (``RemoteError``) are counted and
  ignored; nothing logged holds a key, the PSK or a plaintext.
- Rule 4: after the handshake, one reading costs no heap allocation: the
  reading is encoded into a fixed buffer, framed into its outbox slot,
  sealed with ``send_into`` into a second buffer, and published from
  preallocated MQTT slots (or framed into the UART link's buffer). The
  clock passed to the session is a whole-second counter kept in small ints
  (``ticks_ms`` wraps; floats would allocate).
- Rule 5: retention (``retain`` readings, default 16; docs/protocol.md,
  "Delivery"). Each reading is framed by a ``device.delivery.Outbox`` (a
  fixed buffer) and kept until the peer's cumulative acknowledgement
  covers it; after every handshake, and when the oldest has waited
  ``resend_s`` without one, every retained reading is sent again, oldest
  first (the peer drops what it has). An acknowledgement is never a
  command. A full outbox evicts its oldest reading: counted
  (``evicted``) and reported (the ``evicted`` event), never silent. The
  resend clock is ``now`` (whole seconds, Rule 4), not ``ticks_ms``,
  whose wrap would break the outbox's plain subtraction. Resends go out
  from ``run``'s loop, never from inside the link's receive callback
  (where the MQTT client may not publish at QoS 1).
- Rule 6: commands. A command frame (``0x02 | id u32 | command``, from the
  hub) is handed to ``on_reply`` once per id, and the id is answered
  (``0x03 | id u32``) from ``run``'s loop, so the sender sees that the
  device got it; a resent command is only answered again. A bare payload
  is a command without an answer, as before.
- Rule 7: groups (``micropython_port/app_groups.py``, with ``groups``):
  the hub's key messages are taken first; a group message (byte 1 is 8,
  never an envelope's) goes to ``on_group`` once verified and fresh.
- Rule 8: transfers (docs/protocol.md, "Transfers"). A transfer frame
  (0x10, 0x11, 0x13) goes to the ``device.transfer.Receiver`` that
  ``micropython_port.update.receiver`` makes at
  the first one (a device that is never updated spends no heap on it);
  its status goes out from ``run``'s loop like a command answer. While a
  new application is on trial (``trial``), the first handshake confirms it,
  and ``resend`` gives up at ``trial_s`` (the next boot rolls back).

Memory: this module and its objects stay on a 64 KiB heap for the device's
life, so constants are module-private (inlined by ``const``), the module
has at most 12 globals (its table grows a step at 13) and the methods are
few.
"""

from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

from device.envelope import put_head
from device.errors import RemoteError, SessionExpired

# device.session's events (EV_*), inlined here instead of imported as globals.
_EV_HANDSHAKE = const(1)
_EV_DATA = const(2)
_EV_REHANDSHAKE = const(3)
_EV_REFUSED = const(4)
_EV_COUNTER_BEHIND = const(5)

# Optional features: a flash build without one sets its flag to const(0)
# (moteseal/flash/features.py): mpy-cross drops what tests it; ``groups``
# then raises LocalError("no groups"), ``read`` LocalError("no fields"),
# and a transfer frame is dropped, counted in ``bad_envelopes``.
_GROUPS = const(1)  # Rule 7
_UPDATES = const(1)  # Rule 8
_FIELDS = const(1)  # the user's fields (``read``)
_SERIAL = const(1)  # the UART link: off in a build for MQTT (no uart_link; features.py link_flags)

# A reading (the map head, "up" and "seq" take 27 bytes at most, 17 for a
# device up less than 18 hours and 65536 readings; the user's fields share
# the rest: docs/protocol.md, "Readings") or a command from the peer; sizes
# the device's buffers and the link's. The peer sends nothing larger to a device.
_MAX_PAYLOAD_BYTES = const(64)
_HEAD_BYTES = const(10)  # device.delivery.HEAD_BYTES: a retained reading's frame
_HS_GAP_MS = const(1000)
# The longest interval a reply may set: a day, so ``ticks_add`` stays in
# range (half the ticks period is 2**29 ms on 32-bit ports) and every
# step of the reply parser's arithmetic stays a small int.
_MAX_INTERVAL_MS = const(86400000)


class MqttDeviceLink:
    """The device's MQTT link, with ``UartLink``'s shape: ``open()``,
    ``send(buf, n)``, ``poll(timeout_ms)``, ``flush(timeout_ms)``,
    ``close()``; ``client`` is the ``MQTTClient``."""

    def __init__(self, device_id, link, on_envelope, max_payload, log=None):
        from micropython_port.mqtt import MQTTClient
        g = link.get
        # TLS when the bundle carries the broker's CA or a pinned
        # certificate hash (device/bundle.py); never plain TCP then.
        c = MQTTClient(b"moteseal-" + device_id, g("host", "127.0.0.1"), g("port", 1883),
                       g("username"), g("password"), keepalive=30, max_payload=max_payload,
                       on_message=on_envelope, on_error=log, ca=g("ca"), pin=g("pin"),
                       server_name=g("server_name"))
        # Remembered now (not connected yet), and sent with every CONNECT
        # that finds no session, ahead of any publish, so message 2 cannot
        # beat the subscription.
        c.subscribe(b"moteseal/v1/down/" + device_id, 1)
        self.client = c
        self.up = b"moteseal/v1/up/" + device_id
        # The client's own methods, bound once (cheaper than methods that
        # forward to them). ``open``: connect now, or keep trying from
        # ``poll`` if the broker is not there yet (a board may boot first).
        self.open = c.start
        self.poll = c.poll
        self.close = c.disconnect

    def send(self, buf, n):
        self.client.publish(self.up, buf, n, 1)

    def flush(self, timeout_ms):
        """Wait until every QoS 1 publish is acknowledged (or timeout)."""
        t = ticks_add(ticks_ms(), timeout_ms)
        while self.client.inflight() and ticks_diff(t, ticks_ms()) > 0:
            self.client.poll(20)


class Device:
    """One device: a session, a link, readings and replies (Rules 1-4).

    ``bundle`` is the provisioned record ``(device_id, peer_id, peer_keys,
    psk, suite, link[, pad])`` (``micropython_port.main.load_bundle``); entries of
    ``link_override`` replace those of the bundle's ``link`` dict (which is
    updated in place). ``log(event, detail)``, if given, is called on
    handshakes, hints, refusals, link failures (docs/micropython.md,
    "Events") and failed ``read`` or ``on_command`` calls.

    ``read(w)``, if given, adds the user's fields to each reading through
    ``w``, a ``device.reading.ReadingWriter`` over the device's fixed buffer
    (``w.int("t_cC", 2150)``, ``w.float``, ``w.bool``, ``w.text``,
    ``w.bytes``; or ``w.raw(data)`` for a payload that is not a map). The
    keys "up" (seconds since start) and "seq" are the device's own. A
    ``read`` that raises skips that reading (counted in ``read_errors``).
    ``on_command(buf, n)``, if given, gets each command from the peer other
    than the built-in ``interval=``/``interval_ms=`` (``buf[:n]``, valid
    only during the call).

    ``groups`` (0: none): joins up to 4 groups of at most that many members,
    over MQTT only (Rule 7); ``on_group(gid, buf, n)`` set before ``run``.

    ``retain`` readings are kept until the peer acknowledges them (Rule 5;
    0: none, readings go out unframed and unacknowledged as before
    retention); ``box`` is the ``Outbox`` (None without retention).

    ``interval_ms``, ``hs_timeout_ms``, ``resend_s`` and ``drain_ms`` may
    be set before ``run``. Raises ``LocalError`` if the bundle names no
    link or ``retain`` is over 255, ``OSError`` if the counter file is
    damaged.
    """

    def __init__(self, bundle, counter_path="moteseal.ctr", link_override=None, log=None,
                 read=None, on_command=None, retain=16, groups=0):
        # Imported here, not as module globals: they are needed only once.
        from device.counter import Msg1Counter
        from device.counter_file import FileCounterStore
        from device.envelope import HEADER_MAX_BYTES
        from device.errors import LocalError
        from device.session import DeviceSession
        from micropython_port.backend import MicroBackend
        device_id, peer_id, peer_keys, psk, suite, link = bundle[:6]
        pad = bundle[6] if len(bundle) > 6 else None  # the bundle's PadPolicy
        # A retained reading travels framed: the frame's head comes on top.
        pay = _MAX_PAYLOAD_BYTES + (_HEAD_BYTES if retain else 0)
        if _GROUPS and groups and pay < 92:  # a key message: 76 + a gid of 16 (device/group.py)
            pay = 92
        if pad:  # room for the largest bucket a message of ours pads to
            from device.padding import padded_size
            pay = max(padded_size(pay, pad.hs), padded_size(pay, pad.up),
                      padded_size(pay, pad.down))
        self.box = None
        if retain:  # Rule 5
            from device.delivery import Outbox
            self.box = Outbox(retain, _MAX_PAYLOAD_BYTES)
        be = MicroBackend()
        self.session = DeviceSession(be, device_id, peer_id, peer_keys, psk,
                                     Msg1Counter(FileCounterStore(counter_path)), suite,
                                     max_payload=pay, pad=pad)
        self.groups = None
        self.on_group = None
        if groups and not _GROUPS or read and not _FIELDS:  # never silently
            raise LocalError("no fields" if read and not _FIELDS else "no groups")
        if _GROUPS and groups:  # Rule 7, loaded only for a device that joins groups
            from micropython_port.app_groups import AppGroups
            self.groups = AppGroups(self, be, peer_id, _MAX_PAYLOAD_BYTES, groups)
        if link_override:
            link.update(link_override)
        # Message 1, the largest envelope: header + e + counter + reading + tag.
        env_bytes = HEADER_MAX_BYTES + 32 + 4 + pay + 16
        if _GROUPS and self.groups and self.groups.limit > env_bytes:
            env_bytes = self.groups.limit  # the largest group message (Rule 7)
        kind = link.get("kind")
        if _SERIAL and kind == "serial":
            from micropython_port.uart_link import UartLink
            self.link = UartLink(link.get("port", "1"), self._envelope, link.get("baud", 115200),
                                 max_payload=env_bytes, opened=False)
        elif kind == "mqtt":
            self.link = MqttDeviceLink(device_id, link, self._envelope, env_bytes, log)
        else:
            raise LocalError("no link: provision with --link")
        self.log = log
        # The reading being sent, and the plaintext of a reply: a reading
        # is sealed into _out before the link can deliver anything.
        self._buf = bytearray(pay)
        self._out = bytearray(HEADER_MAX_BYTES + pay + 16)  # a data envelope
        if _FIELDS and read:  # the writer is loaded only for user fields (2 KiB of heap)
            from device.reading import ReadingWriter
            self.w = ReadingWriter(memoryview(self._buf)[:_MAX_PAYLOAD_BYTES])
        self.read = read
        self.on_command = on_command
        self.interval_ms = 10000
        self.hs_timeout_ms = 5000
        self.resend_s = 3  # Rule 5
        self.drain_ms = 10000  # run(): how long to wait for the last acknowledgements
        self._again = False  # a handshake finished: resend what is retained (Rule 5)
        self._cmd_ack = -1  # a command id to answer from run()'s loop (Rule 6)
        self._cmd_done = -1  # the last command id acted on: a resent one only gets its answer
        self._ackbuf = bytearray(5)
        self.xfer = None  # Rule 8: the transfer Receiver, once a transfer frame came
        self.trial = False  # Rule 8: set by main.py while a new application is tried
        self.trial_s = 120
        # "readings" is also the next reading's seq.
        self.counts = {"readings": 0, "data": 0, "handshakes": 0, "rehandshakes": 0,
                       "refused": 0, "replies": 0, "bad_envelopes": 0, "send_errors": 0,
                       "read_errors": 0, "command_errors": 0, "acks": 0, "resent": 0,
                       "evicted": 0, "counter_behind": 0, "group": 0, "group_refused": 0}
        self._need_hs = True
        self._hs_at = 0  # ticks of the last handshake
        self._t = ticks_ms()  # ticks at which self.now last advanced
        self.now = 0  # whole seconds since start (Rule 4)

    def _tick(self):
        d = ticks_diff(ticks_ms(), self._t) // 1000
        if d > 0:
            self.now += d
            self._t = ticks_add(self._t, d * 1000)

    def _envelope(self, buf, n):
        # The link's on_envelope: one envelope from the peer (Rules 1, 3).
        self._tick()
        c = self.counts
        if _GROUPS and n > 1 and buf[1] == 8 and self.groups:  # a group message (Rule 7)
            self.groups.receive(buf, n)
            return
        try:
            ev = self.session.receive_into(buf, n, self._buf, self.now)
        except RemoteError:
            c["bad_envelopes"] += 1
            return
        except SessionExpired:
            self._need_hs = True  # too old to receive on: handshake again
            return
        box = self.box
        if ev == _EV_DATA:
            if _GROUPS and self.groups and self.groups.take(self._buf, self.session.last_len):
                return  # Rule 7: a key message from the hub
            if box and box.ack(self._buf, self.session.last_len):
                c["acks"] += 1  # Rule 5: an acknowledgement, never a command
                return
            b = self._buf
            m = self.session.last_len
            if m and 0x10 <= b[0] <= 0x13:  # Rule 8: a transfer frame
                if _UPDATES:
                    x = self.xfer
                    if x is None:
                        from micropython_port.update import receiver
                        x = self.xfer = receiver(len(b) - 9)  # device.transfer.PIECE_HEAD_BYTES
                    x.frame(b, m)
                else:  # a build without updates: dropped, counted
                    c["bad_envelopes"] += 1
                return
            if m >= 5 and b[0] == 2:
                # Rule 6: a command frame (0x02, id, command; device/delivery.py):
                # act once per id, and answer the id from run()'s loop.
                cid = (b[1] << 24) | (b[2] << 16) | (b[3] << 8) | b[4]
                self._cmd_ack = cid
                if cid == self._cmd_done:
                    return
                self._cmd_done = cid
                m -= 5
                for k in range(m):
                    b[k] = b[k + 5]
            c["replies"] += 1
            self.on_reply(b, m)
            return
        if ev == _EV_HANDSHAKE:
            self._again = True  # Rule 5, sent from run()'s loop
            if _UPDATES and self.trial:  # Rule 8: the new application reached its peer
                from micropython_port.app_update import confirm
                confirm()
                self.trial = False
            name = "handshake"
        elif ev == _EV_REHANDSHAKE:
            c["rehandshakes"] += 1
            name = "rehandshake"
        elif ev == _EV_REFUSED:
            # The hint is unauthenticated, so this only ends the attempt;
            # the next one tries the next pinned key (Rule 1).
            c["refused"] += 1
            name = "refused"
        elif ev == _EV_COUNTER_BEHIND:
            # Our counter file was lost or rolled back and the counter has
            # jumped past the peer's: a new run name, so retained readings
            # are not taken for an old run's, and a handshake at once.
            c["counter_behind"] += 1
            if box:
                box.rename(self.session._counter.peek())
            name = "counter_behind"
        else:
            return  # an ignored hint
        self._need_hs = ev != _EV_HANDSHAKE
        if self.log:
            self.log(name, "hint" if ev == _EV_REHANDSHAKE else None)

    def on_reply(self, buf, n):
        """A command from the peer in ``buf[:n]``: ``interval=<seconds>`` or
        ``interval_ms=<ms>``, up to a day, sets ``interval_ms`` (a malformed
        one is ignored); anything else goes to ``on_command``. Allocates
        nothing itself."""
        p = b"interval_ms="
        i = 0
        while i < n and i < 12 and buf[i] == p[i]:
            i += 1
        if i == 12:
            unit = 1
        elif i == 8 and n > 9 and buf[8] == 0x3D:  # "interval="
            i = 9
            unit = 1000
        else:
            if self.on_command:
                try:
                    self.on_command(buf, n)
                except Exception as e:  # the user's bug must not stop the device
                    self.counts["command_errors"] += 1
                    if self.log:
                        self.log("command_failed", e.__class__.__name__)
            return
        if i == n:
            return  # no digits
        v = 0
        while i < n:
            d = buf[i] - 0x30
            if d < 0 or d > 9:
                return
            v = v * 10 + d
            if v * unit > _MAX_INTERVAL_MS:
                return
            i += 1
        self.interval_ms = v * unit

    def _due(self):
        # Rule 1: None if no handshake is due, False while one must wait
        # (message 2 awaited, or _HS_GAP_MS), else why one is due.
        s = self.session
        if not (self._need_hs or s.transport is None or s.handshaking):
            return None
        since = ticks_diff(ticks_ms(), self._hs_at)
        if not self._need_hs and s.handshaking:
            if since < self.hs_timeout_ms:
                return False  # message 2 may still come
            why = "timeout"
        else:
            why = "new" if s.transport is None else "hint"
        if since < _HS_GAP_MS and self.counts["handshakes"]:
            return False
        return why

    def _hs(self, src, n, why):
        out = self.session.handshake(memoryview(src)[:n], self.now)
        self.counts["handshakes"] += 1
        self._need_hs = False
        self._hs_at = ticks_ms()
        if self.log:
            self.log("handshake_sent", why)
        self.link.send(out, len(out))

    def resend(self):
        """Rule 5: if a handshake just finished, or the oldest retained
        reading has waited ``resend_s``, send every retained reading again
        on the session, oldest first. Allocates nothing. Raises ``OSError``
        if the link fails."""
        box = self.box
        s = self.session
        if _GROUPS and self.groups and self.groups.pending:
            self.groups.subscribe()  # Rule 7
        if _UPDATES and self.trial and self.now >= self.trial_s:  # Rule 8: restart; the next boot rolls back
            try:
                import machine
                machine.reset()
            except (ImportError, AttributeError):  # the unix port cannot reset
                pass
            raise SystemExit(4)
        if self._need_hs or s.transport is None or s.handshaking:
            return
        x = self.xfer if _UPDATES else None
        if _UPDATES and x is not None and x.pending:  # Rule 8: a transfer status
            try:
                n = s.send_into(x.out, x.pending, self._out, self.now)
            except SessionExpired:
                self._need_hs = True
                return
            x.pending = 0
            self.link.send(self._out, n)
        cid = self._cmd_ack
        if cid >= 0:  # Rule 6: answer the command (0x03, id)
            a = self._ackbuf
            a[0] = 3
            a[1] = (cid >> 24) & 0xFF
            a[2] = (cid >> 16) & 0xFF
            a[3] = (cid >> 8) & 0xFF
            a[4] = cid & 0xFF
            self._cmd_ack = -1
            try:
                n = s.send_into(a, 5, self._out, self.now)
            except SessionExpired:
                self._need_hs = True
                return
            self.link.send(self._out, n)
        if not box:
            return
        if not (self._again or box.resend_due(self.now, self.resend_s)):
            return
        self._again = False
        out = self._out
        for q in range(box.first, box.next_seq):
            if q < box.first:
                continue  # acknowledged while the link waited for a slot
            try:
                n = s.send_into(box.view(q), box.length(q), out, self.now)
            except SessionExpired:
                self._need_hs = True
                return
            box.mark_sent(q, self.now)
            self.counts["resent"] += 1
            self.link.send(out, n)

    def step(self):
        """Send one reading: in message 1 if a handshake is due (Rule 1),
        otherwise in a data envelope (after any resend that is due, Rule 5).
        Returns True if a reading went out (or, with retention, was retained
        to go out after the next handshake), False while message 2 is awaited
        or a handshake must wait for ``_HS_GAP_MS``, None if ``read`` failed
        (the reading is skipped). Raises ``OSError`` if the link fails (a
        retained reading goes out again later)."""
        self._tick()
        s = self.session
        c = self.counts
        why = self._due()
        if why is False:  # checked before read() runs
            return False
        if why is None:
            self.resend()
        # The reading: {"up": now, "seq": n, <the user's fields>}
        # (docs/protocol.md, "Readings"), in the fixed buffer (Rule 4).
        b = self._buf
        if _FIELDS and self.read:
            w = self.w
            w.begin(0)
            w.int("up", self.now)
            w.int("seq", c["readings"])
            try:
                self.read(w)
                n = w.end()
            except Exception as e:  # the user's bug or a sensor failure
                c["read_errors"] += 1
                if self.log:
                    self.log("read_failed", e.__class__.__name__)
                return None
        else:  # the same two fields, written here: map(2), "up", "seq"
            b[0] = 0xA2
            b[1] = 0x62
            b[2] = 0x75
            b[3] = 0x70
            i = put_head(b, 4, 0, self.now)
            b[i] = 0x63
            b[i + 1] = 0x73
            b[i + 2] = 0x65
            b[i + 3] = 0x71
            n = put_head(b, i + 4, 0, c["readings"])
        box = self.box
        if box:  # Rule 5: framed and retained before anything can fail
            box.start(s._counter.peek())  # the run: its first handshake's counter
            ev = box.evicted
            q = box.add(b, n)
            c["readings"] += 1
            if box.evicted != ev:
                c["evicted"] = box.evicted
                if self.log:
                    self.log("evicted", box.evicted)
            b = box.view(q)
            n = box.length(q)
            box.mark_sent(q, self.now)
        if why:
            if not box:
                c["readings"] += 1
            self._hs(b, n, why)
            return True
        out = self._out
        try:
            n = s.send_into(b, n, out, self.now)
        except SessionExpired:
            self._need_hs = True
            return box is not None  # retained: it goes out after the next handshake
        c["data"] += 1
        if not box:
            c["readings"] += 1
        self.link.send(out, n)
        return True

    def wait_session(self, timeout_ms):
        """Poll the link until the handshake in progress finishes. Returns
        False if it fails or is refused, or ``timeout_ms`` passes first."""
        t = ticks_add(ticks_ms(), timeout_ms)
        s = self.session
        while s.transport is None or s.handshaking:
            if self._need_hs or ticks_diff(t, ticks_ms()) <= 0:
                return False
            self.link.poll(20)
        return True

    def run(self, count=None, linger_ms=0, for_ms=None):
        """Open the link and send ``count`` readings (forever if None), one
        per ``interval_ms``; then wait up to ``hs_timeout_ms`` for the link
        to deliver them, poll for replies for ``linger_ms`` and close the
        link. Link failures are counted (``send_errors``). ``for_ms``, if
        given, ends the run after that long even if readings are left (a
        device that cannot reach its broker; the unix port's tests).
        Returns ``counts``."""
        link = self.link
        link.open()
        sent = 0
        t = ticks_ms()  # when the next reading is due
        end = ticks_add(t, for_ms or 0)
        while count is None or sent < count:
            if for_ms is not None and ticks_diff(end, ticks_ms()) <= 0:
                break
            wait = ticks_diff(t, ticks_ms())
            if wait > 0:
                # Short polls: the MQTT client sends its keepalive pings
                # from poll, and an interval may be longer than the keepalive.
                link.poll(min(50, wait))
                self._tick()
                try:
                    self.resend()  # Rule 5
                except OSError:
                    self.counts["send_errors"] += 1
                continue
            try:
                ok = self.step()
            except OSError:
                self.counts["send_errors"] += 1
                ok = False
            if ok is not False:  # sent, or skipped by a failed read
                sent += 1
                t = ticks_add(ticks_ms(), self.interval_ms)
            link.poll(20 if ok is False else 0)
        # Rule 5: the last readings, until the peer has acknowledged them
        # all (handshaking again, without a reading, if the session is lost).
        box = self.box
        t = ticks_add(ticks_ms(), self.drain_ms)
        while box and box.next_seq > box.first and ticks_diff(t, ticks_ms()) > 0:
            if for_ms is not None and ticks_diff(end, ticks_ms()) <= 0:
                break
            self._tick()
            try:
                why = self._due()
                if why:
                    self._hs(b"", 0, why)
                elif why is None:
                    self.resend()
            except OSError:
                self.counts["send_errors"] += 1
            link.poll(20)
        link.flush(self.hs_timeout_ms)
        t = ticks_add(ticks_ms(), linger_ms)
        while ticks_diff(t, ticks_ms()) > 0:
            link.poll(20)
        link.close()
        return self.counts
