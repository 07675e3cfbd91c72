"""X25519 on the Cortex-M3 target's three paths: the inline Thumb-2
assembler field arithmetic (``_fe25519_thumb``, the default there), viper
(``_fe25519_viper``) and pure Python. RFC 7748 vectors, every low-order
point, non-canonical inputs, random inputs against PyNaCl, and the field
operations against Python integers at their carry edges; plus which path
the device reports (``X.PATH``, ``backend.paths()``).
"""

from __future__ import annotations

import ast
import random
from typing import Any

import nacl.bindings
import pytest

from tests.mp_vectors import LOW_ORDER, P, RFC7748_5_2, RFC7748_6_1
from tests.qemu.test_qemu_primitives import run

PATHS = ["asm_thumb", "viper", "python"]

_PRELUDE = """
import mp_primitive_hooks as T
from micropython_port import x25519 as X
U = bytes.fromhex
T.force_x25519_path_for_testing_only({path!r})
"""


def test_the_target_reports_asm_thumb_for_x25519_and_the_aead(board: Any) -> None:
    got = run(board, """
from micropython_port import backend, x25519, chacha20poly1305
print(repr((x25519.PATH, chacha20poly1305.PATH, backend.paths())))
""")
    assert got == ("asm_thumb", "asm_thumb", "x25519=asm_thumb aead=asm_thumb")


@pytest.mark.parametrize("exc, want", [("MemoryError", "MemoryError"),
                                       ("SyntaxError('unsupported Thumb instruction')", "viper")])
def test_only_a_missing_assembler_falls_back_never_a_memory_error(qemu_firmware: Any, exc: str,
                                                                   want: str) -> None:
    import qemu_board

    from tests.qemu.conftest import target_files

    files = [(n, f"raise {exc}\n".encode() if n == "micropython_port/_fe25519_thumb.py" else d)
             for n, d in target_files()]
    with qemu_board.Board(qemu_firmware, files=files) as b:
        got = run(b, """
try:
    from micropython_port import x25519
    print(repr(x25519.PATH))
except MemoryError:
    print(repr("MemoryError"))
""")
    assert got == want


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_vectors_on_each_path(board: Any, path: str) -> None:
    v = RFC7748_6_1
    pairs = [(k, u) for k, u, _ in RFC7748_5_2] + [(v["alice_priv"], v["bob_pub"])]
    got = run(board, _PRELUDE.format(path=path) + f"""
print([X.PATH] + [X.x25519(U(k), U(u)).hex() for k, u in {pairs!r}] + [X.x25519_base(U('{v["bob_priv"]}')).hex()])
""")
    assert got == [path] + [w for _, _, w in RFC7748_5_2] + [v["shared"], v["bob_pub"]]


@pytest.mark.parametrize("path", ["asm_thumb", "viper"])
def test_every_low_order_point_gives_zero(board: Any, path: str) -> None:
    k = bytes(range(1, 33)).hex()
    got = run(board, _PRELUDE.format(path=path) + f"""
print([X.x25519(U('{k}'), U(u)) == bytes(32) for u in {LOW_ORDER!r}])
""")
    assert got == [True] * len(LOW_ORDER)


def _noncanonical() -> list[bytes]:
    # u in [p, 2**255) (reduced mod p), the top bit set (masked), all ones.
    return [(P + i).to_bytes(32, "little") for i in (0, 1, 9, 18)] + [
        ((1 << 255) | 9).to_bytes(32, "little"), b"\xff" * 32, (2**255 - 1).to_bytes(32, "little")]


@pytest.mark.parametrize("path", ["asm_thumb", "viper"])
def test_random_and_non_canonical_inputs_match_pynacl(board: Any, path: str) -> None:
    rng = random.Random(7748 + len(path))
    cases = [(rng.randbytes(32), rng.randbytes(32)) for _ in range(12)]
    cases += [(rng.randbytes(32), u) for u in _noncanonical()]
    cases += [(b"\xff" * 32, rng.randbytes(32)), (bytes(32), rng.randbytes(32))]
    got = run(board, _PRELUDE.format(path=path) + f"""
print([X.x25519(U(k), U(u)).hex() for k, u in {[(k.hex(), u.hex()) for k, u in cases]!r}])
""")

    def ref(k: bytes, u: bytes) -> str:
        # PyNaCl refuses a low-order result; X25519 gives zero for it.
        uu = (int.from_bytes(u, "little") & ((1 << 255) - 1)) % P
        try:
            return nacl.bindings.crypto_scalarmult(k, uu.to_bytes(32, "little")).hex()
        except Exception:
            return "00" * 32

    assert got == [ref(k, u) for k, u in cases]


def _edges() -> list[int]:
    rng = random.Random(25519)
    e = [0, 1, 2, 19, 37, 38, 39, P - 1, P, P + 1, 2 * P, 2**255 - 1, 2**255, 2**256 - 39,
         2**256 - 38, 2**256 - 1, 2**224 - 1, (2**256 - 1) // 3]
    return e + [rng.randrange(2**256) for _ in range(10)]


def test_field_operations_at_their_carry_edges_match_python_ints(board: Any) -> None:
    # Invariant F of _fe25519_thumb: any 8-word value in, a congruent 8-word
    # value out; the worst carries come from words of all ones. Ops 1-5 of
    # x25519_core run one field operation on fe 0..3 of the state.
    vals = _edges()
    out = board.exec(f"""
from array import array
from micropython_port import _fe25519_thumb as F
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
    print(repr((m, s, ad, sb, c, sw, ns)))  # a row at a time: the heap is small
""", timeout=120)
    got = [ast.literal_eval(ln) for ln in out.splitlines() if ln.strip()]
    want = []
    for i, x in enumerate(vals):
        y = vals[(i * 7 + 3) % len(vals)]
        want.append((x * y % P, x * x % P, (x + y) % P, (x - y) % P, (y + 121665 * x) % P))
    assert [tuple(v % P for v in r[:5]) for r in got] == want
    assert all(max(r[:5]) < 2**256 for r in got)
    assert [r[5] for r in got] == [(5, 6, x, vals[(i * 7 + 3) % len(vals)]) for i, x in enumerate(vals)]
    assert [r[6] for r in got] == [(5, 6, x, vals[(i * 7 + 3) % len(vals)]) for i, x in enumerate(vals)]


def test_instructions_per_x25519_on_each_path(board: Any) -> None:
    # Measured, not asserted (no timed assertions): -icount shift=0 makes a
    # ticks_us delta instructions / 1000. bench/bench_mp_device.py reports these.
    got = run(board, """
import time
import mp_primitive_hooks as T
from micropython_port import x25519 as X
k = bytes(range(32))
out = {}
for path in ("asm_thumb", "viper"):
    T.force_x25519_path_for_testing_only(path)
    X.x25519_base(k)
    t0 = time.ticks_us()
    X.x25519_base(k)
    out[path] = time.ticks_diff(time.ticks_us(), t0) * 1000
print(repr(out))
""")
    print(f"\nX25519 on the Cortex-M3 target: asm_thumb {got['asm_thumb'] / 1e6:.2f} M, "
          f"viper {got['viper'] / 1e6:.2f} M instructions")
    assert set(got) == {"asm_thumb", "viper"}
