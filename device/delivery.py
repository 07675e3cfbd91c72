"""End-to-end delivery of readings: sequence numbers, retention on the
device, cumulative acknowledgements from the peer (docs/protocol.md,
"Delivery").

Sans-I/O like the rest of the core: the caller seals what ``Outbox`` frames
with its session and passes the peer's acknowledgements back in. The peer's
half (deduplication against a persisted high-water mark) is
``moteseal.peer.delivery``.

Wire forms (inside the encrypted payload, so the relay sees none of it):
- a reading, device to peer: ``0x01 | boot u32 | seq u32 | back u8 | body``
  (10 bytes before the body, big-endian). ``boot`` names the device's run
  (the message-1 counter of its first handshake since power-up, so it grows
  across reboots); ``seq`` counts readings from 0 within a run; ``back`` is
  ``seq`` minus the oldest reading the device still retains, so the peer
  knows which gaps are gone for good.
- an acknowledgement, peer to device: ``0x06 | boot u32 | seq u32``: every
  reading of runs before ``boot``, and of ``boot`` up to ``seq``, is
  delivered. Cumulative, so a lost acknowledgement costs nothing.
- a command, peer to device: ``0x02 | id u32 | body``; the device answers
  ``0x03 | id u32`` once it has handed the body to its application, so the
  sender can see that the device got it (``moteseal send --wait``). A
  command sent again (the hub resends until answered) carries the same id.

Invariants:
- Rule 1: a reading stays in the outbox until an acknowledgement covers it;
  after a handshake and on ``resend_due`` the device sends every retained
  reading again, in sequence order. The peer delivers a reading only if it
  is the next one it expects, so resends and duplicates are dropped there.
- Rule 2: the outbox is a fixed buffer of ``slots`` readings. Adding to a
  full outbox evicts the oldest reading and counts it in ``evicted``: never
  a silent loss. (An evicted reading may still have arrived, its
  acknowledgement lost; the peer counts the readings that never did.)
- Rule 3: ``add``, ``view``, ``length`` and ``ack`` allocate nothing on
  MicroPython (the slot views are made once, in ``__init__``).
"""

from device.errors import LocalError, MessageTooLarge

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

READING = const(0x01)
COMMAND = const(0x02)
COMMAND_ACK = const(0x03)
ACK = const(0x06)
COMMAND_HEAD_BYTES = const(5)  # kind, id
HEAD_BYTES = const(10)  # kind, boot, seq, back
ACK_BYTES = const(9)  # kind, boot, seq
DEFAULT_SLOTS = const(16)
DEFAULT_READING_BYTES = const(64)
_U32 = const(0xFFFFFFFF)


def _put32(buf, off, v):
    buf[off] = (v >> 24) & 0xFF
    buf[off + 1] = (v >> 16) & 0xFF
    buf[off + 2] = (v >> 8) & 0xFF
    buf[off + 3] = v & 0xFF


def _get32(buf, off):
    return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]


def is_reading(buf, n):
    """True if ``buf[:n]`` is a framed reading (``READING`` and a header)."""
    return n >= HEAD_BYTES and buf[0] == READING


def parse_reading(buf, n):
    """``(boot, seq, back)`` of a framed reading; its body is
    ``buf[HEAD_BYTES:n]``. Raises ``LocalError`` if ``buf`` is not one."""
    if not is_reading(buf, n):
        raise LocalError("not a framed reading")
    return _get32(buf, 1), _get32(buf, 5), buf[9]


def is_ack(buf, n):
    return n == ACK_BYTES and buf[0] == ACK


def command_id(buf, n):
    """The id of a command frame ``buf[:n]`` (its body is
    ``buf[COMMAND_HEAD_BYTES:n]``), or -1 if it is not one."""
    if n < COMMAND_HEAD_BYTES or buf[0] != COMMAND:
        return -1
    return _get32(buf, 1)


def encode_command_ack_into(buf, cid):
    """Writes the device's answer to command ``cid``; returns its length."""
    buf[0] = COMMAND_ACK
    _put32(buf, 1, cid & _U32)
    return COMMAND_HEAD_BYTES


def encode_ack_into(buf, boot, seq):
    """Writes an acknowledgement of ``(boot, seq)``; returns ``ACK_BYTES``."""
    buf[0] = ACK
    _put32(buf, 1, boot & _U32)
    _put32(buf, 5, seq & _U32)
    return ACK_BYTES


