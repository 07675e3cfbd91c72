"""MicroPython sources the qemu tests run on the target, shared by the
Cortex-M3 (Thumb-2) and ARMv6-M (Thumb-1) lanes, with the host-side checks
of what they print: tests/qemu/test_qemu_chachapoly_asm.py and
test_qemu_chachapoly_thumb1.py (the AEAD under ``heap_lock``, instructions
per AEAD call), test_qemu_x25519_asm.py and test_qemu_thumb1.py (the field
operations at their carry edges). Each script prints one Python literal
per line; the firmware has no json.
"""

from __future__ import annotations

import ast
from typing import Any

from tests.mp_vectors import P
from tests.qemu.test_qemu_primitives import run

# Seals and opens at many lengths and nonces, into a buffer and in place,
# with the heap locked (any allocation raises MemoryError); prints
# [path, every case right, cases run (31), the buffer's guard bytes kept].
AEAD_HEAP_LOCKED = """
import micropython
from micropython_port import chacha20poly1305 as C
c = C.ChaCha20Poly1305(bytes(range(32)))
ad = bytearray(b"header bytes")
buf = bytearray(1100)
out = bytearray(1100)
for i in range(len(buf)):
    buf[i] = i & 0xFF
want = bytes(buf)
ok = bytearray(40)
# (length, nonce): nonces stay small ints on a 32-bit port, up to 2**30 - 1
cases = ((0, 0), (1, 5), (15, 6), (16, 7), (17, 8), (63, 9), (64, 10), (65, 11), (200, 12),
         (1024, (1 << 30) - 1))
# every global exists before the lock (a new one could grow the dict), and
# no function call: a large frame would go on the heap
i = m = k = n = nonce = ad_len = r = 0
micropython.heap_lock()
try:
    for n, nonce in cases:
        for ad_len in (0, 5, 12):
            m = c.encrypt_into(nonce, ad, ad_len, buf, 10, n, out, 3)
            k = c.decrypt_into(nonce, ad, ad_len, out, 3, m, buf, 10)
            ok[i] = m == n + 16 and k == n
            i += 1
    m = c.encrypt_into(3, ad, 12, buf, 0, 64, buf, 0)  # in place
    ok[i] = c.decrypt_into(3, ad, 12, buf, 0, m, buf, 0) == 64
    r = i + 1
finally:
    micropython.heap_unlock()
print(repr([C.PATH, all(ok[:r]), r, bytes(buf[:64]) == want[:64] and bytes(buf[80:]) == want[80:]]))
"""


def aead_into_buffers(k: bytes, nonce: int, ad: bytes, pt: bytes) -> str:
    """One AEAD case (after a prelude that imports ``C`` and defines ``hx``),
    sealed and opened into caller buffers at odd offsets and in place;
    prints [C.PATH, ciphertext+tag hex, the guard bytes kept, opened right,
    the in-place ciphertext+tag hex, opened in place right]."""
    return f"""
k, nonce, ad, pt = unhexlify({k.hex()!r}), {nonce}, unhexlify({ad.hex()!r}), unhexlify({pt.hex()!r})
c = C.ChaCha20Poly1305(k)
n = len(pt)
out = [C.PATH]
# into a caller buffer at an odd offset, from an odd source offset (ARMv6-M
# code must not load words there)
src = bytearray(3) + pt
dst = bytearray(n + 16 + 6)
m = c.encrypt_into(nonce, ad, len(ad), src, 3, n, dst, 5)
out.append(hx(dst[5:5 + m]))
out.append(dst[:5] == bytearray(5) and dst[5 + m] == 0)
back = bytearray(n + 2)
out.append(c.decrypt_into(nonce, ad, len(ad), dst, 5, m, back, 1) == n and back[1:1 + n] == pt
           and back[0] == 0 and back[n + 1] == 0)
# in place: the same buffer at the same offset
buf = bytearray(1) + pt + bytearray(16)
c.encrypt_into(nonce, ad, len(ad), buf, 1, n, buf, 1)
out.append(hx(buf[1:]))
out.append(c.decrypt_into(nonce, ad, len(ad), buf, 1, n + 16, buf, 1) == n and buf[1:1 + n] == pt)
print(repr(out))
"""


def aead_instructions(fast: str) -> str:
    """Instructions per seal and open of 64 and 1024 bytes on the firmware's
    own fast path (named ``fast`` in the result) and on viper: prints
    ``{path: {"seal_64": n, ...}}``. Under -icount shift=0 a ticks_us delta
    is instructions / 1000."""
    return """
import gc, time
from micropython_port import chacha20poly1305 as C
from micropython_port import _chachapoly_viper as V
def instr(f, n):  # -icount shift=0: ticks_us = instructions / 1000
    f()
    gc.collect()  # no collection inside the measured calls
    t0 = time.ticks_us()
    for _ in range(n):
        f()
    return time.ticks_diff(time.ticks_us(), t0) * 1000 // n
res = {}
for path, mod in (("%s", C._v), ("viper", V)):
    C._v = mod  # the cipher object is made after the switch
    c = C.ChaCha20Poly1305(bytes(range(32)))
    out = res[path] = {}
    for size in (64, 1024):
        pt = bytearray(size)
        ct = bytearray(size + 16)
        back = bytearray(size)
        out["seal_%%d" %% size] = instr(lambda: c.encrypt_into(7, b"hdr", 3, pt, 0, size, ct, 0), 20)
        out["open_%%d" %% size] = instr(lambda: c.decrypt_into(7, b"hdr", 3, ct, 0, size + 16, back, 0), 20)
print(repr(res))
""" % fast


