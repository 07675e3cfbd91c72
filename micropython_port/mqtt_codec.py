"""MQTT 3.1.1 packets for the device client (``micropython_port.mqtt``):
a sans-I/O parser and encoders into caller buffers.

Used by ``micropython_port/main.py`` to publish envelopes on
``moteseal/v1/up/<id>`` and receive them on ``moteseal/v1/down/<id>``.
Runs on MicroPython (unix port and boards, over its ``socket`` and
``select.poll``); the parser also runs on CPython, where it is fuzzed.

Invariants:
- Rule 1: ``PacketParser.feed_into`` either delivers whole packets or raises
  ``DecodeError``; it never asserts on and never raises anything else for
  remote bytes (MicroPython drops asserts at opt level >= 1; umqtt.simple
  relies on them). After a ``DecodeError`` the stream is out of step: the
  parser refuses everything until ``reset()``, and the client drops the
  connection and reconnects.
- Rule 2: a PUBLISH payload is written to ``payload`` from offset 0, so an
  envelope can go straight to ``DeviceSession.receive_into(buf, n, ...)``
  without a copy or a slice. Everything before it (topic, packet id) and
  every other packet's body go to ``head``. Buffers are allocated once in
  ``__init__``; feeding bytes allocates nothing.

Limits: ``max_payload`` bounds a PUBLISH payload (default
``ENVELOPE_MAX_BYTES``, one envelope): a longer payload is skipped, not
stored, and delivered with ``oversize`` set and no bytes, so the client can
still acknowledge it (a QoS 1 message that failed the connection would be
redelivered after every reconnect and wedge the device). ``TOPIC_MAX_BYTES``
bounds a topic (ours are ``moteseal/v1/down/`` + a 16-byte id = 34 bytes);
a longer one is a ``DecodeError``: the broker only sends on topics we
subscribed to.
"""

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

from device.errors import DecodeError, LocalError

# Packet types (MQTT 3.1.1 section 2.2.1), as the high nibble.
CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x82)  # with the reserved flags 0b0010 (section 3.8.1)
SUBACK = const(0x90)
PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)

TOPIC_MAX_BYTES = const(64)  # "moteseal/v1/down/" (17) + id (16) = 33; room for prefixes
# Everything but a PUBLISH payload lands in ``head``: topic length (2) +
# topic + packet id (2); a CONNACK (2), PUBACK (2), SUBACK (2 + 1 per
# filter) or PINGRESP (0) is smaller.
HEAD_BYTES = const(2 + 64 + 2)
REMAINING_LENGTH_MAX_BYTES = const(4)  # section 2.2.3: at most four bytes
DEFAULT_MAX_PAYLOAD = const(1200)  # device.envelope.ENVELOPE_MAX_BYTES

# Parser states.
_S_TYPE = const(0)
_S_LEN = const(1)
_S_BODY = const(2)
_S_FAILED = const(3)


