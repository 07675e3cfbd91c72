"""The framing vectors and a heap-locked frame path on the real MicroPython
unix port: the device runs this same ``device/framing.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.device.test_framing import DROP_VECTORS, FRAME_VECTORS

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.micropython,
    pytest.mark.skipif(shutil.which("micropython") is None, reason="micropython not installed"),
]


def _run_mp(code: str) -> str:
    env = dict(os.environ, MICROPYPATH=f"{REPO}:.frozen")
    proc = subprocess.run(
        ["micropython", "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def test_frame_vectors_on_micropython() -> None:
    rows = ",".join(f"({p.hex()!r},{c},{w.hex()!r})" for _, p, c, w in FRAME_VECTORS)
    drops = ",".join(
        f"({w.hex()!r},{[f.hex() for f in fs]!r},{-1 if r is None else r})"
        for _, w, fs, r in DROP_VECTORS
    )
    code = f"""
from binascii import unhexlify as U, hexlify
from device.framing import FrameDecoder, encode, crc16
n = 0
for p, c, w in [{rows}]:
    p = U(p); w = U(w)
    assert crc16(p) == c, p
    assert encode(p) == w, hexlify(encode(p))
    d = FrameDecoder()
    assert d.feed(w) == [p]
    n += 1
for w, fs, r in [{drops}]:
    d = FrameDecoder()
    assert [hexlify(f).decode() for f in d.feed(U(w))] == fs, w
    assert d.dropped() == (0 if r < 0 else 1) and (r < 0 or d.drops[r] == 1), w
    n += 1
print("ok", n)
"""
    assert _run_mp(code).split() == ["ok", str(len(FRAME_VECTORS) + len(DROP_VECTORS))]


def test_frame_path_allocates_nothing_on_micropython() -> None:
    # encode_into and feed_into run between heap_lock() and heap_unlock():
    # any allocation raises MemoryError and the test fails.
    code = """
import micropython
from device.framing import FrameDecoder, encode_into, FRAME_MAX_BYTES
out = bytearray(FRAME_MAX_BYTES)
payload = bytearray(bytes(range(256)) * 4)
dec = FrameDecoder()
got = [0, 0]
def on_frame(buf, n):
    got[0] += 1
    got[1] += n
noise = bytearray(b"\\x07\\x99\\x00\\x05\\x01\\x02\\x00")
sizes = (0, 64, 255, 1024)
micropython.heap_lock()
try:
    for size in sizes:
        n = encode_into(payload, size, out)
        dec.feed_into(noise, len(noise), on_frame)
        dec.feed_into(out, n, on_frame)
finally:
    micropython.heap_unlock()
print(got[0], got[1], dec.dropped())
"""
    # 4 frames, 0+64+255+1024 payload bytes, 2 noise frames dropped each time.
    assert _run_mp(code).split() == ["4", "1343", "8"]


def test_micropython_decoder_agrees_with_cpython_on_damaged_streams() -> None:
    # Differential: the same damaged streams through both interpreters give
    # the same frames and the same drop counts.
    import hashlib
    import random

    from device.framing import FrameDecoder, encode

    rng = random.Random(2026)
    streams = []
    for _ in range(40):
        s = bytearray()
        for _ in range(rng.randrange(1, 8)):
            w = bytearray(encode(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))))
            r = rng.random()
            if r < 0.2:
                w[rng.randrange(len(w))] ^= 1 << rng.randrange(8)
            elif r < 0.4:
                del w[rng.randrange(len(w))]
            elif r < 0.5:
                w = w[: rng.randrange(len(w))]
            s += bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 6))) + w
        streams.append(bytes(s))
    expected = []
    for s in streams:
        d = FrameDecoder(max_payload=200)
        frames = d.feed(s)
        digest = hashlib.sha256(b"".join(len(f).to_bytes(2, "big") + f for f in frames))
        expected.append(f"{len(frames)} {digest.hexdigest()} {d.drops}")
    hexes = ",".join(repr(s.hex()) for s in streams)
    code = f"""
from binascii import hexlify, unhexlify
import hashlib
from device.framing import FrameDecoder
for h in [{hexes}]:
    d = FrameDecoder(max_payload=200)
    data = unhexlify(h)
    frames = []
    for i in range(0, len(data), 7):
        frames.extend(d.feed(data[i:i + 7]))
    h = hashlib.sha256()
    for f in frames:
        h.update(len(f).to_bytes(2, "big"))
        h.update(f)
    print(len(frames), hexlify(h.digest()).decode(), d.drops)
"""
    got = _run_mp(code).strip().splitlines()
    assert got == expected
    assert any(not e.endswith("[0, 0, 0, 0]") for e in expected)  # damage was counted
