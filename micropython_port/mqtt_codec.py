"""MQTT 3.1.1 packets for the device client (``micropython_port.mqtt``):
a sans-I/O parser and encoders into caller buffers.

Used through the client by ``micropython_port/app.py`` to publish envelopes on
``moteseal/v1/up/<id>`` and receive them on ``moteseal/v1/down/<id>``.
Runs on MicroPython (unix port and boards, over its ``socket`` and
``select.poll``); the parser also runs on CPython, where it is fuzzed.

Invariants:
- Rule 1: ``PacketParser.feed_into`` either delivers whole packets (one
  per call: it is a pull parser, and runs no callback) or raises
  ``DecodeError``; it never asserts on and never raises anything else for
  remote bytes (MicroPython drops asserts at opt level >= 1; umqtt.simple
  relies on them). After a ``DecodeError`` the stream is out of step: the
  parser refuses everything until ``reset()``, and the client drops the
  connection and reconnects.
- Rule 2: a PUBLISH payload is written to ``payload`` from offset 0, so an
  envelope can go straight to ``DeviceSession.receive_into(buf, n, ...)``
  without a copy or a slice. Everything before it (topic, packet id) and
  every other packet's body go to ``head``. Buffers are allocated once in
  ``__init__``; feeding bytes and encoding allocate nothing.

Limits: ``max_payload`` bounds a PUBLISH payload (the client passes one
envelope): a longer payload is skipped, not stored, and delivered with
``oversize`` set and no bytes, so the client can still acknowledge it (a
QoS 1 message that failed the connection would be redelivered after every
reconnect and wedge the device). ``_TOPIC_MAX_BYTES`` bounds a topic both
ways (ours are ``moteseal/v1/down/`` + a 16-byte id = 33 bytes); a longer
one from the broker is a ``DecodeError``: it only sends on topics we
subscribed to.

Memory: this module is loaded on a device with a 64 KiB heap, so constants
are module-private (``_NAME = const(x)`` is inlined and costs no RAM) and
there are few functions (each costs RAM whether called or not).
"""

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

from device.errors import DecodeError, LocalError

# Packet types (MQTT 3.1.1 section 2.2.1), as the high nibble.
_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)  # with the reserved flags 0b0010 (section 3.8.1)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)

_TOPIC_MAX_BYTES = const(64)  # "moteseal/v1/down/" (17) + id (16) = 33; room for prefixes
# Everything but a PUBLISH payload lands in ``head``: topic length (2) +
# topic + packet id (2); a CONNACK (2), PUBACK (2), SUBACK (2 + 1 per
# filter) or PINGRESP (0) is smaller.
_HEAD_BYTES = const(2 + 64 + 2)
_LENGTH_MAX_BYTES = const(4)  # remaining length: at most four bytes (section 2.2.3)

# Parser states.
_S_TYPE = const(0)
_S_LEN = const(1)
_S_BODY = const(2)
_S_FAILED = const(3)


class PacketParser:
    """Bytes from the broker in, packets out (sans-I/O).

    ``feed_into(data, off, n)`` parses ``data[off:n]`` up to the end of the
    first whole packet and returns the offset after the bytes it used (a
    pull parser, like h11's ``next_event``: no callback runs inside it).
    ``packet`` is then that packet's first byte (type and flags), or 0 if
    the bytes ran out first; until the next call ``head[:head_len]`` holds
    its variable header (for PUBLISH: topic length, topic, packet id; ``pid``
    holds the packet id of a QoS 1 PUBLISH or a PUBACK, else 0) and
    ``payload[:payload_len]`` a PUBLISH payload (``oversize`` True and no
    bytes if it exceeded ``max_payload``). Raises ``DecodeError`` (Rule 1)
    for: a reserved or client-only packet type, wrong fixed-header flags,
    QoS 3, a remaining length longer than 4 bytes, a topic empty, longer
    than ``_TOPIC_MAX_BYTES`` or beyond the packet, a QoS 1 PUBLISH or a
    PUBACK with packet id 0, a CONNACK/PUBACK/SUBACK/PINGRESP of the wrong
    length (checked once the remaining length is in).
    """

    def __init__(self, max_payload):
        self.head = bytearray(_HEAD_BYTES)
        self.payload = bytearray(max_payload)
        self.reset()

    def reset(self):
        """Forget a partial packet and a failure (a new connection starts)."""
        self._state = _S_TYPE
        self.pid = 0

    def feed_into(self, data, off, n):
        """Parse ``data[off:n]`` up to the end of one packet (see the class);
        returns the offset after the bytes used. Raises ``DecodeError``
        (Rule 1); ``LocalError`` if ``n > len(data)``."""
        if n > len(data):
            raise LocalError("too long")
        head = self.head
        self.packet = 0
        while off < n:
            b = data[off]
            off += 1
            st = self._state
            # Failed until this byte is accepted: a raise below leaves the
            # parser refusing everything until reset() (Rule 1).
            self._state = _S_FAILED
            if st == _S_BODY:
                g = self._got
                s = self._split
                if g < s:
                    head[g] = b
                elif not self.oversize:
                    self.payload[g - s] = b
                g += 1
                self._got = g
                if g == 2 and self._byte1 & 0xF0 == _PUBLISH:
                    # The topic length is in: the payload starts after the
                    # topic and, for QoS 1, the packet id.
                    n_topic = (head[0] << 8) | head[1]
                    s = n_topic + (4 if self._byte1 & 0x06 else 2)
                    if n_topic < 1 or n_topic > _TOPIC_MAX_BYTES or s > self._rem:
                        raise DecodeError("bad topic")
                    self.oversize = self._rem - s > len(self.payload)  # skipped: see Limits
                    self._split = s
            elif st == _S_TYPE:
                self._byte1 = b  # checked with the length, below
                self._rem = 0
                self._got = 0  # remaining-length bytes so far
                st = _S_LEN
            elif st == _S_LEN:
                g = self._got
                rem = self._rem | (b & 0x7F) << (7 * g)
                self._rem = rem
                self._got = g + 1
                if b & 0x80:
                    if g == _LENGTH_MAX_BYTES - 1:
                        raise DecodeError("bad header")
                else:
                    # The fixed header is in. Only what a broker sends a
                    # QoS 0/1 client passes, at a length its body needs:
                    # CONNECT, SUBSCRIBE, PINGREQ, DISCONNECT come only from
                    # clients; PUBREC/PUBREL/PUBCOMP only with QoS 2, which
                    # we never ask for; 0x00 and 0xF0 are reserved; flags
                    # are 0 but for PUBLISH, where QoS 3 is invalid.
                    b = self._byte1
                    self._split = rem  # all of the body is head
                    if b & 0xF0 == _PUBLISH:
                        # topic length (2) + topic (1 or more) + payload
                        ok = b & 0x06 != 0x06 and rem > 2
                        self._split = 2  # until the topic length is in
                    elif b == _SUBACK:
                        ok = 2 < rem <= _HEAD_BYTES  # packet id, a code per filter
                    elif b == _PINGRESP:
                        ok = rem == 0
                    else:
                        ok = (b == _CONNACK or b == _PUBACK) and rem == 2
                    if not ok:
                        raise DecodeError("bad header")
                    self._got = 0  # body bytes so far
                    self.oversize = False
                    st = _S_BODY
            else:
                raise DecodeError("need reset")
            if st == _S_BODY and self._got == self._rem:
                # A whole packet.
                b = self._byte1
                s = self._split
                self.head_len = s
                self.payload_len = 0 if self.oversize else self._rem - s
                pid = 0
                if b & 0x06 or b == _PUBACK:  # QoS 1 PUBLISH (others have flags 0)
                    # The last two bytes of the head; never 0 (section 2.3.1).
                    pid = (head[s - 2] << 8) | head[s - 1]
                    if pid == 0:
                        raise DecodeError("bad pid")
                self.pid = pid
                st = _S_TYPE
            self._state = st
            if st == _S_TYPE:
                self.packet = b
                break
        return off


