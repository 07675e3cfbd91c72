"""The asm_thumb field arithmetic (``micropython_port/_fe25519_thumb.py``)
off the target: the committed file is what its generator writes, every
``data()`` encoding is the instruction GNU as assembles from the comment
beside it (when arm-none-eabi-as is installed), and a CPython model of the
Thumb-2 subset it uses runs the generated bodies on thousands of inputs
against Python integers, including the carry edges. The qemu lane
(``tests/qemu/test_qemu_x25519_asm.py``) runs the same code on a Cortex-M3;
this test reaches more inputs than the target can in a test's time.
"""

from __future__ import annotations

import ast
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.mp_helpers import ROOT

GEN = ROOT / "micropython_port" / "tools" / "gen_fe25519_thumb.py"
MOD = ROOT / "micropython_port" / "_fe25519_thumb.py"
P = 2**255 - 19
M32 = 0xFFFFFFFF


def _generate() -> str:
    ns: dict = {"__name__": "gen", "__file__": str(GEN)}
    exec(compile(GEN.read_text(), str(GEN), "exec"), ns)
    return ns["generate"]()


def test_the_committed_module_is_what_the_generator_writes() -> None:
    assert MOD.read_text() == _generate()


@pytest.mark.skipif(not shutil.which("arm-none-eabi-as"), reason="arm-none-eabi-as not installed")
def test_every_data_encoding_is_what_gnu_as_assembles(tmp_path: Path) -> None:
    pairs = sorted(set(re.findall(r"data\(2, (0x[0-9a-f]+(?:, 0x[0-9a-f]+)?)\)  # (.+)", MOD.read_text())))
    src = ".syntax unified\n.thumb\n" + "".join(f"{asm}\n" for _, asm in pairs)
    (tmp_path / "a.s").write_text(src)
    subprocess.run(["arm-none-eabi-as", "-mcpu=cortex-m3", "-mthumb", str(tmp_path / "a.s"),
                    "-o", str(tmp_path / "a.o")], check=True)
    objcopy = shutil.which("arm-none-eabi-objcopy")
    assert objcopy
    subprocess.run([objcopy, "-O", "binary", "-j", ".text", str(tmp_path / "a.o"), str(tmp_path / "a.bin")],
                   check=True)
    got = (tmp_path / "a.bin").read_bytes()
    want = b"".join(int(h, 16).to_bytes(2, "little") for hws, _ in pairs for h in hws.split(", "))
    assert got == want and len(pairs) >= 7


# --- a CPython model of the Thumb-2 subset the module uses ----------------------


class _Cpu:
    """Registers, the C and Z flags, and word memory at byte addresses."""

    def __init__(self) -> None:
        self.r = [0] * 16
        self.c = 0
        self.z = 0
        self.mem: dict[int, int] = {}
        self.r[13] = 0x20010000

    def ld(self, a: int) -> int:
        assert a % 4 == 0
        return self.mem[a]  # a KeyError is a read of memory never written

    def st(self, a: int, v: int) -> None:
        assert a % 4 == 0 and 0 <= v <= M32
        self.mem[a] = v

    def setzc(self, v: int, c: int | None = None) -> int:
        v &= M32
        self.z = int(v == 0)
        if c is not None:
            self.c = c
        return v


def _reg(node: ast.expr) -> int:
    assert isinstance(node, ast.Name) and re.fullmatch(r"r\d+", node.id), ast.dump(node)
    return int(node.id[1:])


def _data32(cpu: _Cpu, hw1: int, hw2: int) -> None:
    r = cpu.r
    if hw1 & 0xFFF0 == 0xFBA0:  # umull
        lo, hi, n, m = hw2 >> 12, (hw2 >> 8) & 15, hw1 & 15, hw2 & 15
        p = r[n] * r[m]
        r[lo], r[hi] = p & M32, p >> 32
    elif hw1 & 0xFFF0 == 0xFBE0:  # umlal
        lo, hi, n, m = hw2 >> 12, (hw2 >> 8) & 15, hw1 & 15, hw2 & 15
        p = r[n] * r[m] + (r[hi] << 32) + r[lo]
        r[lo], r[hi] = p & M32, (p >> 32) & M32
        assert p < 2**64, "umlal overflow"
    elif hw1 & 0xFFF0 == 0xF140 and hw2 & 0xF0FF == 0:  # adc.w rd, rn, #0 (no flags)
        v = r[hw1 & 15] + cpu.c
        assert v <= M32, "adc.w #0 wrapped: a carry was lost"
        r[(hw2 >> 8) & 15] = v
    elif hw1 == 0xF8DD:  # ldr.w rt, [sp, #imm12]
        r[hw2 >> 12] = cpu.ld(r[13] + (hw2 & 0xFFF))
    elif hw1 == 0xF8CD:  # str.w rt, [sp, #imm12]
        cpu.st(r[13] + (hw2 & 0xFFF), r[hw2 >> 12])
    else:
        raise AssertionError(f"unknown 32-bit encoding {hw1:04x} {hw2:04x}")