class PacketParser:
    """Bytes from the broker in, packets out (sans-I/O).

    ``feed_into(data, n, on_packet)`` calls ``on_packet(ptype, flags)`` for
    each whole packet; during the call ``head[:head_len]`` holds the
    variable header (for PUBLISH: ``topic_off``, ``topic_len``, ``pid``) and
    ``payload[:payload_len]`` a PUBLISH payload (``oversize`` True and no
    bytes if it exceeded ``max_payload``). Raises ``DecodeError`` (Rule 1)
    for: a reserved or client-only packet type, wrong fixed-header flags,
    QoS 3, a remaining length longer than 4 bytes, a topic longer than
    ``TOPIC_MAX_BYTES`` or beyond the packet, a malformed
    CONNACK/PUBACK/SUBACK/PINGRESP.
    """

    def __init__(self, max_payload=DEFAULT_MAX_PAYLOAD):
        if max_payload < 1:
            raise LocalError("max_payload must be positive")
        self.max_payload = max_payload
        self.head = bytearray(HEAD_BYTES)
        self.payload = bytearray(max_payload)
        self.reset()

    def reset(self):
        """Forget a partial packet (a new connection starts)."""
        self._state = _S_TYPE
        self._byte1 = 0
        self._rem = 0  # remaining length of the current packet
        self._shift = 0
        self._lenbytes = 0
        self._got = 0  # body bytes received so far
        self._split = -1  # PUBLISH: body offset where the payload starts
        self.head_len = 0
        self.payload_len = 0
        self.topic_off = 0
        self.topic_len = 0
        self.pid = 0
        self.oversize = False

    def _fail(self, why):
        self._state = _S_FAILED
        raise DecodeError(why)

    def _start(self, b):
        t = b & 0xF0
        f = b & 0x0F
        if t == PUBLISH:
            if (f >> 1) & 3 == 3:
                self._fail("PUBLISH with QoS 3")
        elif t == CONNACK or t == PUBACK or t == SUBACK or t == PINGRESP:
            if f != 0:
                self._fail("reserved flags set")
        else:
            # CONNECT, SUBSCRIBE, PINGREQ, DISCONNECT come only from clients;
            # PUBREC/PUBREL/PUBCOMP only with QoS 2, which we never ask for;
            # 0x00 and 0xF0 are reserved.
            self._fail("unexpected packet type")
        self._byte1 = b
        self._rem = 0
        self._shift = 0
        self._lenbytes = 0
        self._state = _S_LEN

    def _body_starts(self):
        rem = self._rem
        t = self._byte1 & 0xF0
        self._got = 0
        self._split = -1
        self.head_len = 0
        self.payload_len = 0
        self.oversize = False
        if t == PUBLISH:
            # topic length (2) + topic + [pid (2)] + payload: at least 2 + 1.
            if rem < 3:
                self._fail("PUBLISH too short")
        elif t == CONNACK or t == PUBACK:
            if rem != 2:
                self._fail("bad CONNACK/PUBACK length")
        elif t == SUBACK:
            if rem < 3 or rem > HEAD_BYTES:
                self._fail("bad SUBACK length")
        elif rem != 0:  # PINGRESP
            self._fail("bad PINGRESP length")
        self._state = _S_BODY

    def _publish_split(self):
        # The first two body bytes (topic length) are in; where does the
        # payload start?
        tl = (self.head[0] << 8) | self.head[1]
        if tl < 1 or tl > TOPIC_MAX_BYTES:
            self._fail("topic empty or longer than TOPIC_MAX_BYTES")
        split = 2 + tl + (2 if self._byte1 & 0x06 else 0)
        if split > self._rem:
            self._fail("topic runs past the packet")
        self.oversize = self._rem - split > self.max_payload  # skipped, see Limits
        self.topic_off = 2
        self.topic_len = tl
        self._split = split

    def _finish(self, on_packet):
        b1 = self._byte1
        t = b1 & 0xF0
        if t == PUBLISH:
            s = self._split
            self.head_len = s
            self.payload_len = 0 if self.oversize else self._rem - s
            self.pid = 0
            if b1 & 0x06:
                h = self.head
                self.pid = (h[s - 2] << 8) | h[s - 1]
                if self.pid == 0:
                    self._fail("QoS 1 PUBLISH with packet id 0")
        else:
            self.head_len = self._rem
            self.payload_len = 0
            if t == PUBACK or t == SUBACK:
                h = self.head
                self.pid = (h[0] << 8) | h[1]
        self._state = _S_TYPE
        on_packet(t, b1 & 0x0F)

    def feed_into(self, data, n, on_packet):
        """Parse ``data[:n]``; ``on_packet(ptype, flags)`` per packet. Raises
        ``DecodeError`` (Rule 1); ``LocalError`` if ``n`` is out of range.
        An exception from ``on_packet`` propagates; the parser is then at
        the start of the next packet."""
        if n < 0 or n > len(data):
            raise LocalError("n out of range")
        if self._state == _S_FAILED:
            raise DecodeError("stream out of step; reset() after reconnecting")
        head = self.head
        payload = self.payload
        i = 0
        while i < n:
            st = self._state
            b = data[i]
            i += 1
            if st == _S_BODY:
                g = self._got
                s = self._split
                if s < 0:
                    head[g] = b
                    g += 1
                    if g == 2 and self._byte1 & 0xF0 == PUBLISH:
                        self._got = g
                        self._publish_split()
                else:
                    if g < s:
                        head[g] = b
                    elif not self.oversize:
                        payload[g - s] = b
                    g += 1
                self._got = g
                if g == self._rem:
                    self._finish(on_packet)
            elif st == _S_TYPE:
                self._start(b)
            elif st == _S_LEN:
                self._rem |= (b & 0x7F) << self._shift
                self._shift += 7
                self._lenbytes += 1
                if b & 0x80:
                    if self._lenbytes == REMAINING_LENGTH_MAX_BYTES:
                        self._fail("remaining length longer than 4 bytes")
                    continue
                self._body_starts()
                if self._rem == 0:
                    self._finish(on_packet)
            else:
                raise DecodeError("stream out of step; reset() after reconnecting")

    def topic_is(self, topic):
        """True if the PUBLISH being delivered has topic ``topic`` (bytes)."""
        if len(topic) != self.topic_len:
            return False
        h = self.head
        o = self.topic_off
        for i in range(len(topic)):
            if h[o + i] != topic[i]:
                return False
        return True


