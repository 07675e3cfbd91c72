"""The handshake message-1 counter and its persistence hook.

A sleeping sensor sends its reading inside handshake message 1 (0-RTT). The
peer rejects a replayed message 1 by requiring its counter to exceed the
highest it has seen for that device, so the device's counter must never go
back, across reboots included, without writing flash on every boot.

Invariants:
- Rule 1: a store's ``load()`` returns the ceiling last stored (0 if none).
  Every counter value handed out is below a ceiling that was durably stored
  *before* the value was handed out.
- Rule 2: at boot, counting resumes at the stored ceiling: values of the
  previous boot's chunk that were never used are skipped, never reused.
- Rule 3: the store is written once per ``chunk`` handshakes (aiocoap's
  ``post_seqnoincrease`` idea), so flash wears ``chunk`` times slower.

The persistence hook (duck type) is::

    load() -> int        # the stored ceiling, 0 if none
    store(value) -> None # must be durable (flushed, fsynced) when it returns

Stores: ``NonpersistingCounterStore`` (tests; forgets on restart, as its name
says), ``device.counter_file.FileCounterStore`` (CPython and MicroPython).
"""

from device.errors import LocalError

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

COUNTER_BYTES = const(4)  # big-endian uint32 at the start of message 1's payload
COUNTER_MAX = 0xFFFFFFFF
DEFAULT_CHUNK = const(32)


class NonpersistingCounterStore:
    """Keeps the ceiling in RAM only: a reboot forgets it. Tests only."""

    def __init__(self, value=0):
        self.value = value
        self.writes = 0

    def load(self):
        return self.value

    def store(self, value):
        self.value = value
        self.writes += 1


class Msg1Counter:
    """Hands out strictly increasing message-1 counters (Rules 1-3). Not
    shareable between threads: one device session uses it, under that
    session's ``lock=`` if it has one."""

    def __init__(self, store, chunk=DEFAULT_CHUNK):
        if chunk < 1:
            raise LocalError("chunk must be positive")
        self._store = store
        self._chunk = chunk
        self._ceiling = store.load()
        self._next = self._ceiling

    def peek(self):
        """The value ``next()`` will hand out; it grows across reboots, so it
        also names a device's run (``device.delivery.Outbox.start``)."""
        return self._next

    def next(self):
        """The next counter value. Raises ``LocalError`` when exhausted."""
        v = self._next
        if v >= COUNTER_MAX:
            raise LocalError("counter exhausted; reprovision")
        if v >= self._ceiling:
            ceiling = min(v + self._chunk, COUNTER_MAX)
            self._store.store(ceiling)  # durable before v is used (Rule 1)
            self._ceiling = ceiling
        self._next = v + 1
        return v

    def skip_past(self, v):
        """Never hand out ``v`` or below: the peer has seen ``v`` (an
        authenticated notice, ``device/session.py`` Rule 8). Only moves
        forward; ``next()`` stores a new ceiling before handing out a value
        above the stored one (Rule 1), so nothing is written here."""
        if v >= self._next:
            self._next = v + 1


def put_counter(buf, off, v):
    for i in range(COUNTER_BYTES):
        buf[off + i] = (v >> (8 * (COUNTER_BYTES - 1 - i))) & 0xFF


def get_counter(buf, off):
    v = 0
    for i in range(COUNTER_BYTES):
        v = (v << 8) | buf[off + i]
    return v
