"""Serial link benchmark: 64-byte telemetry over a pty pair.

Side by side in one run, with ratios against the plain pty:

- plain:      os.write/os.read of raw 64-byte messages (the limit; no
              framing, no resynchronisation, no error detection; its
              receiver reads the byte stream in bulk, so its frames/s is
              a byte-rate bound, not a per-message cost)
- framing:    device.framing encode + FrameDecoder on the same fds
- SerialLink: framing on the device end, moteseal.links.serial_link (pyserial,
              reader thread, callback) on the other: what the gateway
              bridge uses

Measures one-way throughput (frames/s, sender streaming, receiver
counting) and round-trip latency (ping, echo, pong; p50 and p99), plus the
pure CPU cost of encoding and decoding one frame.

    python3 bench/bench_serial.py [--count 5000] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import tty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device.framing import FRAME_MAX_BYTES, FrameDecoder, encode_into  # noqa: E402
from moteseal.links.serial_link import SerialLink  # noqa: E402


def pty_pair() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def read_exact(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        buf += os.read(fd, n - len(buf))
    return bytes(buf)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# -- plain pty -------------------------------------------------------------------


def plain_throughput(count: int, size: int) -> float:
    master, slave, _ = pty_pair()
    msg = os.urandom(size)
    total = count * size

    def writer() -> None:
        for _ in range(count):
            write_all(master, msg)

    t0 = time.perf_counter()
    th = threading.Thread(target=writer)
    th.start()
    got = 0
    while got < total:
        got += len(os.read(slave, 65536))
    th.join()
    dt = time.perf_counter() - t0
    os.close(master)
    os.close(slave)
    return count / dt


def plain_rtt(count: int, size: int) -> list[float]:
    master, slave, _ = pty_pair()
    msg = os.urandom(size)

    def echo() -> None:
        for _ in range(count):
            write_all(slave, read_exact(slave, size))

    th = threading.Thread(target=echo)
    th.start()
    rtts = []
    for _ in range(count):
        t0 = time.perf_counter()
        write_all(master, msg)
        read_exact(master, size)
        rtts.append(time.perf_counter() - t0)
    th.join()
    os.close(master)
    os.close(slave)
    return rtts


# -- framing on raw fds ------------------------------------------------------------


class FramedFd:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.out = bytearray(FRAME_MAX_BYTES)
        self.dec = FrameDecoder()
        self.frames: list[bytes] = []
        self._on = self._collect

    def _collect(self, buf: memoryview, n: int) -> None:
        self.frames.append(bytes(buf[:n]))

    def send(self, payload: bytes) -> None:
        n = encode_into(payload, len(payload), self.out)
        write_all(self.fd, memoryview(self.out)[:n])

    def recv(self) -> bytes:
        while not self.frames:
            data = os.read(self.fd, 65536)
            self.dec.feed_into(data, len(data), self._on)
        return self.frames.pop(0)


def framed_throughput(count: int, size: int) -> float:
    master, slave, _ = pty_pair()
    msg = os.urandom(size)
    tx, rx = FramedFd(master), FramedFd(slave)

    def writer() -> None:
        for _ in range(count):
            tx.send(msg)

    t0 = time.perf_counter()
    th = threading.Thread(target=writer)
    th.start()
    got = 0
    while got < count:
        data = os.read(slave, 65536)
        rx.dec.feed_into(data, len(data), rx._on)
        got += len(rx.frames)
        rx.frames.clear()
    th.join()
    dt = time.perf_counter() - t0
    os.close(master)
    os.close(slave)
    return count / dt


def framed_rtt(count: int, size: int) -> list[float]:
    master, slave, _ = pty_pair()
    msg = os.urandom(size)
    a, b = FramedFd(master), FramedFd(slave)

    def echo() -> None:
        for _ in range(count):
            b.send(b.recv())

    th = threading.Thread(target=echo)
    th.start()
    rtts = []
    for _ in range(count):
        t0 = time.perf_counter()
        a.send(msg)
        a.recv()
        rtts.append(time.perf_counter() - t0)
    th.join()
    os.close(master)
    os.close(slave)
    return rtts


# -- SerialLink on the gateway end ------------------------------------------------------


def link_throughput(count: int, size: int) -> float:
    """The device end frames on the pty master; the gateway end is a
    SerialLink (pyserial + reader thread + callback) on the slave."""
    master, slave, name = pty_pair()
    msg = os.urandom(size)
    done = threading.Event()
    got = [0]

    def on_frame(p: bytes) -> None:
        got[0] += 1
        if got[0] == count:
            done.set()

    link = SerialLink(name, on_frame=on_frame).start()
    link.wait_connected(5)
    tx = FramedFd(master)
    t0 = time.perf_counter()
    for _ in range(count):
        tx.send(msg)
    done.wait(120)
    dt = time.perf_counter() - t0
    link.close()
    os.close(master)
    os.close(slave)
    return count / dt


def link_rtt(count: int, size: int) -> list[float]:
    master, slave, name = pty_pair()
    msg = os.urandom(size)
    holder: list[SerialLink] = []
    link = SerialLink(name, on_frame=lambda p: holder[0].send(p)).start()
    holder.append(link)
    link.wait_connected(5)
    a = FramedFd(master)
    rtts = []
    for _ in range(count):
        t0 = time.perf_counter()
        a.send(msg)
        a.recv()
        rtts.append(time.perf_counter() - t0)
    link.close()
    os.close(master)
    os.close(slave)
    return rtts


# -- CPU cost of framing alone ---------------------------------------------------------


def cpu_cost(size: int, reps: int = 20000) -> tuple[float, float]:
    msg = os.urandom(size)
    out = bytearray(FRAME_MAX_BYTES)
    t0 = time.perf_counter()
    for _ in range(reps):
        n = encode_into(msg, size, out)
    enc = (time.perf_counter() - t0) / reps
    wire = bytes(out[:n])
    dec = FrameDecoder()
    sink = lambda buf, n: None  # noqa: E731
    t0 = time.perf_counter()
    for _ in range(reps):
        dec.feed_into(wire, len(wire), sink)
    de = (time.perf_counter() - t0) / reps
    return enc, de


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    n, size = args.count, args.size
    rtt_n = max(200, n // 5)

    rows = []
    for name, thr, rtt in (
        ("plain pty", plain_throughput, plain_rtt),
        ("framing", framed_throughput, framed_rtt),
        ("SerialLink", link_throughput, link_rtt),
    ):
        fps = thr(n, size)
        r = rtt(rtt_n, size)
        rows.append((name, fps, statistics.median(r) * 1e6, pct(r, 99) * 1e6))

    base = rows[0]
    print(f"serial benchmark: {size}-byte payloads, {n} frames one-way, {rtt_n} round trips")
    print(f"{'path':<12} {'frames/s':>10} {'ratio':>6}  {'rtt p50 us':>10} {'ratio':>6}"
          f"  {'rtt p99 us':>10} {'ratio':>6}")
    for name, fps, p50, p99 in rows:
        print(f"{name:<12} {fps:>10.0f} {fps / base[1]:>6.2f}  {p50:>10.1f} {p50 / base[2]:>6.2f}"
              f"  {p99:>10.1f} {p99 / base[3]:>6.2f}")
    enc, de = cpu_cost(size)
    wire_len = encode_into(b"\x01" * size, size, bytearray(FRAME_MAX_BYTES))
    print(f"framing CPU per {size}-byte frame ({wire_len} bytes on the wire): "
          f"encode {enc * 1e6:.1f} us, decode {de * 1e6:.1f} us; "
          f"plain pty one-way cost per message {1e6 / base[1]:.1f} us")
    for baud in (115200, 921600):
        wire_us = wire_len * 10 / baud * 1e6  # 8N1: 10 bit times per byte
        print(f"at {baud} baud the frame spends {wire_us:.0f} us on the wire "
              f"({baud / 10 / wire_len:.0f} frames/s); framing CPU is "
              f"{(enc + de) * 1e6 / wire_us * 100:.1f}% of that")


if __name__ == "__main__":
    main()
