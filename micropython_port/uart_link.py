"""The device's serial link: envelopes in ``device/framing.py`` frames over
``machine.UART`` on a board, or over a tty (a pty in tests) on the unix
port.

Wire format and hellos: docs/protocol.md, "Serial framing" and "Hello
frames". This module is a thin adapter: the framing is the core's, the
gateway end is ``gateway/serial_bridge.py`` over ``moteseal/links/serial_link.py``.

Invariants:
- Rule 1: line noise never raises: the core's ``FrameDecoder`` drops and
  counts bad frames (``decoder.drops``), and only intact frames reach
  ``on_envelope(buf, n)``; ``buf[:n]`` is valid only during the call.
- Rule 2: a hello (an empty frame) is sent when the link opens, and every
  hello received is answered with one, so a gateway that restarts learns
  that the device listens; hellos never reach ``on_envelope``.
- Rule 3: buffers (one receive chunk, one frame in each direction, sized
  by ``max_payload``) are allocated in ``__init__``; ``send`` and ``poll``
  allocate nothing per frame on a board.
  The unix port reads a tty one byte per call while ``poll`` says more is
  waiting, because MicroPython's ``readinto`` on a blocking file reads
  exactly the length it is given.
"""

from micropython import const

from device.framing import FrameDecoder, encode_into, encoded_len

_RX_CHUNK_BYTES = const(128)  # one UART read; the decoder takes it byte by byte
_MAX_PAYLOAD_BYTES = const(1200)  # device.framing.FRAME_PAYLOAD_MAX_BYTES


class _TtyPort:
    # A tty device (a pty on the unix port): raw mode, polled reads.
    def __init__(self, path, baud):
        import select
        import termios
        self._f = open(path, "r+b")
        fd = self._f.fileno()
        termios.setraw(fd)
        speed = getattr(termios, "B%d" % baud, None)
        if speed is not None:
            attrs = termios.tcgetattr(fd)
            attrs[4] = attrs[5] = speed  # ispeed, ospeed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)

    def wait(self, timeout_ms):
        for _ in self._poll.ipoll(timeout_ms):
            return True
        return False

    def readinto(self, buf):
        # Only what is already there: one byte per read (see Rule 3).
        n = 0
        cap = len(buf)
        one = self._one
        while n < cap:
            got = False
            for _ in self._poll.ipoll(0):
                got = True
            if not got:
                break
            if self._f.readinto(one, 1) != 1:
                raise OSError("tty closed")
            buf[n] = one[0]
            n += 1
        return n

    _one = bytearray(1)

    def write(self, buf, n):
        self._f.write(buf, 0, n)

    def close(self):
        self._f.close()


class _UartPort:
    # machine.UART on a board: non-blocking reads of what ``any()`` reports.
    def __init__(self, uart_id, baud, rxbuf):
        import machine
        import time
        self._u = machine.UART(uart_id, baudrate=baud, timeout=0, rxbuf=rxbuf)
        self._sleep = time.sleep_ms
        self._ticks = time.ticks_ms
        self._diff = time.ticks_diff

    def wait(self, timeout_ms):
        t0 = self._ticks()
        while not self._u.any():
            if self._diff(self._ticks(), t0) >= timeout_ms:
                return False
            self._sleep(1)
        return True

    def readinto(self, buf):
        k = self._u.any()
        if not k:
            return 0
        n = self._u.readinto(buf, k if k < len(buf) else len(buf))
        return n or 0

    def write(self, buf, n):
        self._u.write(buf, 0, n)

    def close(self):
        try:
            self._u.deinit()
        except AttributeError:
            pass


class UartLink:
    """Envelopes over a serial port: ``open()``, ``send(buf, n)``,
    ``poll(timeout_ms)``, ``flush(timeout_ms)``, ``close()``.

    ``port`` is a UART number (an int, or a string of digits) on a board, a
    tty path on the unix port, or an object with ``wait``, ``readinto``,
    ``write`` and ``close`` (like the port classes here). ``on_envelope(buf,
    n)`` gets each intact non-empty frame (Rule 1). ``send`` raises
    ``MessageTooLarge`` for an envelope over ``max_payload`` (at most
    ``device.framing.FRAME_PAYLOAD_MAX_BYTES``) and ``OSError`` if the port
    fails; ``open`` raises ``OSError``.
    """

    def __init__(self, port, on_envelope, baud=115200, max_payload=_MAX_PAYLOAD_BYTES,
                 opened=True):
        self.on_envelope = on_envelope
        self._port = port
        self._baud = baud
        self.decoder = FrameDecoder(max_payload)
        self._rx = bytearray(_RX_CHUNK_BYTES)
        self._tx = bytearray(encoded_len(max_payload))
        self._on_frame = self._frame  # bound once: no allocation per frame
        if opened:
            self.open()

    def open(self):
        """Open the port and say hello (Rule 2)."""
        port = self._port
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            port = _UartPort(int(port), self._baud, 2048)
        elif isinstance(port, str):
            port = _TtyPort(port, self._baud)
        self._port = port
        self.hello()

    def flush(self, timeout_ms=0):
        """Writes are complete when ``send`` returns: nothing to wait for."""

    def hello(self):
        """Send an empty frame (Rule 2)."""
        n = encode_into(self._tx, 0, self._tx)
        self._port.write(self._tx, n)

    def send(self, buf, n):
        """Frame ``buf[:n]`` and write it."""
        k = encode_into(buf, n, self._tx)
        self._port.write(self._tx, k)

    def _frame(self, buf, n):
        if n:
            self.on_envelope(buf, n)
        else:
            self.hello()

    def poll(self, timeout_ms=0):
        """Wait up to ``timeout_ms`` for bytes, then decode all that are
        waiting. Returns the number of bytes read."""
        if not self._port.wait(timeout_ms):
            return 0
        total = 0
        rx = self._rx
        while True:
            n = self._port.readinto(rx)
            if not n:
                return total
            total += n
            self.decoder.feed_into(rx, n, self._on_frame)

    def close(self):
        self._port.close()


__all__ = ["UartLink"]