# --- encoders (into caller buffers; return the byte count) -----------------


def _put_len(buf, off, n):
    # Remaining length, MQTT 3.1.1 section 2.2.3.
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[off] = b | 0x80
            off += 1
        else:
            buf[off] = b
            return off + 1


def _len_size(n):
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def _put_str(buf, off, s):
    n = len(s)
    buf[off] = n >> 8
    buf[off + 1] = n & 0xFF
    off += 2
    for i in range(n):
        buf[off + i] = s[i]
    return off + n


def _connect_rem(client_id, user, password):
    # protocol name (2 + 4) + level (1) + flags (1) + keepalive (2) = 10
    rem = 10 + 2 + len(client_id)
    if user is not None:
        rem += 2 + len(user)
    if password is not None:
        rem += 2 + len(password)
    return rem


def encode_connect_into(buf, client_id, keepalive, user=None, password=None,
                        clean_session=False):
    """CONNECT (section 3.1); ``client_id``, ``user``, ``password`` are
    bytes. Returns the length."""
    buf[0] = CONNECT
    off = _put_len(buf, 1, _connect_rem(client_id, user, password))
    off = _put_str(buf, off, b"MQTT")
    buf[off] = 4  # protocol level 4 = 3.1.1
    flags = 0x02 if clean_session else 0
    if user is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    buf[off + 1] = flags
    buf[off + 2] = keepalive >> 8
    buf[off + 3] = keepalive & 0xFF
    off = _put_str(buf, off + 4, client_id)
    if user is not None:
        off = _put_str(buf, off, user)
    if password is not None:
        off = _put_str(buf, off, password)
    return off


def publish_header_into(buf, topic, n, qos, pid, dup=False):
    """The fixed header, topic and packet id of a PUBLISH whose payload of
    ``n`` bytes follows. Returns the offset of the payload."""
    rem = 2 + len(topic) + (2 if qos else 0) + n
    buf[0] = PUBLISH | (0x08 if dup else 0) | (qos << 1)
    off = _put_len(buf, 1, rem)
    off = _put_str(buf, off, topic)
    if qos:
        buf[off] = pid >> 8
        buf[off + 1] = pid & 0xFF
        off += 2
    return off


def encode_subscribe_into(buf, pid, topic, qos):
    rem = 2 + 2 + len(topic) + 1
    buf[0] = SUBSCRIBE
    off = _put_len(buf, 1, rem)
    buf[off] = pid >> 8
    buf[off + 1] = pid & 0xFF
    off = _put_str(buf, off + 2, topic)
    buf[off] = qos
    return off + 1


def encode_ack_into(buf, ptype, pid):
    buf[0] = ptype
    buf[1] = 2
    buf[2] = pid >> 8
    buf[3] = pid & 0xFF
    return 4


__all__ = ["PacketParser", "TOPIC_MAX_BYTES", "HEAD_BYTES", "DEFAULT_MAX_PAYLOAD",
           "encode_connect_into", "encode_subscribe_into", "publish_header_into",
           "encode_ack_into"]