def _data16(cpu: _Cpu, hw: int) -> None:
    if hw & 0xFF80 == 0xB080:
        cpu.r[13] -= (hw & 0x7F) * 4
    elif hw & 0xFF80 == 0xB000:
        cpu.r[13] += (hw & 0x7F) * 4
    else:
        raise AssertionError(f"unknown 16-bit encoding {hw:04x}")


def _run(body: list[ast.stmt], cpu: _Cpu) -> None:
    labels = {}
    calls = []
    for st in body:
        assert isinstance(st, ast.Expr) and isinstance(st.value, ast.Call), ast.dump(st)
        call = st.value
        assert isinstance(call.func, ast.Name)
        if call.func.id == "label":
            labels[call.args[0].id] = len(calls)  # type: ignore[attr-defined]
        calls.append(call)
    pc = 0
    r = cpu.r
    steps = 0
    while pc < len(calls):
        steps += 1
        assert steps < 100_000
        call = calls[pc]
        op, a = call.func.id, call.args  # type: ignore[attr-defined]
        pc += 1
        if op == "label":
            continue
        if op == "data":
            vals = [x.value for x in a[1:]]  # type: ignore[attr-defined]
            assert a[0].value == 2  # type: ignore[attr-defined]
            if len(vals) == 2:
                _data32(cpu, *vals)
            else:
                _data16(cpu, vals[0])
        elif op in ("ldr", "str"):
            t = _reg(a[0])
            base, off = a[1].elts  # type: ignore[attr-defined]
            addr = r[_reg(base)] + off.value
            if op == "ldr":
                r[t] = cpu.ld(addr)
            else:
                cpu.st(addr, r[t])
        elif op == "mov":
            d = _reg(a[0])
            if isinstance(a[1], ast.Constant):
                r[d] = cpu.setzc(a[1].value)  # movs: N, Z; C unchanged
            else:
                r[d] = r[_reg(a[1])]
        elif op == "movwt":
            r[_reg(a[0])] = a[1].value  # type: ignore[attr-defined]
        elif op in ("add", "sub") and len(a) == 3:
            d, n = _reg(a[0]), _reg(a[1])
            m = a[2].value if isinstance(a[2], ast.Constant) else r[_reg(a[2])]
            if op == "add":
                v = r[n] + m
                r[d] = cpu.setzc(v, int(v > M32))
            else:
                v = r[n] - m
                r[d] = cpu.setzc(v, int(v >= 0))
        elif op == "adc":
            d, m = _reg(a[0]), _reg(a[1])
            v = r[d] + r[m] + cpu.c
            r[d] = cpu.setzc(v, int(v > M32))
        elif op == "sbc":
            d, m = _reg(a[0]), _reg(a[1])
            v = r[d] - r[m] - (1 - cpu.c)
            r[d] = cpu.setzc(v, int(v >= 0))
        elif op == "mul":
            d, m = _reg(a[0]), _reg(a[1])
            r[d] = cpu.setzc(r[d] * r[m])  # muls: N, Z; C unchanged (ARMv7-M)
        elif op in ("and_", "eor"):
            d, m = _reg(a[0]), _reg(a[1])
            r[d] = cpu.setzc(r[d] & r[m] if op == "and_" else r[d] ^ r[m])
        elif op == "neg":
            d, m = _reg(a[0]), _reg(a[1])
            v = -r[m]
            r[d] = cpu.setzc(v, int(r[m] == 0))
        elif op == "bne":
            if not cpu.z:
                pc = labels[a[0].id]  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"the model lacks {op}")


def _functions() -> dict[str, tuple[int, list[ast.stmt]]]:
    tree = ast.parse(MOD.read_text())
    return {f.name: (len(f.args.args), f.body) for f in tree.body
            if isinstance(f, ast.FunctionDef)}


