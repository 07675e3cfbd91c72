"""A small MQTT 3.1.1 client for the device, with every packet buffer
allocated once; the packets themselves are ``micropython_port.mqtt_codec``
(sans-I/O, fuzzed on CPython).

Used by ``micropython_port/main.py`` to publish envelopes on
``moteseal/v1/up/<id>`` and receive them on ``moteseal/v1/down/<id>``, over
MicroPython's ``socket`` and ``select.poll`` (unix port and boards).

Invariants:
- Rule 1: bad bytes from the broker raise ``DecodeError`` in the parser,
  never an assert; the client then drops the connection and reconnects.
- Rule 2: buffers (receive chunk, parser, control packets, in-flight slots)
  are allocated in ``__init__``. A PUBLISH payload lands at offset 0 of
  ``parser.payload``, ready for ``DeviceSession.receive_into``.
- Rule 3: QoS 1 publishes are kept in a fixed set of in-flight slots until
  their PUBACK arrives. They are sent again with DUP set after
  ``retry_ms`` without a PUBACK and after every reconnect (MQTT 3.1.1
  section 4.4), so a reading survives a dropped connection. Incoming QoS 1
  messages are acknowledged after ``on_message`` returns (at least once).
- Rule 4: the session is persistent (``clean_session`` False by default), so
  the broker keeps our subscription and queues down-topic messages while
  the device is offline; if the broker answers "no session", the client
  subscribes again.
- Rule 5: ``TCP_NODELAY`` is set where the port allows it: an envelope is
  one small segment that must not wait for Nagle's algorithm.
"""

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

from device.errors import DecodeError, LocalError
from micropython_port.mqtt_codec import (CONNACK, DEFAULT_MAX_PAYLOAD, DISCONNECT,
                                         HEAD_BYTES, PINGREQ, PINGRESP, PUBACK,
                                         PUBLISH, SUBACK, TOPIC_MAX_BYTES,
                                         PacketParser, _connect_rem,
                                         encode_ack_into, encode_connect_into,
                                         encode_subscribe_into,
                                         publish_header_into)

# --- the socket driver (MicroPython) ----------------------------------------

RX_CHUNK_BYTES = const(256)  # one socket read; the parser copies from here
CONTROL_BYTES = const(8 + 2 + 64 + 1)  # SUBSCRIBE of a 64-byte topic; CONNECT uses the slot
_IPPROTO_TCP = const(6)  # Linux and lwIP values, used where the port lacks the names
_TCP_NODELAY = const(1)

try:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython: only the parser and encoders are used there
    ticks_ms = ticks_diff = ticks_add = sleep_ms = None


def _b(s):
    return s if s is None or isinstance(s, bytes) else s.encode()