# --- encoders (into caller buffers; return the byte count) -----------------


def _put_str(buf, off, s):
    # A string or binary field (section 1.5.3): 2-byte length, the bytes.
    n = len(s)
    buf[off] = n >> 8
    buf[off + 1] = n & 0xFF
    off += 2
    for i in range(n):
        buf[off + i] = s[i]
    return off + n


def encode_connect_into(buf, client_id, keepalive, user, password):
    """CONNECT (section 3.1) for a persistent session (clean session 0);
    ``client_id`` and ``user``, ``password`` (each bytes or None) are
    bytes. Returns the length. Raises
    ``LocalError`` if it would not fit a one-byte remaining length (127:
    the three fields 111 bytes together), ``IndexError`` if not ``buf``."""
    buf[0] = _CONNECT
    off = _put_str(buf, 2, b"MQTT")
    buf[off] = 4  # protocol level 4 = 3.1.1
    flags = 0
    if user is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    buf[off + 1] = flags
    buf[off + 2] = keepalive >> 8
    buf[off + 3] = keepalive & 0xFF
    off = _put_str(buf, off + 4, client_id)
    for s in (user, password):
        if s is not None:
            off = _put_str(buf, off, s)
    if off - 2 > 0x7F:
        raise LocalError("too long")
    buf[1] = off - 2
    return off


def encode_publish_into(buf, topic, payload, n, qos, pid):
    """PUBLISH (section 3.3) of ``payload[:n]`` on ``topic`` (bytes), DUP
    and RETAIN clear; ``pid`` only for QoS 1. Returns the length. Raises
    ``LocalError`` for a topic longer than ``_TOPIC_MAX_BYTES`` or a
    packet that might not fit ``buf`` (the fixed header counted at its
    largest, 5 bytes), before writing anything."""
    rem = 2 + len(topic) + (2 if qos else 0) + n
    if len(topic) > _TOPIC_MAX_BYTES or 5 + rem > len(buf):
        raise LocalError("too long")
    buf[0] = _PUBLISH | (qos << 1)
    # The remaining length, 7 bits a byte, low first (section 2.2.3).
    off = 1
    while rem > 0x7F:
        buf[off] = (rem & 0x7F) | 0x80
        rem >>= 7
        off += 1
    buf[off] = rem
    off = _put_str(buf, off + 1, topic)
    if qos:
        buf[off] = pid >> 8
        buf[off + 1] = pid & 0xFF
        off += 2
    # Byte loop: a slice of payload would allocate on MicroPython.
    for i in range(n):
        buf[off + i] = payload[i]
    return off + n


def encode_subscribe_into(buf, pid, topic, qos):
    """SUBSCRIBE (section 3.8) to one topic filter. Returns the length.
    Raises ``LocalError`` for a topic longer than ``_TOPIC_MAX_BYTES``."""
    if len(topic) > _TOPIC_MAX_BYTES:
        raise LocalError("too long")
    buf[0] = _SUBSCRIBE
    buf[1] = 2 + 2 + len(topic) + 1  # under 128: a one-byte remaining length
    buf[2] = pid >> 8
    buf[3] = pid & 0xFF
    off = _put_str(buf, 4, topic)
    buf[off] = qos
    return off + 1
