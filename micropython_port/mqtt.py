"""A small MQTT 3.1.1 client for the device, with every packet buffer
allocated once; the packets themselves are ``micropython_port.mqtt_codec``
(sans-I/O, fuzzed on CPython).

Used by ``micropython_port/app.py`` to publish envelopes on
``moteseal/v1/up/<id>`` and receive them on ``moteseal/v1/down/<id>``, over
MicroPython's ``socket`` and ``select.poll`` (unix port and boards).

Invariants:
- Rule 1: bad bytes from the broker raise ``DecodeError`` in the parser,
  never an assert; the client then drops the connection and reconnects.
- Rule 2: buffers (receive chunk, parser, one scratch packet, the CONNECT,
  in-flight slots) are allocated in ``__init__``. A PUBLISH payload lands
  at offset 0 of ``parser.payload``, ready for ``DeviceSession.receive_into``.
- Rule 3: QoS 1 publishes are kept in a fixed set of in-flight slots until
  their PUBACK arrives. They are sent again, with DUP set and their packet
  ids, after every reconnect, so a reading survives a dropped connection.
  That is the only time MQTT 3.1.1 requires a resend (section 4.4): TCP
  does not lose a packet on a live connection, and a broker that stops
  answering is caught by the keepalive, which drops and reconnects.
  Incoming QoS 1 messages are acknowledged after ``on_message`` returns
  (at least once).
- Rule 4: the session is persistent (CONNECT without clean session), so
  the broker keeps our subscription and queues down-topic messages while
  the device is offline; if the broker answers "no session", the client
  subscribes again before anything else is sent.
- Rule 5: ``TCP_NODELAY`` is set where the port allows it: an envelope is
  one small segment that must not wait for Nagle's algorithm.
- Rule 6: with a CA (DER) or a pinned certificate hash the client speaks
  TLS (MicroPython's ``tls``, or ``ssl`` on older ports) and only TLS: a
  failed handshake, an untrusted, expired or misnamed certificate or a pin
  mismatch fails the attempt, which is retried the same way, never as
  plain TCP. Nothing (no CONNECT, so no password) is written before the
  certificate is checked.
- Rule 7: every failed connection attempt and every lost connection is
  named once (``micropython_port.mqtt_tls.name_failure``) (``on_error(event, detail)``; ``error`` holds the last one):
  ``dns_failed``, ``connection_refused``, ``connection_failed`` (errno),
  ``tls_failed`` (``untrusted``, ``expired``, ``not_yet_valid``,
  ``name_mismatch``, ``pin_mismatch``, ``bad_ca``, ``pin_unsupported``,
  ``out_of_memory``, ``handshake``), ``mqtt_refused``
  (``bad_protocol``, ``id_rejected``, ``server_unavailable``,
  ``bad_credentials``, ``not_authorized``, or the CONNACK code),
  ``connection_closed`` (``connack``: closed before answering), ``not_mqtt``
  (``connack``: bytes that are no MQTT, e.g. a TLS port spoken to in plain
  TCP), ``timeout`` (``connect``, ``tls``,
  ``connack``, ``keepalive``) and ``connection_lost`` (errno). The same
  failure again is not reported again until a connection succeeds.

Memory: loaded on a device with a 64 KiB heap, so constants are
module-private (inlined by ``const``) and the methods are few.
"""

import select
import socket
import sys
from time import sleep_ms, ticks_add, ticks_diff, ticks_ms

from micropython import const

from device.errors import DecodeError
# One global for the codec, not one per name: a module's globals are a hash
# table on the device heap, and it grows in steps (the next one at 13).
from micropython_port import mqtt_codec

# Packet types the client dispatches on or sends itself (section 2.2.1).
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

_BACKOFF_MAX_MS = const(8000)  # the reconnect backoff doubles from backoff_min_ms up to here
_RX_CHUNK_BYTES = const(256)  # one socket read; the parser copies from here
_DEFAULT_MAX_PAYLOAD = const(1200)  # device.envelope.ENVELOPE_MAX_BYTES
# Socket numbers, the same in Linux and lwIP (and MicroPython's POLLIN).
_SOCK_STREAM = const(1)
_IPPROTO_TCP = const(6)
_TCP_NODELAY = const(1)
_POLLIN = const(1)
# errno values (Linux numbering, which MicroPython uses on every port).
_ECONNRESET = const(104)
_ENOTCONN = const(107)
_ETIMEDOUT = const(110)
_ECONNREFUSED = const(111)


