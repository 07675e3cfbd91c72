"""MicroPython primitives vs PyNaCl on CPython, side by side in one run, with
ratios. Not a test: figures vary by machine.

    python3 bench/bench_mp_primitives.py [--quick]

Runs the real MicroPython unix port (``micropython``) for our primitives,
viper path and pure-Python fallback, and CPython for PyNaCl (libsodium) and
hmac/hashlib, then prints: X25519 ms per scalar multiplication; AEAD
(ChaCha20-Poly1305, encrypt_into and decrypt_into) MB/s at 64 B and 1 KiB;
HMAC-SHA256 and HMAC-BLAKE2s us on a 32-byte key and 64-byte message; and
checks that the viper AEAD calls run under ``micropython.heap_lock()``.

The ratio column is MicroPython time / CPython time (so 2.0x = half as fast),
or CPython MB/s / MicroPython MB/s for throughput.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import nacl.bindings as nb  # noqa: E402

from tests.mp_helpers import run_mp_json  # noqa: E402

QUICK = "--quick" in sys.argv
SCALE = 0.25 if QUICK else 1.0

MP_BENCH = """
import gc, json, time, micropython
from micropython_port import x25519 as X, chacha20poly1305 as C
from micropython_port import hashes as SHA256, blake2s as BLAKE2S
from tests.mp_primitive_hooks import force_fallback_for_testing_only
SCALE = %r

def per_call_us(fn, n):
    n = max(1, int(n * SCALE))
    best = None
    # Calls with many arguments take their frame from the heap and give it
    # back (frames above VM_MAX_STATE_ON_STACK); on a heap full of another
    # figure's garbage that allocation scans far, so collect first.
    gc.collect()
    for _ in range(3):
        t0 = time.ticks_us()
        for _ in range(n):
            fn()
        dt = time.ticks_diff(time.ticks_us(), t0) / n
        best = dt if best is None or dt < best else best
    return best

res = {}
k = bytes(range(1, 33))
u = bytes(range(2, 34))
for fb, label, n in ((False, "viper", 200), (True, "python", 40)):
    force_fallback_for_testing_only(fb)
    res["x25519_" + label] = per_call_us(lambda: X.x25519(k, u), n) / 1000
    c = C.ChaCha20Poly1305(bytes(32))
    ad = bytes(12)
    for size, n in ((64, 20000 if not fb else 200), (1024, 3000 if not fb else 20)):
        src = bytearray(size)
        ct = bytearray(size + 16)
        out = bytearray(size)
        c.encrypt_into(1, ad, 12, src, 0, size, ct, 0)
        if not fb:  # the timed calls are the ones that allocate nothing
            micropython.heap_lock()
            try:
                c.encrypt_into(1, ad, 12, src, 0, size, ct, 0)
                c.decrypt_into(1, ad, 12, ct, 0, size + 16, out, 0)
            finally:
                micropython.heap_unlock()
        e = per_call_us(lambda: c.encrypt_into(1, ad, 12, src, 0, size, ct, 0), n)
        d = per_call_us(lambda: c.decrypt_into(1, ad, 12, ct, 0, size + 16, out, 0), n)
        res["aead_enc_%%d_%%s" %% (size, label)] = size / e
        res["aead_dec_%%d_%%s" %% (size, label)] = size / d
res["heap_locked"] = True
key, msg = bytes(32), bytes(64)
res["hmac_sha256"] = per_call_us(lambda: SHA256.hmac(key, msg), 5000)
for fb, label, n in ((False, "viper", 2000), (True, "python", 100)):
    force_fallback_for_testing_only(fb)
    res["hmac_blake2s_" + label] = per_call_us(lambda: BLAKE2S.hmac(key, msg), n)
print(json.dumps(res))
""" % SCALE


def per_call_us(fn, n: int) -> float:
    n = max(1, int(n * SCALE))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def cpython_figures() -> dict[str, float]:
    res: dict[str, float] = {}
    k, u = bytes(range(1, 33)), bytes(range(2, 34))
    res["x25519"] = per_call_us(lambda: nb.crypto_scalarmult(k, u), 2000) / 1000
    key, ad = bytes(32), bytes(12)
    nonce = b"\0" * 4 + (1).to_bytes(8, "little")
    enc = nb.crypto_aead_chacha20poly1305_ietf_encrypt
    dec = nb.crypto_aead_chacha20poly1305_ietf_decrypt
    for size in (64, 1024):
        pt = bytes(size)
        ct = enc(pt, ad, nonce, key)
        res[f"aead_enc_{size}"] = size / per_call_us(lambda: enc(pt, ad, nonce, key), 50000)
        res[f"aead_dec_{size}"] = size / per_call_us(lambda: dec(ct, ad, nonce, key), 50000)
    hk, msg = bytes(32), bytes(64)
    res["hmac_sha256"] = per_call_us(lambda: hmac.digest(hk, msg, hashlib.sha256), 50000)
    res["hmac_blake2s"] = per_call_us(lambda: hmac.digest(hk, msg, hashlib.blake2s), 50000)
    return res


def main() -> None:
    mp = run_mp_json(MP_BENCH, timeout=600)
    cp = cpython_figures()
    rows = [("operation", "MicroPython viper", "MicroPython pure", "CPython PyNaCl", "ratio (viper)")]
    x = mp["x25519_viper"]
    rows.append(("X25519 (ms)", f"{x:.2f}", f"{mp['x25519_python']:.2f}", f"{cp['x25519']:.3f}", f"{x / cp['x25519']:.1f}x"))
    for op in ("enc", "dec"):
        for size in (64, 1024):
            v = mp[f"aead_{op}_{size}_viper"]
            p = mp[f"aead_{op}_{size}_python"]
            c = cp[f"aead_{op}_{size}"]
            name = f"AEAD {'encrypt' if op == 'enc' else 'decrypt'} {size} B (MB/s)"
            rows.append((name, f"{v:.1f}", f"{p:.2f}", f"{c:.1f}", f"{c / v:.1f}x"))
    h = mp["hmac_sha256"]
    rows.append(("HMAC-SHA256 32 B key, 64 B (us)", f"{h:.1f}", f"{h:.1f}", f"{cp['hmac_sha256']:.2f}", f"{h / cp['hmac_sha256']:.1f}x"))
    b, bp, bc = mp["hmac_blake2s_viper"], mp["hmac_blake2s_python"], cp["hmac_blake2s"]
    rows.append(("HMAC-BLAKE2s 32 B key, 64 B (us)", f"{b:.1f}", f"{bp:.1f}", f"{bc:.2f}", f"{b / bc:.1f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print()
    print("viper AEAD encrypt_into/decrypt_into also ran under micropython.heap_lock(): zero allocations per call")
    print("(HMAC-SHA256 on MicroPython is the built-in hashlib.sha256 either way; ratio = slowdown vs CPython)")
    print(json.dumps({"micropython": mp, "cpython": cp}))


if __name__ == "__main__":
    main()