def field_edges(module: str, vals: list[int]) -> str:
    """Ops 1-5 of ``module``'s ``x25519_core`` (mul, square, add/sub, the
    A24 step, the conditional swap both ways) on every pair of ``vals``;
    prints one tuple per pair (a row at a time: the heap is small)."""
    return f"""
from array import array
from micropython_port import {module} as F
st = array("I", bytes(512))
def load(k, x):
    for i in range(8):
        st[8 * k + i] = x & 0xFFFFFFFF
        x >>= 32
def val(k):
    r = 0
    for i in range(7, -1, -1):
        r = (r << 32) + st[8 * k + i]
    return r
vals = {vals!r}
for i, x in enumerate(vals):
    y = vals[(i * 7 + 3) % len(vals)]
    load(1, x); load(2, y)
    F.x25519_core(st, 0, 1); m = val(0)
    F.x25519_core(st, 0, 2); s = val(0)
    F.x25519_core(st, 0, 3); ad, sb = val(0), val(3)
    F.x25519_core(st, 0, 4); c = val(0)
    load(0, x); load(1, y); load(2, 5); load(3, 6)
    F.x25519_core(st, 1, 5); sw = (val(0), val(1), val(2), val(3))
    F.x25519_core(st, 0, 5); ns = (val(0), val(1), val(2), val(3))
    print(repr((m, s, ad, sb, c, sw, ns)))
"""


def x25519_ref(k: bytes, u: bytes) -> str:
    """X25519(k, u) hex by PyNaCl, u's top bit masked and u reduced mod p
    as RFC 7748 decodes it; all zeros where PyNaCl refuses a low-order
    result (X25519 gives zero for it)."""
    import nacl.bindings

    uu = (int.from_bytes(u, "little") & ((1 << 255) - 1)) % P
    try:
        return nacl.bindings.crypto_scalarmult(k, uu.to_bytes(32, "little")).hex()
    except Exception:
        return "00" * 32


def check_field_edges(out: str, vals: list[int]) -> None:
    """Asserts what ``field_edges`` printed: ops 1-4 congruent mod p to the
    Python-integer results and below 2**256 (invariant F), and fe 0..3 after
    each op-5 call equal to (5, 6, x, y)."""
    got: list[Any] = [ast.literal_eval(ln) for ln in out.splitlines() if ln.strip()]
    want = []
    for i, x in enumerate(vals):
        y = vals[(i * 7 + 3) % len(vals)]
        want.append((x * y % P, x * x % P, (x + y) % P, (x - y) % P, (y + 121665 * x) % P))
    assert [tuple(v % P for v in r[:5]) for r in got] == want
    assert all(max(r[:5]) < 2**256 for r in got)
    ys = [vals[(i * 7 + 3) % len(vals)] for i in range(len(vals))]
    assert [r[5] for r in got] == [(5, 6, x, y) for x, y in zip(vals, ys)]
    assert [r[6] for r in got] == [(5, 6, x, y) for x, y in zip(vals, ys)]


def path_when_module_raises(elf: Any, module_file: str, module: str, exc: str) -> str:
    """Boots ``elf`` with ``micropython_port/<module_file>`` replaced by one
    ``raise <exc>`` line and imports ``micropython_port.<module>``: returns
    the ``PATH`` it chose, or "MemoryError" if the import raised that."""
    import qemu_board

    from tests.qemu.conftest import target_files

    files = [(n, f"raise {exc}\n".encode() if n == "micropython_port/" + module_file else d)
             for n, d in target_files()]
    with qemu_board.Board(elf, files=files) as b:
        return run(b, f"""
try:
    from micropython_port import {module}
    print(repr({module}.PATH))
except MemoryError:
    print(repr("MemoryError"))
""")


# chacha_xor into an empty bytearray (whose data pointer may be 0) with
# nothing to do: chacha_polykey's marker is dst = -1, so this must change
# neither the source nor the state (a marker of 0 would write the Poly1305
# key over the source and set the block counter).
XOR_INTO_EMPTY = """
from array import array
from micropython_port import chacha20poly1305 as C
v = C._v
st = array('I', bytes(4 * 48))
v.chacha_setkey(st, bytes(range(32)))
st[12] = 7
src = bytearray(b'\\xaa' * 128)
r = v.chacha_xor(st, src, bytearray(0))
print(repr((v.__name__, r, src == bytearray(b'\\xaa' * 128), list(st[12:19]))))
"""
