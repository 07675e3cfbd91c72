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
  per ``hint_interval``), or when message 2 does not come within
  ``hs_timeout_ms``; handshakes are at least ``HS_GAP_MS`` apart whatever
  the trigger, so forged hints cannot make it flood the peer.
- Rule 2: the message-1 counter lives in ``FileCounterStore`` on flash,
  reserved in chunks (``device/counter.py``): one flash write per ``chunk``
  handshakes, and a reboot never reuses a value.
- Rule 3: bad envelopes from the link (``RemoteError``) are counted and
  ignored; nothing printed holds a key, the PSK or a plaintext.
- Rule 4: after the handshake, one reading costs no heap allocation: the
  reading is encoded into a fixed buffer, sealed with ``send_into`` into a
  second, and published from preallocated MQTT slots (or framed into the
  UART link's buffer). The clock passed to the session is a whole-second
  counter kept in small ints (``ticks_ms`` wraps; floats would allocate).
"""

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

from time import ticks_add, ticks_diff, ticks_ms

from device.counter import DEFAULT_CHUNK, Msg1Counter
from device.counter_file import FileCounterStore
from device.envelope import put_head
from device.errors import LocalError, RemoteError, SessionExpired
from device.session import (EV_DATA, EV_HANDSHAKE, EV_REFUSED, EV_REHANDSHAKE,
                            DeviceSession)

UP_PREFIX = b"moteseal/v1/up/"
DOWN_PREFIX = b"moteseal/v1/down/"
MAX_PAYLOAD_BYTES = const(128)  # a reading; sizes every buffer below
ENV_BYTES = const(53 + 32 + 4 + 128 + 16)  # HEADER_MAX_BYTES + the largest hs1 message
HS_GAP_MS = const(1000)
DEFAULT_INTERVAL_MS = const(10000)
DEFAULT_HS_TIMEOUT_MS = const(5000)


class MqttDeviceLink:
    """The device's MQTT link: one up topic, one down topic."""

    def __init__(self, device_id, link, on_envelope, max_payload=ENV_BYTES):
        from micropython_port.mqtt import MQTTClient
        self.up = UP_PREFIX + device_id
        self.down = DOWN_PREFIX + device_id
        self.client = MQTTClient(b"moteseal-" + device_id, link.get("host", "127.0.0.1"),
                                 link.get("port", 1883), link.get("username"),
                                 link.get("password"), keepalive=30,
                                 max_payload=max_payload, on_message=on_envelope)

    def open(self):
        """Connect and subscribe, or keep trying from ``poll`` if the broker
        is not there yet (a board may boot before its broker)."""
        # Remembered, and sent with every CONNECT that finds no session,
        # ahead of any publish (so message 2 cannot beat the subscription).
        self.client.subscribe(self.down, 1)
        self.client.start()

    def send(self, buf, n):
        self.client.publish(self.up, buf, n, 1)

    def poll(self, timeout_ms):
        self.client.poll(timeout_ms)

    def flush(self, timeout_ms):
        """Wait until every QoS 1 publish is acknowledged (or timeout)."""
        t0 = ticks_ms()
        while self.client.inflight() and ticks_diff(ticks_ms(), t0) < timeout_ms:
            self.client.poll(20)

    def close(self):
        self.client.disconnect()


def encode_reading_into(buf, seq, up_s):
    """The reading as canonical CBOR ``{"up": up_s, "seq": seq}`` (keys in
    length-first order), the shape ``device.simulate.decode_reading``
    accepts. Returns its length; allocates nothing."""
    buf[0] = 0xA2  # map(2)
    buf[1] = 0x62  # text(2) "up"
    buf[2] = 0x75
    buf[3] = 0x70
    off = put_head(buf, 4, 0, up_s)
    buf[off] = 0x63  # text(3) "seq"
    buf[off + 1] = 0x73
    buf[off + 2] = 0x65
    buf[off + 3] = 0x71
    return put_head(buf, off + 4, 0, seq)


class Device:
    """One device: a session, a link, readings and replies (Rules 1-4)."""

    def __init__(self, bundle, counter_path, link_override=None, chunk=DEFAULT_CHUNK,
                 hs_timeout_ms=DEFAULT_HS_TIMEOUT_MS, backend=None, log=None):
        if backend is None:
            from micropython_port.backend import MicroBackend
            backend = MicroBackend()
        self.counter = Msg1Counter(FileCounterStore(counter_path), chunk)
        self.session = DeviceSession(backend, bundle.device_id, bundle.peer_id,
                                     bundle.peer_keys, bundle.psk, self.counter,
                                     bundle.suite, max_payload=MAX_PAYLOAD_BYTES)
        link = dict(bundle.link)
        if link_override:
            link.update(link_override)
        self._on_env = self._envelope  # bound once
        if link.get("kind") == "serial":
            from micropython_port.uart_link import UartLink
            self.link = UartLink(link.get("port", "1"), self._on_env, link.get("baud", 115200),
                                 opened=False)
        elif link.get("kind") == "mqtt":
            self.link = MqttDeviceLink(bundle.device_id, link, self._on_env)
        else:
            raise LocalError("the bundle names no link (kind 'none'); provision with --link")
        self.hs_timeout_ms = hs_timeout_ms
        self.log = log
        self._reading = bytearray(MAX_PAYLOAD_BYTES)
        self._out = bytearray(ENV_BYTES)
        self._pt = bytearray(MAX_PAYLOAD_BYTES)
        self.interval_ms = DEFAULT_INTERVAL_MS
        self.seq = 0
        self.counts = {"readings": 0, "data": 0, "handshakes": 0, "rehandshakes": 0,
                       "refused": 0, "replies": 0, "bad_envelopes": 0, "send_errors": 0}
        self._need_hs = True
        self._hs_at = 0
        self._hs_done = False
        self._t_last = ticks_ms()
        self._ms = 0
        self.now = 0  # whole seconds since start (Rule 4)

    def _event(self, name, detail=None):
        if self.log is not None:
            self.log(name, detail)

    def _tick(self):
        t = ticks_ms()
        self._ms += ticks_diff(t, self._t_last)
        self._t_last = t
        while self._ms >= 1000:
            self._ms -= 1000
            self.now += 1

    # -- replies -------------------------------------------------------------

    def _envelope(self, buf, n):
        self._tick()
        try:
            ev = self.session.receive_into(buf, n, self._pt, self.now)
        except RemoteError:
            self.counts["bad_envelopes"] += 1
            return
        except SessionExpired:
            self._need_hs = True  # too old to receive on: handshake again
            return
        if ev == EV_HANDSHAKE:
            self._hs_done = True
            self._event("handshake", None)
        elif ev == EV_DATA:
            self.counts["replies"] += 1
            self.on_reply(self._pt, self.session.last_len)
        elif ev == EV_REHANDSHAKE:
            self.counts["rehandshakes"] += 1
            self._need_hs = True
            self._event("rehandshake", "hint")
        elif ev == EV_REFUSED:
            # The peer refused message 1 (the hint is unauthenticated, so
            # this only ends the attempt); the next one tries the next
            # pinned key, at most once per HS_GAP_MS (Rule 1).
            self.counts["refused"] += 1
            self._need_hs = True
            self._event("refused", None)

    def on_reply(self, buf, n):
        """A command from the peer. Understood: ``interval=<seconds>`` and
        ``interval_ms=<ms>``; anything else is counted and ignored."""
        if _starts(buf, n, b"interval_ms="):
            v = _digits(buf, 12, n)
        elif _starts(buf, n, b"interval="):
            v = _digits(buf, 9, n)
            if v >= 0:
                v *= 1000
        else:
            return
        if v >= 0:
            self.interval_ms = v

    # -- readings ---------------------------------------------------------

    def _handshake(self, why):
        n = encode_reading_into(self._reading, self.seq, self.now)
        env = self.session.handshake(memoryview(self._reading)[:n], self.now)
        self.seq += 1
        self.counts["readings"] += 1
        self.counts["handshakes"] += 1
        self._need_hs = False
        self._hs_done = False
        self._hs_at = ticks_ms()
        self.link.send(env, len(env))
        self._event("handshake_sent", why)

    def _send_reading(self):
        n = encode_reading_into(self._reading, self.seq, self.now)
        try:
            m = self.session.send_into(self._reading, n, self._out, self.now)
        except SessionExpired:
            self._need_hs = True
            return False
        self.seq += 1
        self.counts["readings"] += 1
        self.counts["data"] += 1
        self.link.send(self._out, m)
        return True

    def step(self):
        """Send one reading (in message 1 or a data envelope), handshaking
        first if needed; waits up to ``hs_timeout_ms`` per handshake
        attempt for message 2. Returns True if a reading went out."""
        self._tick()
        s = self.session
        if self._need_hs or s.transport is None:
            if s.handshaking and not self._need_hs:
                # Waiting for message 2; try again once it is overdue.
                if ticks_diff(ticks_ms(), self._hs_at) < self.hs_timeout_ms:
                    return False
                why = "timeout"
            else:
                why = "hint" if s.transport is not None else "new"
            if ticks_diff(ticks_ms(), self._hs_at) < HS_GAP_MS and self.counts["handshakes"]:
                return False
            self._handshake(why)
            return True
        if not self._send_reading():
            return False
        return True

    def wait_session(self, timeout_ms):
        """Poll the link until a session exists (or timeout)."""
        t0 = ticks_ms()
        while self.session.transport is None or self.session.handshaking:
            if self._need_hs or ticks_diff(ticks_ms(), t0) >= timeout_ms:
                return False
            self.link.poll(20)
            if self.session.handshaking and \
                    ticks_diff(ticks_ms(), self._hs_at) >= self.hs_timeout_ms:
                return False
        return True

    def run(self, count=None, linger_ms=0):
        """Send ``count`` readings (forever if None), one per
        ``interval_ms``, then poll for replies for ``linger_ms``."""
        self.link.open()
        sent = 0
        next_at = ticks_ms()
        while count is None or sent < count:
            if ticks_diff(ticks_ms(), next_at) < 0:
                self.link.poll(min(50, -ticks_diff(ticks_ms(), next_at)))
                continue
            if self.session.handshaking:
                self.wait_session(self.hs_timeout_ms)
            try:
                ok = self.step()
            except OSError:
                self.counts["send_errors"] += 1
                ok = False
            if ok:
                sent += 1
                next_at = ticks_add(ticks_ms(), self.interval_ms)
                if self.session.handshaking:
                    self.wait_session(self.hs_timeout_ms)
            else:
                self.link.poll(20)
            self.link.poll(0)
        self.link.flush(self.hs_timeout_ms)
        t0 = ticks_ms()
        while ticks_diff(ticks_ms(), t0) < linger_ms:
            self.link.poll(20)
        self.link.close()
        return self.counts


def _starts(buf, n, prefix):
    if n < len(prefix):
        return False
    for i in range(len(prefix)):
        if buf[i] != prefix[i]:
            return False
    return True


def _digits(buf, off, n):
    # A decimal number in buf[off:n]; -1 if empty or not digits.
    if off >= n or n - off > 9:
        return -1
    v = 0
    for i in range(off, n):
        c = buf[i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + c - 48
    return v

