"""A fixed-size sliding anti-replay window over explicit 64-bit nonces.

Invariants (after RFC 6479 / RFC 4303 section 3.4.3, adapted to Noise):
- Rule 1: ``hi`` is the highest nonce accepted so far (-1 before any). A nonce
  ``n`` is fresh iff ``n > hi``, or ``hi - size < n <= hi`` and its bit is
  clear. Anything at or below ``hi - size`` is too old.
- Rule 2: ``check`` never changes state; only ``commit`` does, and the
  transport calls it only after the message authenticated, so a forgery
  cannot move the window (STYLE.md section 3, failure is atomic).
- Rule 3: the bitmap is one preallocated bytearray; bit ``n % size`` stands
  for nonce ``n`` while ``n`` is inside the window. No allocation per call.
"""

from device.errors import LocalError, ReplayError

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

DEFAULT_WINDOW = const(64)
MAX_WINDOW = const(4096)  # 512 bytes of bitmap; larger windows buy nothing on a sensor link


class ReplayWindow:
    """Remembers which of the last ``size`` nonces were accepted. Not
    shareable between threads (``check`` then ``commit`` are two steps):
    reached through its ``Transport``'s session lock."""

    def __init__(self, size=DEFAULT_WINDOW):
        if size < 8 or size > MAX_WINDOW or size % 8:
            raise LocalError("window must be 8..4096, step 8")
        self.size = size
        self.hi = -1
        self._bits = bytearray(size // 8)

    def check(self, n):
        """Raises ``ReplayError`` if nonce ``n`` is a duplicate or too old."""
        if n > self.hi:
            return
        if n <= self.hi - self.size:
            raise ReplayError("message older than the window")
        i = n % self.size
        if self._bits[i >> 3] & (1 << (i & 7)):
            raise ReplayError("duplicate message")

    def commit(self, n):
        """Marks ``n`` as seen; call only after ``check(n)`` and authentication."""
        size = self.size
        bits = self._bits
        if n == self.hi + 1:  # in-order arrival: the slot n takes is the one n - size leaves
            self.hi = n
            i = n % size
            bits[i >> 3] |= 1 << (i & 7)
            return
        if n > self.hi:
            # Clear the slots of the nonces the window slides over.
            gap = n - self.hi
            if gap >= size:
                for j in range(len(bits)):
                    bits[j] = 0
            else:
                m = self.hi + 1
                while m < n:
                    i = m % size
                    bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
                    m += 1
            self.hi = n
        i = n % size
        bits[i >> 3] |= 1 << (i & 7)
