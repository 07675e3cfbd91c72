"""Real pseudo-terminals for the serial tests: a pty that can be unplugged
and plugged back in under the same path, the way udev re-creates
/dev/ttyUSB0 (or a /dev/serial/by-id link) after a USB re-plug."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time
import tty
from pathlib import Path

from device.framing import FrameDecoder, encode
from tests.gateway_proc import stop_process


class PlugPty:
    """The far end of a serial cable: we hold the pty master, the code under
    test opens ``path`` (a symlink to the pty slave)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master: int | None = None
        self.decoder = FrameDecoder()
        self.hellos = 0

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        name = os.ttyname(slave)
        # The slave stays open here too: without an open slave, reads on
        # the master fail with EIO between plug() and the link's open.
        self._slave = slave
        self.master = master
        tmp = self.path.with_suffix(".tmp")
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        os.symlink(name, tmp)
        os.replace(tmp, self.path)
        self.decoder = FrameDecoder()

    def unplug(self) -> None:
        if self.path.is_symlink():
            self.path.unlink()
        if self.master is not None:
            os.close(self.master)
            os.close(self._slave)
            self.master = None

    def write(self, data: bytes) -> None:
        assert self.master is not None
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def send_frame(self, payload: bytes) -> None:
        self.write(encode(payload))

    def hello(self) -> None:
        """What a device sends when it starts listening: an empty frame."""
        self.send_frame(b"")

    def read_frames(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """Read until ``count`` intact non-empty frames arrived or ``timeout``
        passed. Hellos (empty frames) are counted in ``hellos``, not returned."""
        assert self.master is not None
        frames: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(frames) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                for f in self.decoder.feed(os.read(self.master, 65536)):
                    if f:
                        frames.append(f)
                    else:
                        self.hellos += 1
        return frames

    def close(self) -> None:
        self.unplug()


class SocatPair:
    """Two linked ptys from socat (``pty,raw,echo=0,link=...`` twice). Killing
    socat is a pulled cable for both ends; starting it again re-plugs."""

    def __init__(self, a: Path, b: Path) -> None:
        self.a, self.b = a, b
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("socat") is not None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "socat",
                f"pty,raw,echo=0,link={self.a}",
                f"pty,raw,echo=0,link={self.b}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (self.a.exists() and self.b.exists()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("socat did not create its ptys")
            time.sleep(0.01)

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.proc = None


def wait_for(cond, timeout: float = 10.0, step: float = 0.01) -> bool:
    """Poll ``cond()`` until true or ``timeout``; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return bool(v)
        time.sleep(step)


class Rfc2217Server:
    """A serial-over-network server (RFC 2217, pyserial's ``PortManager``)
    on 127.0.0.1 that serves the pyserial port ``port_url`` to one client
    at a time, like ser2net or an industrial serial server would."""

    def __init__(self, port_url: str) -> None:
        import socket

        self.port_url = port_url
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._drop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def drop_client(self) -> None:
        """Hang up on the current client (the network went away)."""
        self._drop.set()

    def _serve(self) -> None:
        import socket

        import serial
        import serial.rfc2217 as rfc2217

        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            self._drop.clear()
            ser = serial.serial_for_url(self.port_url, timeout=0.05)

            class _Writer:
                def write(self, data: bytes) -> None:
                    conn.sendall(data)

            pm = rfc2217.PortManager(ser, _Writer())
            done = threading.Event()

            def to_net() -> None:
                while not done.is_set():
                    try:
                        data = ser.read(ser.in_waiting or 1)
                        if data:
                            conn.sendall(b"".join(pm.escape(data)))
                    except OSError:
                        return

            t = threading.Thread(target=to_net, daemon=True)
            t.start()
            conn.settimeout(0.05)
            while not (self._stop.is_set() or self._drop.is_set()):
                try:
                    data = conn.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    break
                ser.write(b"".join(pm.filter(data)))
            done.set()
            t.join(2)
            conn.close()
            ser.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
