"""The message path allocates nothing across the whole nonce range, on the
32-bit target (Cortex-M3 under qemu), where small ints are 31-bit signed:
``Transport.encrypt_into``/``decrypt_into`` and the ChaCha20-Poly1305 object
under ``micropython.heap_lock()`` at the last nonces the default
``max_messages`` (2^30 - 1) allows, and ``SessionExpired`` right after. A
control shows that the bound is what makes it so: at nonce 2^30 the same
calls allocate (MemoryError under the lock).
"""

from __future__ import annotations

from typing import Any

from tests.qemu.test_qemu_primitives import run

_SETUP = """
import micropython
from device import errors
from device.transport import Transport, DEFAULT_MAX_MESSAGES
from micropython_port.backend import MicroBackend
B = MicroBackend()
K1 = bytes(range(32))
K2 = bytes(range(1, 33))
ad = b"hdr"
pt = bytearray(b"x" * 64)
ct = bytearray(64 + 16)
back = bytearray(64)
"""


def test_transport_is_allocation_free_up_to_the_last_nonce(board: Any) -> None:
    got = run(board, _SETUP + """
# rekey_interval 2**29: nonces just below 2**30 are epoch 1 on both sides, one
# Rekey() each, done by the warm-up message outside the lock.
a = Transport(B, K1, K2, b"", b"", rekey_interval=1 << 29)
b = Transport(B, K2, K1, b"", b"", rekey_interval=1 << 29)
last = DEFAULT_MAX_MESSAGES - 1
a.send_nonce = last - 4
n = a.send_nonce
a.encrypt_into(ad, 3, pt, 0, 64, ct, 0)
b.decrypt_into(n, ad, 3, ct, 0, 80, back, 0)
def locked():  # in a function: a new module global could grow the dict
    micropython.heap_lock()
    try:
        for _ in range(4):
            n = a.send_nonce
            a.encrypt_into(ad, 3, pt, 0, 64, ct, 0)
            b.decrypt_into(n, ad, 3, ct, 0, 80, back, 0)
        r = "ok"
    except MemoryError:
        r = "MemoryError"
    micropython.heap_unlock()
    return r, n
locked, n = locked()
try:
    a.encrypt_into(ad, 3, pt, 0, 64, ct, 0)
    after = "sent"
except errors.SessionExpired:
    after = "SessionExpired"
print(repr((DEFAULT_MAX_MESSAGES, n, a.send_nonce, locked, bytes(back) == bytes(pt), after)))
""")
    assert got == (2**30 - 1, 2**30 - 2, 2**30 - 1, "ok", True, "SessionExpired")


def test_chacha20poly1305_is_allocation_free_at_the_largest_small_nonce(board: Any) -> None:
    got = run(board, _SETUP + """
c = B.cipher(K1)
def locked():  # in a function: a new module global could grow the dict
    micropython.heap_lock()
    try:
        for i in range(2, 0, -1):  # range loops allocate nothing; a tuple iterator would
            n = DEFAULT_MAX_MESSAGES - i
            c.encrypt_into(n, ad, 3, pt, 0, 64, ct, 0)
            c.decrypt_into(n, ad, 3, ct, 0, 80, back, 0)
        r = "ok"
    except MemoryError:
        r = "MemoryError"
    micropython.heap_unlock()
    return r
print(repr((locked(), bytes(back) == bytes(pt))))
""")
    assert got == ("ok", True)


def test_control_nonce_two_to_the_30_allocates_on_the_32_bit_target(board: Any) -> None:
    # Why the bound: 2**30 is a heap integer here, and splitting it allocates.
    got = run(board, _SETUP + """
c = B.cipher(K1)
n = 1 << 30
def locked():
    micropython.heap_lock()
    try:
        c.encrypt_into(n, ad, 3, pt, 0, 64, ct, 0)
        r = "ok"
    except MemoryError:
        r = "MemoryError"
    micropython.heap_unlock()
    return r
print(repr(locked()))
""")
    assert got == "MemoryError"
