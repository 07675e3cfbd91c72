"""The ARMv6-M (Cortex-M0/M0+, RP2040) path: X25519 in Thumb-1 inline
assembler (``_fe25519_thumb1``) on an ARMv6-M MicroPython.

The lane's ``cortex-m0`` firmware (``qemu_fw.build(cpu="cortex-m0")``) is
compiled for ARMv6-M: its ``sys.implementation._mpy`` names armv6m (native
arch 4), its native emitters and inline assembler keep to Thumb-1 (it refuses
the Thumb-2 module), so it selects and compiles the Thumb-1 modules from
source as an RP2040 would. qemu's only Cortex-M0 machine (``microbit``) has
16 KiB of RAM, too little for MicroPython and the device, so the firmware runs
on the Cortex-M3 board, which executes every ARMv6-M instruction. A
Cortex-M3 performs an unaligned LDR/LDRH/STR/STRH where a Cortex-M0 faults,
so every board here first sets the M3's CCR.UNALIGN_TRP (``TRAP_UNALIGNED``):
then an unaligned access faults as on an M0, and the board dies (the control
``test_the_unaligned_trap_makes_the_m3_fault_as_an_m0_would`` shows it).

Host-side: each generated module is what its generator writes, ``mpy-cross
-march=armv6m`` accepts it, and every ``data()`` line is the encoding GNU as
assembles for ``-march=armv6-m``. On the target: the path the device reports,
that only a missing assembler falls back (never a MemoryError), RFC 7748
vectors, every low-order point, non-canonical inputs and random inputs
against PyNaCl, the field operations at their carry edges against Python
integers, and instructions per X25519 beside viper's.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.mp_vectors import LOW_ORDER, RFC7748_5_2, RFC7748_6_1, RFC7748_ITER_1, RFC7748_ITER_1000
from tests.qemu.conftest import _Session, session_on
from tests.qemu.target_scripts import check_field_edges, field_edges, x25519_ref
from tests.qemu.test_qemu_primitives import _cacophony, run
from tests.qemu.test_qemu_x25519_asm import _edges, _noncanonical

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "micropython_port" / "tools"
MODULES = {"gen_fe25519_thumb1.py": "_fe25519_thumb1.py", "gen_chachapoly_thumb1.py": "_chachapoly_thumb1.py"}


@pytest.fixture(scope="session")
def m0_firmware(qemu_firmware: Path) -> Path:
    """The ARMv6-M firmware (built once per cache, like the lane's)."""
    import qemu_fw

    return qemu_fw.build(cpu="cortex-m0")


@pytest.fixture(scope="module")
def m0_session(m0_firmware: Path) -> Iterator[_Session]:
    yield from session_on(m0_firmware)


# Sets CCR.UNALIGN_TRP (bit 3 of 0xE000ED14, ARMv7-M ARM B3.2.8): from then
# on an unaligned word or halfword access faults, as every access does on
# ARMv6-M. It survives a soft reset; the firmware's own C code is compiled
# for ARMv6-M and never makes one.
TRAP_UNALIGNED = """
import micropython
@micropython.asm_thumb
def _trap_unaligned():
    mov(r0, 0xE0)
    lsl(r0, r0, 24)
    mov(r1, 0xED)
    lsl(r1, r1, 8)
    add(r0, r0, r1)
    add(r0, 0x14)
    ldr(r1, [r0, 0])
    mov(r2, 8)
    orr(r1, r2)
    str(r1, [r0, 0])
    mov(r0, 0)
_trap_unaligned()
"""


@pytest.fixture
def m0(m0_session: _Session) -> Any:
    """A board running the ARMv6-M firmware, with a fresh interpreter and
    unaligned accesses trapping as on a Cortex-M0."""
    board = m0_session.fresh()
    board.exec(TRAP_UNALIGNED)
    return board


# --- host side ---------------------------------------------------------------


@pytest.mark.parametrize("gen", sorted(MODULES))
def test_the_committed_thumb1_module_is_what_the_generator_writes(gen: str) -> None:
    path = TOOLS / gen
    ns: dict = {"__name__": "gen", "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    assert (ROOT / "micropython_port" / MODULES[gen]).read_text() == ns["generate"]()


@pytest.mark.skipif(not shutil.which("mpy-cross"), reason="mpy-cross not installed")
@pytest.mark.parametrize("module", sorted(MODULES.values()))
def test_mpy_cross_for_armv6m_accepts_the_thumb1_modules_and_refuses_the_thumb2_ones(
        module: str, tmp_path: Path) -> None:
    # The ARMv6-M assembler rejects every Thumb-2 mnemonic (movw, wide
    # branches, push of r8-r11): the Thumb-2 modules are the control.
    ok = subprocess.run(["mpy-cross", "-march=armv6m", "-o", str(tmp_path / "a.mpy"),
                         str(ROOT / "micropython_port" / module)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["mpy-cross", "-march=armv6m", "-o", str(tmp_path / "b.mpy"),
                          str(ROOT / "micropython_port" / module.replace("_thumb1", "_thumb"))],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unsupported Thumb instruction" in bad.stderr


@pytest.mark.skipif(not shutil.which("arm-none-eabi-as"), reason="arm-none-eabi-as not installed")
@pytest.mark.parametrize("module", sorted(MODULES.values()))
def test_every_thumb1_data_encoding_is_what_gnu_as_assembles_for_armv6m(module: str, tmp_path: Path) -> None:
    # data() emits any halfword: GNU as for -march=armv6-m refuses a Thumb-2
    # instruction, and the bytes must be the same as the generator's.
    text = (ROOT / "micropython_port" / module).read_text()
    pairs = sorted(set(re.findall(r"data\(2, (0x[0-9a-f]+(?:, 0x[0-9a-f]+)?)\)  # (.+)", text)))
    (tmp_path / "a.s").write_text(".syntax unified\n.thumb\n" + "".join(f"{asm}\n" for _, asm in pairs))
    r = subprocess.run(["arm-none-eabi-as", "-march=armv6-m", "-mthumb", str(tmp_path / "a.s"),
                        "-o", str(tmp_path / "a.o")], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr
    objcopy = shutil.which("arm-none-eabi-objcopy")
    assert objcopy
    subprocess.run([objcopy, "-O", "binary", "-j", ".text", str(tmp_path / "a.o"), str(tmp_path / "a.bin")],
                   check=True)
    want = b"".join(int(h, 16).to_bytes(2, "little") for hws, _ in pairs for h in hws.split(", "))
    assert (tmp_path / "a.bin").read_bytes() == want and len(pairs) >= 4
    assert all(len(hws.split(", ")) == 1 for hws, _ in pairs)  # 16-bit encodings only


# --- on the ARMv6-M firmware -----------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1])
def test_the_unaligned_trap_makes_the_m3_fault_as_an_m0_would(m0_firmware: Path, offset: int) -> None:
    import qemu_board

    with qemu_board.Board(m0_firmware, files=[]) as b:
        code = TRAP_UNALIGNED + f"""
@micropython.asm_thumb
def load_word(r0):
    add(r0, {offset})
    ldr(r0, [r0, 0])
    mov(r0, 0)
load_word(bytearray(8))
print(repr("survived"))
"""
        if offset == 0:
            assert run(b, code) == "survived"
        else:
            with pytest.raises(qemu_board.BoardError, match="fault"):
                b.exec(code, timeout=30)


def test_the_armv6m_target_reports_asm_thumb1_for_x25519_and_the_aead(m0: Any) -> None:
    got = run(m0, """
import sys
from micropython_port import backend, x25519, chacha20poly1305
try:
    from micropython_port import _fe25519_thumb
    t2 = "loaded"
except SyntaxError as e:
    t2 = str(e)
print(repr((sys.implementation._mpy >> 10, x25519.PATH, chacha20poly1305.PATH, backend.paths(), t2)))
""")
    assert got[:4] == (4, "asm_thumb1", "asm_thumb1", "x25519=asm_thumb1 aead=asm_thumb1")
    assert got[4].startswith("unsupported Thumb instruction")


@pytest.mark.parametrize("module", ["_fe25519_thumb1", "_chachapoly_thumb1"])
@pytest.mark.parametrize("exc, want", [("MemoryError", "MemoryError"),
                                       ("SyntaxError('unsupported Thumb instruction')", "viper")])
def test_only_a_missing_assembler_falls_back_never_a_memory_error(m0_firmware: Path, module: str,
                                                                   exc: str, want: str) -> None:
    import qemu_board

    from tests.qemu.conftest import target_files

    files = [(n, f"raise {exc}\n".encode() if n == f"micropython_port/{module}.py" else d)
             for n, d in target_files()]
    mod = "x25519" if "fe" in module else "chacha20poly1305"
    with qemu_board.Board(m0_firmware, files=files) as b:
        got = run(b, f"""
try:
    from micropython_port import {mod}
    print(repr({mod}.PATH))
except MemoryError:
    print(repr("MemoryError"))
""")
    assert got == want


_PRELUDE = """
from micropython_port import x25519 as X
U = bytes.fromhex
"""


def test_rfc7748_vectors_on_asm_thumb1(m0: Any) -> None:
    v = RFC7748_6_1
    pairs = [(k, u) for k, u, _ in RFC7748_5_2] + [(v["alice_priv"], v["bob_pub"])]
    got = run(m0, _PRELUDE + f"""
k = u = U("09" + "00" * 31)
k, u = X.x25519(k, u), k  # RFC 7748 section 5.2: one iteration
out = [X.PATH] + [X.x25519(U(a), U(b)).hex() for a, b in {pairs!r}]
print(out + [X.x25519_base(U('{v["bob_priv"]}')).hex(), k.hex()])
""")
    assert got == (["asm_thumb1"] + [w for _, _, w in RFC7748_5_2]
                   + [v["shared"], v["bob_pub"], RFC7748_ITER_1])


def test_rfc7748_1000_iterations(m0: Any) -> None:
    # 1000 ladders (about 5.6 G guest instructions; a few seconds of qemu).
    got = run(m0, _PRELUDE + """
k = u = U("09" + "00" * 31)
for _ in range(1000):
    k, u = X.x25519(k, u), k
print(repr(k.hex()))
""", timeout=600)
    assert got == RFC7748_ITER_1000


def test_cacophony_noise_vectors_pass_on_the_armv6m_firmware(m0: Any) -> None:
    # The Noise NK/NKpsk0 vectors through the Thumb-1 X25519 and AEAD.
    doc = _cacophony()
    out = m0.exec(f"""
from micropython_port import backend
from moteseal.conformance import runner as conformance
lines = []
counts = conformance.run_vectors({doc!r}, conformance.default_backend(), lines.append)
for ln in lines:
    print(ln)
print(backend.paths())
print(conformance.summary(counts))
""", timeout=240)
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    n = len(doc["vectors"])
    assert lines[-2].startswith("x25519=asm_thumb1 aead=asm_thumb1") and \
        lines[-1] == f"{2 * n} passed, 0 failed, 0 skipped", \
        "\n".join(lines)


def test_every_low_order_point_gives_zero(m0: Any) -> None:
    k = bytes(range(1, 33)).hex()
    got = run(m0, _PRELUDE + f"""
print([X.x25519(U('{k}'), U(u)) == bytes(32) for u in {LOW_ORDER!r}])
""")
    assert got == [True] * len(LOW_ORDER)


def test_random_and_non_canonical_inputs_match_pynacl(m0: Any) -> None:
    rng = random.Random(6)
    cases = [(rng.randbytes(32), rng.randbytes(32)) for _ in range(8)]
    cases += [(rng.randbytes(32), u) for u in _noncanonical()]
    cases += [(b"\xff" * 32, rng.randbytes(32)), (bytes(32), rng.randbytes(32))]
    got = run(m0, _PRELUDE + f"""
print([X.x25519(U(k), U(u)).hex() for k, u in {[(k.hex(), u.hex()) for k, u in cases]!r}])
""", timeout=240)

    assert got == [x25519_ref(k, u) for k, u in cases]


def test_field_operations_at_their_carry_edges_match_python_ints(m0: Any) -> None:
    # Invariant F: any 8-word value in, a congruent 8-word value out. Words of
    # all ones give the worst carries (every 16x16 product (2**16 - 1)**2, the
    # A24 limb sums at their bound); ops 1-5 as in _fe25519_thumb.
    vals = _edges()
    check_field_edges(m0.exec(field_edges("_fe25519_thumb1", vals), timeout=120), vals)


def test_instructions_per_x25519_asm_thumb1_and_viper(m0: Any) -> None:
    # Measured, not asserted (no timed assertions): -icount shift=0 makes a
    # ticks_us delta instructions / 1000. Viper is what armv6m ran before.
    got = run(m0, """
import time
from micropython_port import x25519 as X
from micropython_port import _fe25519_viper as V
k = bytes(range(32))
out = {}
for path, fe in (("asm_thumb1", X._fe), ("viper", V)):
    X._fe, X.PATH = fe, path
    X.x25519_base(k)
    t0 = time.ticks_us()
    X.x25519_base(k)
    out[path] = time.ticks_diff(time.ticks_us(), t0) * 1000
print(repr(out))
""", timeout=240)
    print(f"\nX25519 on the ARMv6-M firmware: asm_thumb1 {got['asm_thumb1'] / 1e6:.2f} M, "
          f"viper {got['viper'] / 1e6:.2f} M instructions")
    assert set(got) == {"asm_thumb1", "viper"}