class MQTTClient:
    """An MQTT 3.1.1 client with preallocated buffers (Rules 2-4).

    ``connect()`` or ``start()``, ``subscribe(topic, qos)``,
    ``publish(topic, buf, n, qos)`` and ``poll(timeout_ms)``, which reads,
    calls ``on_message(buf, n)`` for each PUBLISH, sends PINGREQ and
    reconnects with backoff after a failure. Errors are ``OSError`` with
    an errno: ``ECONNREFUSED`` (the CONNACK or SUBACK code as the second
    argument), ``ETIMEDOUT``, ``ECONNRESET``, ``ENOTCONN``. ``connect``
    raises them; ``start``, ``poll`` and ``publish`` never raise for
    network trouble: they drop the connection and reconnect later
    (``connected`` says which state it is in; ``reconnects`` counts the
    connections ``poll`` and ``start`` made). The constructor raises
    ``LocalError`` if client id, user and password take more than 111
    bytes together (a CONNECT over 127).

    ``on_error(event, detail)``, if given, names each failed connection
    attempt and each lost connection (Rule 7). ``ca`` (DER bytes) and/or
    ``pin`` (the SHA-256 of the server certificate's DER) make every
    connection TLS, with ``server_name`` (default ``host``) checked and
    sent as SNI (Rule 6).

    ``on_message`` runs inside the read loop, with the payload in the
    parser's buffer: it may call ``disconnect()`` and a QoS 0 ``publish``,
    not ``poll``, ``subscribe`` or a QoS 1 ``publish`` (those may read the
    socket, which the loop is in the middle of).
    """

    def __init__(self, client_id, host, port=1883, user=None, password=None,
                 keepalive=60, max_payload=_DEFAULT_MAX_PAYLOAD, inflight=2,
                 timeout_ms=5000, on_message=None, backoff_min_ms=200, on_error=None,
                 ca=None, pin=None, server_name=None):
        self.host = host
        self.on_error = on_error
        self.error = None  # (event, detail) of the last failure (Rule 7)
        # Rule 6: TLS with ``ca`` (DER bytes) and/or ``pin`` (SHA-256 of
        # the server certificate's DER); the name checked and sent as SNI
        # is ``server_name``, else ``host``. One attribute: None for TCP.
        self.tls = (ca, pin, server_name or host) if ca is not None or pin is not None else None
        self.port = port
        self.keepalive = keepalive
        self.timeout_ms = timeout_ms
        self.on_message = on_message
        self.backoff_min_ms = backoff_min_ms
        self.parser = mqtt_codec.PacketParser(max_payload)
        self._rx = bytearray(_RX_CHUNK_BYTES)
        # fixed header (5) + topic length, topic and packet id (the
        # parser's head) + payload: a PUBLISH, or a smaller control packet.
        cap = 5 + len(self.parser.head) + max_payload
        self._pkt = bytearray(cap)  # QoS 0 publishes and control packets
        self._slots = []
        for _ in range(inflight):
            self._slots.append(bytearray(cap))
        self._slot_pid = [0] * inflight  # 0 = free (a packet id is never 0)
        self._slot_len = [0] * inflight
        # The CONNECT is the same every time: encoded once, at its size
        # (fixed header 5 + 10 + three 2-byte length fields). The fields
        # may be str (a bundle's link settings are).
        fields = []
        for s in (client_id, user, password):
            fields.append(s.encode() if isinstance(s, str) else s)
        client_id, user, password = fields
        pkt = bytearray(21 + len(client_id) + len(user or b"") + len(password or b""))
        self._connect = pkt[:mqtt_codec.encode_connect_into(pkt, client_id, keepalive, user,
                                                            password)]
        self._subs = []  # [(topic, qos)] to restore on a fresh session
        self._pid = 0
        self._sock = None
        self.connected = False
        self.session_present = False
        self._backoff = backoff_min_ms
        self._next_try = ticks_ms()  # start() connects at once
        self.reconnects = 0

    # -- connection -----------------------------------------------------

    def connect(self):
        """Open the connection (closing a previous one) and wait for
        CONNACK; restore subscriptions and resend unacknowledged publishes.
        Returns ``session_present``. Raises ``OSError`` (unreachable,
        timeout, refused: ``ECONNREFUSED`` with the CONNACK return code),
        ``DecodeError``, ``ValueError`` (TLS: certificate refused, Rule 6),
        each named by ``on_error`` first (Rule 7); then ``poll()`` tries
        again after the backoff."""
        self.disconnect()
        stage = 0  # Rule 7: 0 resolve, 1 TCP, 2 TLS, 3 CONNACK
        try:
            ai = socket.getaddrinfo(self.host, self.port, 0, _SOCK_STREAM)[0]
            stage = 1
            s = socket.socket(ai[0], _SOCK_STREAM)
            self._sock = s
            try:
                s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
            except OSError:
                pass  # a port without TCP_NODELAY: small envelopes wait for Nagle
            s.settimeout(self.timeout_ms / 1000)
            s.connect(ai[-1])
            if self.tls:
                stage = 2
                from micropython_port.mqtt_tls import wrap  # loaded only for TLS
                s = wrap(self, s)
                self._sock = s
            stage = 3
            s.setblocking(False)
            self._poller = select.poll()
            self._poller.register(s, _POLLIN)
            self.parser.reset()
            self._ping_sent = -1  # ticks of an unanswered PINGREQ, or -1
            self._write(self._connect, len(self._connect))
            rc = self._read(self.timeout_ms, True)
            if rc:
                stage = 4
                raise OSError(_ECONNREFUSED, rc)  # "[Errno 111] ECONNREFUSED: 5"
            self.connected = True
            stage = 5  # after CONNACK: subscribe and resend
            if not self.session_present:
                for topic, qos in self._subs:
                    self.subscribe(topic, qos)
            for i in range(len(self._slots)):
                if self._slot_pid[i]:
                    pkt = self._slots[i]
                    pkt[0] |= 0x08  # DUP: a resend (section 3.3.1.1)
                    self._write(pkt, self._slot_len[i])
        except Exception as e:
            self.disconnect()
            # The naming code is loaded for the failure and dropped again:
            # a device that connects never holds it (docs/micropython.md).
            from micropython_port import mqtt_tls
            self._report(*mqtt_tls.name_failure(stage, e))
            if not self.tls:
                sys.modules.pop("micropython_port.mqtt_tls", None)
                pkg = sys.modules.get("micropython_port")
                if hasattr(pkg, "mqtt_tls"):
                    delattr(pkg, "mqtt_tls")
            raise
        self._backoff = self.backoff_min_ms
        self.error = None
        return self.session_present

    def _report(self, ev, d):
        if self.error != (ev, d):
            self.error = (ev, d)
            if self.on_error is not None:
                self.on_error(ev, d)

    def disconnect(self):
        """Send DISCONNECT (if connected) and close; ``poll()`` connects
        again once the backoff has passed. In-flight publishes stay in
        their slots and go out again on the next ``connect``. Also how a
        failed connection is dropped: the DISCONNECT is one non-blocking
        write attempt, so a stalled stream does not hold it up."""
        s = self._sock
        if s is not None:
            if self.connected:
                self._pkt[0] = _DISCONNECT
                self._pkt[1] = 0
                try:
                    s.write(self._pkt, 0, 2)
                except OSError:
                    pass
            s.close()
        self._sock = None
        self.connected = False
        self._next_try = ticks_add(ticks_ms(), self._backoff)

    # -- I/O --------------------------------------------------------------

    def _write(self, buf, n):
        # Non-blocking socket: write what fits, wait, go on. ``write(buf,
        # off, n)`` takes an offset, so no slice is made.
        s = self._sock
        if s is None:
            raise OSError(_ENOTCONN)
        deadline = ticks_add(ticks_ms(), self.timeout_ms)
        off = 0
        while off < n:
            w = s.write(buf, off, n - off)
            if w:
                off += w
            elif ticks_diff(deadline, ticks_ms()) <= 0:
                raise OSError(_ETIMEDOUT)
            else:
                sleep_ms(5)  # the send buffer is full
        self._last_tx = ticks_ms()

    def _read(self, timeout_ms, answer):
        # Reads what arrives within timeout_ms and handles each packet.
        # With ``answer``, reads until a CONNACK or SUBACK arrives and
        # returns its return code (one request is outstanding at a time:
        # connect() and subscribe() wait here), or raises ETIMEDOUT.
        self._waited = -1
        p = self.parser
        deadline = ticks_add(ticks_ms(), timeout_ms)
        while True:
            s = self._sock
            if s is None:  # on_message disconnected
                raise OSError(_ENOTCONN)
            for _ in self._poller.ipoll(max(0, ticks_diff(deadline, ticks_ms()))):
                break  # readable, or an error that readinto reports
            n = s.readinto(self._rx)  # None: nothing yet
            if n == 0:
                raise OSError(_ECONNRESET)  # closed by the broker
            off = 0
            while n and off < n:
                off = p.feed_into(self._rx, off, n)
                t = p.packet & 0xF0
                if t == _PUBLISH:
                    # An oversized message is acknowledged, never delivered.
                    if not p.oversize and self.on_message is not None:
                        self.on_message(p.payload, p.payload_len)
                    if p.pid:  # QoS 1 (never 0 then): PUBACK (section 3.4)
                        b = self._pkt
                        b[0] = _PUBACK
                        b[1] = 2
                        b[2] = p.pid >> 8
                        b[3] = p.pid & 0xFF
                        self._write(b, 4)
                elif t == _PUBACK:
                    # In-flight packet ids are distinct: at most ``inflight``
                    # of 65535. A PUBACK for none of them is ignored.
                    if p.pid in self._slot_pid:
                        self._slot_pid[self._slot_pid.index(p.pid)] = 0
                elif t == _PINGRESP:
                    self._ping_sent = -1
                elif t == _CONNACK:
                    self.session_present = p.head[0] & 1 == 1
                    self._waited = p.head[1]
                elif t:  # SUBACK, the only other type the parser delivers
                    self._waited = p.head[2]
            if not answer or self._waited >= 0:
                return self._waited
            if ticks_diff(deadline, ticks_ms()) <= 0:
                raise OSError(_ETIMEDOUT)  # no answer from the broker

    # -- operations -----------------------------------------------------------

    def subscribe(self, topic, qos=1):
        """Subscribe to ``topic`` (bytes) and wait for the SUBACK; remembered
        and restored on a new session. While disconnected it is only
        remembered (returns None) and sent on the next connect. Raises
        ``OSError`` (refused, no answer), ``LocalError`` (topic over 64
        bytes)."""
        self._pid = self._pid % 65535 + 1
        n = mqtt_codec.encode_subscribe_into(self._pkt, self._pid, topic, qos)  # checks the topic
        if (topic, qos) not in self._subs:
            self._subs.append((topic, qos))
        if not self.connected:
            return None
        self._write(self._pkt, n)
        rc = self._read(self.timeout_ms, True)
        if rc & 0x80:
            raise OSError(_ECONNREFUSED, rc)
        return rc

    def inflight(self):
        """QoS 1 publishes not yet acknowledged."""
        return len(self._slot_pid) - self._slot_pid.count(0)

    def publish(self, topic, buf, n, qos=1):
        """Send ``buf[:n]`` on ``topic`` (bytes). QoS 1 waits (polling, up
        to ``timeout_ms``) for a free in-flight slot, copies the packet
        there and returns its packet id; it is sent now if connected,
        otherwise after the reconnect (Rule 3). QoS 0 returns 0, and is
        lost when not connected. Raises ``OSError`` if no slot frees up in
        time, ``LocalError`` for a topic over 64 bytes or a packet larger
        than a slot (every payload up to ``max_payload`` fits)."""
        pkt = self._pkt
        if qos:
            deadline = ticks_add(ticks_ms(), self.timeout_ms)
            while 0 not in self._slot_pid:
                if ticks_diff(deadline, ticks_ms()) <= 0:
                    raise OSError(_ETIMEDOUT)  # no PUBACK freed a slot
                self.poll(20)
            i = self._slot_pid.index(0)
            pkt = self._slots[i]
            self._pid = self._pid % 65535 + 1
        m = mqtt_codec.encode_publish_into(pkt, topic, buf, n, qos, self._pid)
        if qos:
            self._slot_pid[i] = self._pid
            self._slot_len[i] = m
        if self.connected:
            try:
                self._write(pkt, m)
            except OSError:
                self.disconnect()
        return self._pid if qos else 0

    def poll(self, timeout_ms=0):
        """Read and dispatch what arrives within ``timeout_ms``; send a
        PINGREQ when the keepalive is half used; reconnect after a failure
        once the backoff has passed. Returns True if the connection is up
        afterwards."""
        if not self.connected:
            if ticks_diff(ticks_ms(), self._next_try) >= 0:
                try:
                    self.connect()
                    self.reconnects += 1
                except (OSError, DecodeError, ValueError):  # ValueError: TLS (Rule 6)
                    # connect() closed it; the next try waits longer.
                    self._backoff = min(self._backoff * 2, _BACKOFF_MAX_MS)
            if not self.connected:
                sleep_ms(max(0, min(timeout_ms, ticks_diff(self._next_try, ticks_ms()))))
                return False
        try:
            self._read(timeout_ms, False)
            ka = self.keepalive * 1000
            now = ticks_ms()
            if ka:
                if self._ping_sent >= 0:
                    if ticks_diff(now, self._ping_sent) > ka:
                        raise OSError(_ETIMEDOUT)  # no PINGRESP within the keepalive
                elif ticks_diff(now, self._last_tx) >= ka // 2:
                    self._pkt[0] = _PINGREQ
                    self._pkt[1] = 0
                    self._write(self._pkt, 2)
                    self._ping_sent = now
        except (OSError, DecodeError) as e:
            self.disconnect()
            code = e.args[0] if e.args else None
            if code == _ETIMEDOUT:
                self._report("timeout", "keepalive")
            else:
                self._report("connection_lost", code if isinstance(e, OSError) else "bad_packet")
        return self.connected

    # ``start()``: connect now if the broker answers, otherwise later from
    # poll() with backoff; never raises for network trouble, so a board that
    # boots before its broker keeps trying. Returns True if connected now.
    start = poll