class Outbox:
    """A device's readings not yet acknowledged, in a fixed buffer of
    ``slots`` readings of at most ``reading_bytes`` each (Rule 2).

    ``start(boot)`` once the run's first message-1 counter is known;
    ``add(body, n)`` frames a reading and returns its ``seq``;
    ``view(seq)`` / ``length(seq)`` give the framed bytes to seal;
    ``ack(buf, n)`` consumes an acknowledgement; ``pending()`` lists the
    retained seqs, oldest first, to send again after a handshake.

    Not thread-safe: one device loop owns it (MicroPython has one thread).
    """

    def __init__(self, slots=DEFAULT_SLOTS, reading_bytes=DEFAULT_READING_BYTES):
        if slots < 1 or slots > 255:
            raise LocalError("outbox slots: 1..255")
        self.slots = slots
        self.slot_bytes = HEAD_BYTES + reading_bytes
        self._buf = bytearray(slots * self.slot_bytes)
        mv = memoryview(self._buf)
        self._views = [mv[i * self.slot_bytes:(i + 1) * self.slot_bytes] for i in range(slots)]
        self._len = [0] * slots
        self.boot = -1
        self.next_seq = 0  # seq of the next reading
        self.first = 0  # oldest retained seq; == next_seq when empty
        self.evicted = 0  # readings evicted before an acknowledgement (Rule 2)
        self.acked = -1  # highest seq the peer acknowledged in this run
        self._sent = [0] * slots  # caller's clock (an int) when each slot was last sent

    def start(self, boot):
        """Names this run (Rule 1): the first message-1 counter since power-up.
        Only once per run: later handshakes of the same run keep it."""
        if self.boot < 0:
            self.boot = boot & _U32

    def rename(self, boot):
        """Names the run anew (``boot`` above every earlier run's), after the
        peer said our message-1 counter was behind (``EV_COUNTER_BEHIND``: a
        lost counter file, so this run's first counter repeated an old run's
        and the peer would take its readings for duplicates). Retained
        readings go out under the new name when they are sent again."""
        self.boot = boot & _U32

    def count(self):
        """Readings retained, not yet acknowledged."""
        return self.next_seq - self.first

    def add(self, body, n):
        """Frames ``body[:n]`` as the next reading; returns its seq. Evicts
        (and counts) the oldest reading if the outbox is full. Raises
        ``LocalError`` before ``start`` and ``MessageTooLarge``."""
        if self.boot < 0:
            raise LocalError("outbox: start(boot) first")
        if n > self.slot_bytes - HEAD_BYTES:
            raise MessageTooLarge("reading larger than the outbox slot")
        if self.next_seq - self.first >= self.slots:
            self.first += 1
            self.evicted += 1
        seq = self.next_seq
        i = seq % self.slots
        v = self._views[i]
        v[0] = READING
        _put32(v, 1, self.boot)
        _put32(v, 5, seq & _U32)
        v[9] = 0
        for k in range(n):
            v[HEAD_BYTES + k] = body[k]
        self._len[i] = HEAD_BYTES + n
        self.next_seq = seq + 1
        return seq

    def view(self, seq):
        """The framed reading ``seq`` (a slot view; use ``length(seq)`` bytes),
        with ``back`` set for the outbox as it is now."""
        if seq < self.first or seq >= self.next_seq:
            raise LocalError("outbox: no such reading")
        v = self._views[seq % self.slots]
        _put32(v, 1, self.boot)  # the run's current name (``rename``)
        v[9] = seq - self.first
        return v

    def length(self, seq):
        return self._len[seq % self.slots]

    def pending(self):
        """Retained seqs, oldest first."""
        return range(self.first, self.next_seq)

    def ack(self, buf, n):
        """Consumes an acknowledgement; True if ``buf[:n]`` was one (Rule 1).
        An acknowledgement of another run, or of readings not yet sent, frees
        only what it can."""
        if not is_ack(buf, n):
            return False
        if _get32(buf, 1) != self.boot:
            return True  # another run's: nothing retained is covered by it
        seq = _get32(buf, 5)
        if seq >= self.next_seq:
            seq = self.next_seq - 1
        if seq >= self.first:
            self.first = seq + 1
        if seq > self.acked:
            self.acked = seq
        return True

    def mark_sent(self, seq, now):
        """Records that reading ``seq`` went out at ``now`` (an int clock,
        e.g. ``time.ticks_ms()``; it must not allocate)."""
        self._sent[seq % self.slots] = now

    def resend_due(self, now, timeout):
        """True when the oldest retained reading has waited ``timeout`` since
        it was last sent without an acknowledgement: send every ``pending()``
        reading again (go-back-N; the peer drops what it already has). With
        wrapping clocks the caller passes ``now`` and ``timeout`` such that
        plain subtraction is right."""
        if self.first == self.next_seq or now is None:
            return False
        return now - self._sent[self.first % self.slots] >= timeout
