"""X25519 on the Cortex-M3 target's three paths: the inline Thumb-2
assembler field arithmetic (``_fe25519_thumb``, the default there), viper
(``_fe25519_viper``) and pure Python. RFC 7748 vectors, every low-order
point, non-canonical inputs, random inputs against PyNaCl, and the field
operations against Python integers at their carry edges; plus which path
the device reports (``X.PATH``, ``backend.paths()``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.mp_vectors import LOW_ORDER, P, RFC7748_5_2, RFC7748_6_1
from tests.qemu.target_scripts import check_field_edges, field_edges, path_when_module_raises, x25519_ref
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
    assert path_when_module_raises(qemu_firmware, "_fe25519_thumb.py", "x25519", exc) == want


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

    assert got == [x25519_ref(k, u) for k, u in cases]


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
    check_field_edges(board.exec(field_edges("_fe25519_thumb", vals), timeout=120), vals)


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