FUNCS = _functions()
BASE = (0x20000000, 0x20000100, 0x20000200, 0x20000300)


def _call(name: str, *args: int | list[int]) -> tuple[list[list[int]], int]:
    """Run ``name`` with word lists placed in memory (ints passed as they are);
    returns the arrays after the call and r0."""
    nargs, body = FUNCS[name]
    assert nargs == len(args)
    cpu = _Cpu()
    arrays = []
    for i, v in enumerate(args):
        if isinstance(v, list):
            for j, w in enumerate(v):
                cpu.st(BASE[i] + 4 * j, w)
            cpu.r[i] = BASE[i]
            arrays.append(i)
        else:
            cpu.r[i] = v
    sp = cpu.r[13]
    _run(body, cpu)
    assert cpu.r[13] == sp, "stack not balanced"
    out = [[cpu.mem[BASE[i] + 4 * j] for j in range(len(args[i]))] for i in arrays]  # type: ignore[arg-type]
    return out, cpu.r[0]


def _w(x: int) -> list[int]:
    return [(x >> (32 * i)) & M32 for i in range(8)]


def _v(w: list[int]) -> int:
    return sum(x << (32 * i) for i, x in enumerate(w))


EDGES = [0, 1, 19, 37, 38, 39, P - 1, P, 2 * P, 2**255 - 1, 2**255, 2**256 - 39, 2**256 - 38,
         2**256 - 20, 2**256 - 2, 2**256 - 1, 2**224 - 1, 2**32 - 1, 2**64 - 1]


def _inputs() -> list[int]:
    rng = random.Random(255)
    return EDGES + [rng.randrange(2**256) for _ in range(120)] + \
        [rng.getrandbits(32) << (32 * rng.randrange(8)) for _ in range(20)]


def test_the_model_at_every_pair_of_carry_edges() -> None:
    # The second folds (a sum that wraps twice, a difference that borrows
    # twice) need both operands near 2**256 or 0: every pair of edges.
    for x in EDGES:
        for y in EDGES:
            (s, d, _a, _b), _ = _call("fe_addsub", [0] * 8, [0] * 8, _w(x), _w(y))
            assert (_v(s) % P, _v(d) % P) == ((x + y) % P, (x - y) % P), (x, y)
            (o, _e, _aa), _ = _call("fe_a24_add", [0] * 8, _w(x), _w(y))
            assert _v(o) % P == (y + 121665 * x) % P, (x, y)
            (o, _a, _b), _ = _call("fe_mul", [0] * 8, _w(x), _w(y))
            assert _v(o) % P == x * y % P, (x, y)


def test_the_model_runs_every_operation_to_a_congruent_8_word_result() -> None:
    ins = _inputs()
    rng = random.Random(8439)
    for x in ins:
        y = rng.choice(ins)
        (o, _a, _b), r0 = _call("fe_mul", [0] * 8, _w(x), _w(y))
        assert _v(o) % P == x * y % P and r0 == 0
        (o, _a), _ = _call("fe_sq", [0] * 8, _w(x))
        assert _v(o) % P == x * x % P
        (s, d, _a, _b), _ = _call("fe_addsub", [0] * 8, [0] * 8, _w(x), _w(y))
        assert (_v(s) % P, _v(d) % P) == ((x + y) % P, (x - y) % P)
        (o, _e, _aa), _ = _call("fe_a24_add", [0] * 8, _w(x), _w(y))
        assert _v(o) % P == (y + 121665 * x) % P
        for bit in (0, 1):
            (p, q), _ = _call("fe_cswap", _w(x), _w(y), 8, bit)
            assert (_v(p), _v(q)) == ((y, x) if bit else (x, y))


def test_the_model_allows_the_documented_aliasing() -> None:
    # fe_mul and fe_sq may write over an input; fe_a24_add too (word by word).
    for x in _inputs()[:40]:
        cpu = _Cpu()
        for j, w in enumerate(_w(x)):
            cpu.st(BASE[0] + 4 * j, w)
        cpu.r[0] = cpu.r[1] = cpu.r[2] = BASE[0]
        _run(FUNCS["fe_mul"][1], cpu)
        assert _v([cpu.mem[BASE[0] + 4 * j] for j in range(8)]) % P == x * x % P
        cpu.r[0] = cpu.r[1] = BASE[0]
        _run(FUNCS["fe_sq"][1], cpu)
        assert _v([cpu.mem[BASE[0] + 4 * j] for j in range(8)]) % P == pow(x, 4, P)
