"""A serial link for envelopes: framing over pyserial, with re-plug recovery.

CPython only: a thin adapter between ``device.framing`` (sans-I/O) and any
pyserial URL (``/dev/ttyUSB0``, ``loop://``, ``socket://host:port``,
``rfc2217://host:port``). One reader thread owns the port's lifecycle:

- it opens the port, reads, and hands each intact frame's payload to the
  ``on_frame`` callback (or to a bounded queue read with ``recv()`` / by
  iterating);
- when the port fails (a USB adapter pulled, the pty's other side closed,
  the socket reset) it closes it, reports ``on_state(False)`` and reopens it
  with exponential backoff bounded by ``backoff_max`` seconds, then reports
  ``on_state(True)``.

``send()`` is thread-safe, writes one whole frame under a lock, and raises
``LinkDown`` while the port is closed or if the write fails; the caller
decides whether to queue (the gateway does, ``gateway.queue``). A frame cut
short by a failure is harmless: the next frame's leading delimiter ends it.

Hellos (docs/protocol.md, "Hello frames"): an empty frame is link-level, not
an envelope. The link sends one each time it opens the port; a device link
(``answer_hello=True``) also answers each hello it receives. ``peer_ready``
is set once any intact frame has arrived since the port opened: only then
is the other end known to be listening, since bytes written into a port
before its reader opens it are discarded (pyserial flushes input on open,
and a UART whose device is off drops them).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import serial

from device.framing import FRAME_MAX_BYTES, FRAME_PAYLOAD_MAX_BYTES, FrameDecoder, encode_into

log = logging.getLogger("moteseal.serial")

# Frames waiting for recv() when no callback is given; beyond this the
# newest frame is dropped and counted (a reader that stopped reading must
# not make the link grow without bound).
RX_QUEUE_FRAMES = 1024
# pyserial read timeout: how often the reader checks for close().
_READ_TIMEOUT_S = 0.05
# A write that cannot finish in this time (peer not reading, flow control
# stuck) fails with LinkDown instead of blocking senders forever.
WRITE_TIMEOUT_S = 2.0
# A device answers at most one hello per this interval, so two answering
# ends (a misconfiguration) exchange a few hellos per second, not a storm.
HELLO_ANSWER_INTERVAL_S = 0.2


class LinkDown(OSError):
    """The serial port is closed or failed; the frame was not sent."""


class SerialLink:
    """Send and receive envelopes as frames on one pyserial URL.

    ``on_frame(payload)`` runs on the reader thread; it must not block for
    long. ``on_state(connected)`` runs on the reader thread after each open
    and each failure, ``on_ready()`` when the first frame after an open
    arrives. Exceptions from callbacks are logged and do not stop the link.
    Empty frames (hellos) never reach ``on_frame``. Set ``answer_hello`` on
    a device's link, never on the gateway's.
    """

    def __init__(
        self,
        url: str,
        baudrate: int = 115200,
        *,
        on_frame: Callable[[bytes], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        answer_hello: bool = False,
        max_payload: int = FRAME_PAYLOAD_MAX_BYTES,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        name: str | None = None,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self.url = url
        self.baudrate = baudrate
        self.name = name or url
        self._on_frame = on_frame
        self._on_state = on_state
        self._on_ready = on_ready
        # Never on both ends of one cable (nor with loop://): two answering
        # ends would bounce hellos forever.
        self._answer_hello = answer_hello
        self._last_answer = -HELLO_ANSWER_INTERVAL_S
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._decoder = FrameDecoder(max_payload)
        self._rx: queue.Queue[bytes] = queue.Queue(RX_QUEUE_FRAMES)
        self._tx_buf = bytearray(FRAME_MAX_BYTES)
        self._lock = threading.Lock()  # guards _port and _tx_buf
        self._port: serial.SerialBase | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_rx = 0
        self.frames_tx = 0
        self.hellos_rx = 0
        self.rx_overflow = 0
        self.opens = 0
        self.failures = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> SerialLink:
        """Start the reader thread, which opens the port (and keeps trying).
        Returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("link already started")
        self._thread = threading.Thread(target=self._run, name=f"serial:{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the reader thread and close the port. Idempotent."""
        self._stop.set()
        self._close_port()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> SerialLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the port is open; False on timeout."""
        return self._connected.wait(timeout)

    @property
    def peer_ready(self) -> bool:
        """The port is open and a frame (a hello or an envelope) has
        arrived since it opened: the other end is listening."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ``peer_ready``; False on timeout."""
        return self._ready.wait(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters for logs and metrics (no payload bytes)."""
        return {
            "connected": self.connected,
            "peer_ready": self.peer_ready,
            "hellos_rx": self.hellos_rx,
            "frames_rx": self.frames_rx,
            "frames_tx": self.frames_tx,
            "rx_overflow": self.rx_overflow,
            "opens": self.opens,
            "failures": self.failures,
            "drops": self._decoder.drop_counts(),
        }

    # -- sending -------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Write ``payload`` as one frame. Thread-safe.

        Raises ``LinkDown`` if the port is closed or the write fails or
        times out, and ``device.errors.MessageTooLarge`` if ``payload``
        exceeds ``FRAME_PAYLOAD_MAX_BYTES``."""
        self._write(payload, 1)

    def _write(self, payload: bytes, count: int) -> None:
        with self._lock:
            port = self._port
            if port is None:
                raise LinkDown(f"serial link {self.name} is down")
            n = encode_into(payload, len(payload), self._tx_buf)
            try:
                port.write(memoryview(self._tx_buf)[:n])
            except serial.SerialTimeoutException as e:
                # The peer is not reading; keep the port, the partial frame
                # is ended by the next frame's leading delimiter.
                raise LinkDown(f"serial link {self.name}: write timed out") from e
            except (serial.SerialException, OSError) as e:
                self._fail_locked(e)
                raise LinkDown(f"serial link {self.name} failed: {e}") from e
            self.frames_tx += count

    # -- receiving -------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bytes | None:
        """Next received payload, or None after ``timeout`` seconds. Only
        when no ``on_frame`` callback was given."""
        if self._on_frame is not None:
            raise RuntimeError("link delivers to its on_frame callback")
        try:
            return self._rx.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[bytes]:
        """Received payloads until the link is closed."""
        while not self._stop.is_set():
            p = self.recv(timeout=0.1)
            if p is not None:
                yield p

    def _deliver(self, buf: memoryview, n: int) -> None:
        if not self._ready.is_set():
            self._ready.set()
            if self._on_ready is not None:
                try:
                    self._on_ready()
                except Exception:
                    log.exception("serial %s: on_ready callback failed", self.name)
        if n == 0:
            self.hellos_rx += 1
            if self._answer_hello:
                now = time.monotonic()
                if now - self._last_answer >= HELLO_ANSWER_INTERVAL_S:
                    self._last_answer = now
                    self._hello()
            return
        payload = bytes(buf[:n])
        self.frames_rx += 1
        if self._on_frame is not None:
            try:
                self._on_frame(payload)
            except Exception:
                log.exception("serial %s: on_frame callback failed", self.name)
            return
        try:
            self._rx.put_nowait(payload)
        except queue.Full:
            self.rx_overflow += 1

    # -- the reader thread -----------------------------------------------------

    def _open(self) -> serial.SerialBase:
        # pyserial's rfc2217:// refuses a write timeout; its writes go to a
        # TCP socket, which the kernel buffers.
        wt = None if self.url.lower().startswith("rfc2217:") else WRITE_TIMEOUT_S
        return serial.serial_for_url(
            self.url, baudrate=self.baudrate, timeout=_READ_TIMEOUT_S, write_timeout=wt
        )

    def _hello(self) -> None:
        try:
            self._write(b"", 0)  # frames_tx counts envelopes only
        except LinkDown:
            pass  # the reader notices a failed port

    def _set_state(self, up: bool) -> None:
        if up:
            self._connected.set()
        else:
            self._connected.clear()
            self._ready.clear()
        if self._on_state is not None:
            try:
                self._on_state(up)
            except Exception:
                log.exception("serial %s: on_state callback failed", self.name)

    def _fail_locked(self, err: BaseException) -> None:
        # Caller holds _lock. The reader notices the closed port and reopens.
        if self._port is not None:
            log.warning("serial %s: port failed (%s); reconnecting", self.name, err)
            self.failures += 1
            try:
                self._port.close()
            except Exception:
                pass
            self._port = None

    def _close_port(self) -> None:
        with self._lock:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:
                pass

    def _run(self) -> None:
        delay = self._backoff_initial
        on_frame = self._deliver
        warned = False
        while not self._stop.is_set():
            try:
                port = self._open()
            except Exception as e:  # absent device, bad URL, refused socket
                # Once per outage at warning level, then quietly.
                (log.debug if warned else log.warning)(
                    "serial %s: open failed (%s); retrying", self.name, e
                )
                warned = True
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            with self._lock:
                if self._stop.is_set():
                    port.close()
                    break
                self._port = port
            self.opens += 1
            delay = self._backoff_initial
            warned = False
            log.info("serial %s: open", self.name)
            self._ready.clear()
            self._set_state(True)
            self._hello()
            try:
                while not self._stop.is_set():
                    if self._port is not port:
                        break  # a failed write closed it
                    data = port.read(max(1, port.in_waiting))
                    if data:
                        self._decoder.feed_into(data, len(data), on_frame)
            except Exception as e:
                # SerialException/OSError: the port went away. Anything else
                # (pyserial touching a port that close() tore down from
                # another thread, a driver bug) is treated the same way:
                # the reader must outlive any one port.
                with self._lock:
                    if self._port is port:
                        self._fail_locked(e)
            finally:
                with self._lock:
                    if self._port is port:
                        self._port = None
                try:
                    port.close()
                except Exception:
                    pass
                self._decoder.reset()
                self._set_state(False)
            if not self._stop.is_set():
                self._stop.wait(delay)