class MQTTClient:
    """An MQTT 3.1.1 client with preallocated buffers (Rules 2-4).

    ``connect()``, ``subscribe(topic, qos)``, ``publish(topic, buf, n, qos)``
    and ``poll(timeout_ms)``, which reads, calls ``on_message(buf, n)`` for
    each PUBLISH (``parser.topic_is(t)`` names its topic), sends PINGREQ,
    retransmits and reconnects with backoff after a failure. Raises
    ``OSError`` for a connection that cannot be made or a refusal
    (``connect``); ``poll`` and ``publish`` never raise for network
    trouble: they drop the connection and reconnect later (``connected``
    says which state it is in).
    """

    def __init__(self, client_id, host, port=1883, user=None, password=None,
                 keepalive=60, clean_session=False, max_payload=DEFAULT_MAX_PAYLOAD,
                 inflight=2, retry_ms=5000, timeout_ms=5000, on_message=None,
                 backoff_min_ms=200, backoff_max_ms=8000):
        if inflight < 1:
            raise LocalError("inflight must be at least 1")
        self.client_id = _b(client_id)
        self.host = host
        self.port = port
        self.user = _b(user)
        self.password = _b(password)
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.retry_ms = retry_ms
        self.timeout_ms = timeout_ms
        self.on_message = on_message
        self.parser = PacketParser(max_payload)
        self._rx = bytearray(RX_CHUNK_BYTES)
        self._ctl = bytearray(CONTROL_BYTES)
        cap = 5 + HEAD_BYTES + max_payload  # fixed header + topic + pid + payload
        if cap < 1 + 4 + _connect_rem(self.client_id, self.user, self.password):
            raise LocalError("client id, user and password too long")
        self._slots = [bytearray(cap) for _ in range(inflight)]
        self._slot_len = [0] * inflight  # 0 = free
        self._slot_pid = [0] * inflight
        self._slot_t = [0] * inflight  # when last sent
        self._q0 = bytearray(cap)  # QoS 0 packets and CONNECT
        self._subs = []  # [(topic, qos)] to restore on a fresh session
        self._pid = 0
        self._sock = None
        self._poller = None
        self.connected = False
        self.session_present = False
        self._last_tx = 0
        self._ping_sent = -1  # ticks of an unanswered PINGREQ, or -1
        self._next_try = 0
        self._backoff = backoff_min_ms
        self._backoff_min = backoff_min_ms
        self._backoff_max = backoff_max_ms
        self._wait = 0  # packet type connect()/subscribe() is waiting for
        self._waited = -1  # its return code
        self._on_packet = self._packet  # bound once: no allocation per feed
        self.reconnects = 0
        self.dropped_connections = 0
        self.pings = 0
        self.retransmits = 0
        self.oversized = 0

    # -- connection -----------------------------------------------------

    def connect(self):
        """Open the connection and wait for CONNACK; restore subscriptions
        and resend unacknowledged publishes. Returns ``session_present``.
        Raises ``OSError`` (unreachable, timeout, refused: the message
        names the CONNACK return code)."""
        import socket
        import select
        self.close()
        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            try:
                s.setsockopt(getattr(socket, "IPPROTO_TCP", _IPPROTO_TCP),
                             getattr(socket, "TCP_NODELAY", _TCP_NODELAY), 1)
            except (OSError, AttributeError, TypeError):
                pass  # a port without TCP_NODELAY: small envelopes wait for Nagle
            s.settimeout(self.timeout_ms / 1000)
            s.connect(ai[-1])
            s.setblocking(False)
        except Exception:
            s.close()
            raise
        self._sock = s
        self._poller = select.poll()
        self._poller.register(s, select.POLLIN)
        self.parser.reset()
        self._ping_sent = -1
        n = encode_connect_into(self._q0, self.client_id, self.keepalive, self.user,
                                self.password, self.clean_session)
        try:
            self._write(self._q0, 0, n)
            rc = self._await(CONNACK)
        except Exception:
            self.close()
            raise
        if rc != 0:
            self.close()
            raise OSError("MQTT connection refused, CONNACK return code %d" % rc)
        self.connected = True
        self._backoff = self._backoff_min
        if not self.session_present:
            for topic, qos in self._subs:
                self._send_subscribe(topic, qos)  # its SUBACK is read in poll()
        now = ticks_ms()
        for i in range(len(self._slots)):
            if self._slot_len[i]:
                self._resend(i, now)
        return self.session_present

    def start(self):
        """``connect()`` now if the broker answers, otherwise later from
        ``poll()`` with backoff; never raises for network trouble, so a
        board that boots before its broker keeps trying. Returns True if
        connected now."""
        try:
            self.connect()
            return True
        except (OSError, DecodeError):
            self._drop()
            return False

    def close(self):
        """Close the socket (no DISCONNECT: see ``disconnect``)."""
        s = self._sock
        self._sock = None
        self.connected = False
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    def disconnect(self):
        """Send DISCONNECT and close. In-flight publishes stay in their slots
        and go out again on the next ``connect``."""
        if self.connected:
            self._ctl[0] = DISCONNECT
            self._ctl[1] = 0
            try:
                self._write(self._ctl, 0, 2)
            except OSError:
                pass
        self.close()

    def _drop(self):
        # A connection that failed: close it and try again after a backoff.
        if self._sock is not None:
            self.dropped_connections += 1
        self.close()
        self._next_try = ticks_add(ticks_ms(), self._backoff)
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def _maybe_reconnect(self):
        if ticks_diff(ticks_ms(), self._next_try) < 0:
            return
        try:
            self.connect()
            self.reconnects += 1
        except (OSError, DecodeError):
            self._drop()

    # -- I/O --------------------------------------------------------------

    def _write(self, buf, off, n):
        # Non-blocking socket: write what fits, wait for POLLOUT, go on.
        # ``write(buf, off, n)`` takes an offset, so no slice is made.
        import select
        s = self._sock
        if s is None:
            raise OSError("not connected")
        deadline = ticks_add(ticks_ms(), self.timeout_ms)
        end = off + n
        while off < end:
            w = s.write(buf, off, end - off)
            if w:
                off += w
                continue
            if ticks_diff(deadline, ticks_ms()) <= 0:
                raise OSError("MQTT write timed out")
            p = select.poll()
            p.register(s, select.POLLOUT)
            p.poll(50)
        self._last_tx = ticks_ms()

    def _read_some(self, timeout_ms):
        # Feeds whatever arrives within timeout_ms to the parser. Returns
        # False if nothing was readable.
        got = False
        for _ in self._poller.ipoll(timeout_ms):
            got = True
        if not got:
            return False
        while self._sock is not None:
            n = self._sock.readinto(self._rx)
            if n is None:
                break
            if n == 0:
                raise OSError("connection closed by the broker")
            self.parser.feed_into(self._rx, n, self._on_packet)
            if n < len(self._rx):
                break
        return True

    def _await(self, ptype):
        self._wait = ptype
        self._waited = -1
        deadline = ticks_add(ticks_ms(), self.timeout_ms)
        try:
            while self._waited < 0:
                left = ticks_diff(deadline, ticks_ms())
                if left <= 0:
                    raise OSError("MQTT: no answer from the broker")
                self._read_some(left)
        finally:
            self._wait = 0
        return self._waited

    def _packet(self, t, flags):
        p = self.parser
        if t == PUBLISH:
            qos = (flags >> 1) & 3
            if p.oversize:
                self.oversized += 1  # acknowledged below, never delivered
            elif self.on_message is not None:
                self.on_message(p.payload, p.payload_len)
            if qos:
                n = encode_ack_into(self._ctl, PUBACK, p.pid)
                self._write(self._ctl, 0, n)
        elif t == PUBACK:
            pid = p.pid
            for i in range(len(self._slots)):
                if self._slot_len[i] and self._slot_pid[i] == pid:
                    self._slot_len[i] = 0
        elif t == PINGRESP:
            self._ping_sent = -1
        elif t == CONNACK:
            self.session_present = bool(p.head[0] & 1)
            if self._wait == CONNACK:
                self._waited = p.head[1]
        elif t == SUBACK:
            if self._wait == SUBACK:
                self._waited = p.head[2]

    # -- operations -----------------------------------------------------------

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    def _send_subscribe(self, topic, qos):
        n = encode_subscribe_into(self._ctl, self._next_pid(), topic, qos)
        self._write(self._ctl, 0, n)

    def subscribe(self, topic, qos=1):
        """Subscribe and wait for the SUBACK; remembered and restored on a
        new session. While disconnected it is only remembered (returns
        None) and sent on the next connect. Raises ``OSError`` (refused, no
        answer), ``LocalError`` (topic too long)."""
        topic = _b(topic)
        if len(topic) > TOPIC_MAX_BYTES:
            raise LocalError("topic longer than TOPIC_MAX_BYTES")
        if (topic, qos) not in self._subs:
            self._subs.append((topic, qos))
        if not self.connected:
            return None
        self._send_subscribe(topic, qos)
        rc = self._await(SUBACK)
        if rc & 0x80:
            raise OSError("MQTT subscription refused")
        return rc

    def inflight(self):
        """QoS 1 publishes not yet acknowledged."""
        k = 0
        for n in self._slot_len:
            if n:
                k += 1
        return k

    def publish(self, topic, buf, n, qos=1, retain=False):
        """Send ``buf[:n]`` on ``topic``. QoS 1 waits (polling, up to
        ``timeout_ms``) for a free in-flight slot, copies the packet there
        and returns its packet id; it is sent now if connected, otherwise
        after the reconnect (Rule 3). QoS 0 returns 0, and is lost when not
        connected. Raises ``OSError`` if no slot frees up in time,
        ``LocalError`` for a payload larger than ``max_payload``."""
        if n > self.parser.max_payload or n < 0:
            raise LocalError("payload larger than max_payload")
        if len(topic) > TOPIC_MAX_BYTES:
            raise LocalError("topic longer than TOPIC_MAX_BYTES")
        if qos == 0:
            pkt = self._q0
            off = publish_header_into(pkt, topic, n, 0, 0)
            _copy(pkt, off, buf, n)
            if retain:
                pkt[0] |= 1
            if self.connected:
                try:
                    self._write(pkt, 0, off + n)
                except OSError:
                    self._drop()
            return 0
        slot = self._free_slot()
        pid = self._next_pid()
        pkt = self._slots[slot]
        off = publish_header_into(pkt, topic, n, 1, pid)
        _copy(pkt, off, buf, n)
        if retain:
            pkt[0] |= 1
        self._slot_pid[slot] = pid
        self._slot_len[slot] = off + n
        now = ticks_ms()
        self._slot_t[slot] = now
        if self.connected:
            try:
                self._write(pkt, 0, off + n)
            except OSError:
                self._drop()
        return pid

    def _free_slot(self):
        deadline = ticks_add(ticks_ms(), self.timeout_ms)
        while True:
            for i in range(len(self._slot_len)):
                if not self._slot_len[i]:
                    return i
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                raise OSError("MQTT: no PUBACK frees an in-flight slot")
            self.poll(min(left, 50))

    def _resend(self, i, now):
        pkt = self._slots[i]
        pkt[0] |= 0x08  # DUP: a retransmission (section 3.3.1.1)
        self._slot_t[i] = now
        self.retransmits += 1
        self._write(pkt, 0, self._slot_len[i])

    def poll(self, timeout_ms=0):
        """Read and dispatch what arrives within ``timeout_ms``; send a
        PINGREQ when the keepalive is half used; retransmit publishes
        unacknowledged for ``retry_ms``; reconnect after a failure. Returns
        True if the connection is up afterwards."""
        if not self.connected:
            self._maybe_reconnect()
            if not self.connected:
                if timeout_ms > 0:
                    sleep_ms(min(timeout_ms, max(0, ticks_diff(self._next_try, ticks_ms()))))
                return False
        try:
            self._read_some(timeout_ms)
            if self._sock is None:
                return False
            now = ticks_ms()
            for i in range(len(self._slots)):
                if self._slot_len[i] and ticks_diff(now, self._slot_t[i]) >= self.retry_ms:
                    self._resend(i, now)
            ka = self.keepalive * 1000
            if ka:
                if self._ping_sent >= 0:
                    if ticks_diff(now, self._ping_sent) > ka:
                        raise OSError("MQTT: no PINGRESP within the keepalive")
                elif ticks_diff(now, self._last_tx) >= ka // 2:
                    self._ctl[0] = PINGREQ
                    self._ctl[1] = 0
                    self._write(self._ctl, 0, 2)
                    self._ping_sent = now
                    self.pings += 1
        except (OSError, DecodeError):
            self._drop()
            return False
        return True


def _copy(dst, off, src, n):
    # Byte loop: a slice of src would allocate on MicroPython.
    for i in range(n):
        dst[off + i] = src[i]


__all__ = ["MQTTClient", "PacketParser", "TOPIC_MAX_BYTES"]
