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
    """Registers, the C and Z flags, word memory at byte addresses, and the
    number of instructions run."""

    def __init__(self) -> None:
        self.r = [0] * 16
        self.c = 0
        self.z = 0
        self.mem: dict[int, int] = {}
        self.r[13] = 0x20010000
        self.count = 0

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
    if isinstance(node, ast.Name) and node.id in ("lr", "pc"):
        return {"lr": 14, "pc": 15}[node.id]
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
        assert p < 2**64, "umlal overflow"
        r[lo], r[hi] = p & M32, p >> 32
    elif hw1 & 0xFFF0 == 0xF140 and hw2 & 0xF0FF == 0:  # adc.w rd, rn, #0 (no flags)
        v = r[hw1 & 15] + cpu.c
        assert v <= M32, "adc.w #0 wrapped: a carry was lost"
        r[(hw2 >> 8) & 15] = v
    elif hw1 & 0xFBF0 == 0xF200 and not hw2 & 0x8000:  # addw rd, rn, #imm12
        imm = ((hw1 >> 10) & 1) << 11 | ((hw2 >> 12) & 7) << 8 | (hw2 & 0xFF)
        r[(hw2 >> 8) & 15] = (r[hw1 & 15] + imm) & M32
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
    elif hw & 0xF800 == 0xA800:  # add rd, sp, #imm8 * 4
        cpu.r[(hw >> 8) & 7] = cpu.r[13] + (hw & 0xFF) * 4
    elif hw & 0xF800 == 0x9800:  # ldr rt, [sp, #imm8 * 4]
        cpu.r[(hw >> 8) & 7] = cpu.ld(cpu.r[13] + (hw & 0xFF) * 4)
    elif hw & 0xF800 == 0x9000:  # str rt, [sp, #imm8 * 4]
        cpu.st(cpu.r[13] + (hw & 0xFF) * 4, cpu.r[(hw >> 8) & 7])
    else:
        raise AssertionError(f"unknown 16-bit encoding {hw:04x}")


def _arg(node: ast.expr) -> object:
    if isinstance(node, ast.Constant):
        return ("imm", node.value)
    if isinstance(node, ast.List):  # [base, offset]
        return ("mem", _reg(node.elts[0]), node.elts[1].value)  # type: ignore[attr-defined]
    if isinstance(node, ast.Set):  # {r8, r9, ...}
        return ("regs", sorted(_reg(e) for e in node.elts))
    if isinstance(node, ast.Name) and not re.fullmatch(r"r\d+|lr|pc", node.id):
        return ("label", node.id)
    return ("reg", _reg(node))


def _compile(body: list[ast.stmt]) -> tuple[list[tuple], dict[str, int]]:
    prog, labels = [], {}
    for st in body:
        assert isinstance(st, ast.Expr) and isinstance(st.value, ast.Call), ast.dump(st)
        call = st.value
        assert isinstance(call.func, ast.Name)
        if call.func.id == "label":
            labels[call.args[0].id] = len(prog)  # type: ignore[attr-defined]
            continue
        prog.append((call.func.id, [_arg(a) for a in call.args]))
    return prog, labels


def _run(prog: list[tuple], labels: dict[str, int], cpu: _Cpu) -> None:
    r = cpu.r
    pc = 0
    ret = len(prog)  # bl pushes nothing: lr is an index here
    while pc < len(prog):
        cpu.count += 1
        op, a = prog[pc]
        pc += 1
        if op == "data":
            vals = [x[1] for x in a[1:]]
            assert a[0][1] == 2
            if len(vals) == 2:
                _data32(cpu, *vals)
            else:
                _data16(cpu, vals[0])
        elif op in ("ldr", "str", "ldrb"):
            _, base, off = a[1]
            addr = r[base] + off
            if op == "ldr":
                r[a[0][1]] = cpu.ld(addr)
            elif op == "ldrb":
                r[a[0][1]] = (cpu.ld(addr & ~3) >> (8 * (addr & 3))) & 0xFF
            else:
                cpu.st(addr, r[a[0][1]])
        elif op == "mov":
            d = a[0][1]
            if a[1][0] == "imm":
                r[d] = cpu.setzc(a[1][1])  # movs: N, Z; C unchanged
            else:
                r[d] = r[a[1][1]]  # mov with a high register: flags unchanged
        elif op in ("movw", "movwt"):
            r[a[0][1]] = a[1][1]
        elif op in ("add", "sub"):  # adds/subs rd, rn, (rm or #imm); rdn, #imm8
            d, n = a[0][1], a[-2][1]
            m = a[-1][1] if a[-1][0] == "imm" else r[a[-1][1]]
            if op == "add":
                v = r[n] + m
                r[d] = cpu.setzc(v, int(v > M32))
            else:
                v = r[n] - m
                r[d] = cpu.setzc(v, int(v >= 0))
        elif op == "cmp":
            m = a[1][1] if a[1][0] == "imm" else r[a[1][1]]
            v = r[a[0][1]] - m
            cpu.setzc(v, int(v >= 0))
        elif op == "adc":
            d, m = a[0][1], a[1][1]
            v = r[d] + r[m] + cpu.c
            r[d] = cpu.setzc(v, int(v > M32))
        elif op == "sbc":
            d, m = a[0][1], a[1][1]
            v = r[d] - r[m] - (1 - cpu.c)
            r[d] = cpu.setzc(v, int(v >= 0))
        elif op == "mul":
            d, m = a[0][1], a[1][1]
            r[d] = cpu.setzc(r[d] * r[m])  # muls: N, Z; C unchanged (ARMv7-M)
        elif op in ("and_", "eor"):
            d, m = a[0][1], a[1][1]
            r[d] = cpu.setzc(r[d] & r[m] if op == "and_" else r[d] ^ r[m])
        elif op == "lsl":  # lsls rd, rm, #imm (0 < imm < 32 here)
            d, m, n = a[0][1], a[1][1], a[2][1]
            assert 0 < n < 32
            cpu.c = (r[m] >> (32 - n)) & 1
            r[d] = cpu.setzc(r[m] << n)
        elif op == "lsr":
            if len(a) == 3:  # lsrs rd, rm, #imm (imm > 0 here)
                d, m, n = a[0][1], a[1][1], a[2][1]
                assert 0 < n < 32
                cpu.c = (r[m] >> (n - 1)) & 1
                r[d] = cpu.setzc(r[m] >> n)
            else:  # lsrs rd, rs: by the low byte of rs (< 8 here)
                d, sh = a[0][1], r[a[1][1]] & 0xFF
                assert sh < 32
                if sh:
                    cpu.c = (r[d] >> (sh - 1)) & 1
                r[d] = cpu.setzc(r[d] >> sh)
        elif op == "neg":
            d, m = a[0][1], a[1][1]
            v = -r[m]
            r[d] = cpu.setzc(v, int(r[m] == 0))
        elif op in ("bne", "bne_w", "beq", "beq_w", "b"):
            if op == "b" or cpu.z == op.startswith("beq"):
                pc = labels[a[0][1]]
        elif op == "bl":
            r[14] = pc
            pc = labels[a[0][1]]
        elif op == "bx":
            assert a[0] == ("reg", 14)
            pc = r[14]
        elif op == "push":
            for reg in reversed(a[0][1]):
                r[13] -= 4
                cpu.st(r[13], r[reg])
        elif op == "pop":
            for reg in a[0][1]:
                v = cpu.ld(r[13])
                r[13] += 4
                if reg == 15:  # pop {..., pc}: a return (lr was an index)
                    pc = v
                else:
                    r[reg] = v
        else:
            raise AssertionError(f"the model lacks {op}")
    assert pc == ret


def _core() -> tuple[list[tuple], dict[str, int]]:
    tree = ast.parse(MOD.read_text())
    (f,) = [f for f in tree.body if isinstance(f, ast.FunctionDef)]
    assert f.name == "x25519_core" and len(f.args.args) == 3
    return _compile(f.body)


CORE = _core()
STATE, KEY = 0x20000000, 0x20000400


def _call(fes: dict[int, int], k: int | bytes, op: int) -> tuple[list[int], _Cpu]:
    """Run x25519_core(state, k, op) on the model with field element i of
    the state = ``fes[i]`` (others zero); returns the 16 values after it."""
    cpu = _Cpu()
    for i in range(16):
        for j, w in enumerate(_w(fes.get(i, 0))):
            cpu.st(STATE + 32 * i + 4 * j, w)
    if isinstance(k, bytes):
        for j in range(0, 32, 4):
            cpu.st(KEY + j, int.from_bytes(k[j:j + 4], "little"))
        cpu.r[1] = KEY
    else:
        cpu.r[1] = k
    cpu.r[0], cpu.r[2] = STATE, op
    sp = cpu.r[13]
    for reg in (8, 9, 10, 11):
        cpu.r[reg] = 0x1000 + reg  # callee-saved: must come back unchanged
    _run(*CORE, cpu)
    assert cpu.r[13] == sp, "stack not balanced"
    assert [cpu.r[reg] for reg in (8, 9, 10, 11)] == [0x1000 + reg for reg in (8, 9, 10, 11)]
    assert cpu.r[0] == 0
    return [_v([cpu.mem[STATE + 32 * i + 4 * j] for j in range(8)]) for i in range(16)], cpu


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


def _check_ops(x: int, y: int) -> None:
    got, _ = _call({1: x, 2: y}, 0, 1)
    assert got[0] % P == x * y % P, (x, y)
    got, _ = _call({1: x}, 0, 2)
    assert got[0] % P == x * x % P, x
    got, _ = _call({1: x, 2: y}, 0, 3)
    assert (got[0] % P, got[3] % P) == ((x + y) % P, (x - y) % P), (x, y)
    got, _ = _call({1: x, 2: y}, 0, 4)
    assert got[0] % P == (y + 121665 * x) % P, (x, y)


def test_the_model_at_every_pair_of_carry_edges() -> None:
    # The second folds (a sum that wraps twice, a difference that borrows
    # twice) need both operands near 2**256 or 0: every pair of edges.
    for x in EDGES:
        for y in EDGES:
            _check_ops(x, y)


def test_the_model_runs_every_operation_to_a_congruent_8_word_result() -> None:
    ins = _inputs()
    rng = random.Random(8439)
    for x in ins:
        _check_ops(x, rng.choice(ins))
        y = rng.choice(ins)
        for bit in (0, 1):
            got, _ = _call({0: x, 1: y, 2: y ^ 5, 3: x ^ 7}, bit, 5)
            assert got[0:4] == ([y ^ 5, x ^ 7, x, y] if bit else [x, y, y ^ 5, x ^ 7])


def test_the_inversion_chain_is_the_one_x25519_py_documents() -> None:
    ns: dict = {"__name__": "gen", "__file__": str(GEN)}
    exec(compile(GEN.read_text(), str(GEN), "exec"), ns)
    src = (ROOT / "micropython_port" / "x25519.py").read_text()
    chain = b"".join(ast.literal_eval(m) for m in re.findall(r'^\s+(b"[^"]+")', src, re.M))
    assert [tuple(chain[i:i + 4]) for i in range(0, len(chain), 4)] == ns["INVERT_CHAIN"]
    # and it computes z ** (p - 2): exponents as the chain combines them
    e = {1: 1}
    for dst, src_, n, m in ns["INVERT_CHAIN"]:
        e[dst] = e[src_] * 2**n + e[m]
    assert e[3] == P - 2


def test_the_whole_ladder_on_the_model_matches_pynacl() -> None:
    import nacl.bindings

    rng = random.Random(7748)
    k = bytearray(rng.randbytes(32))
    u = rng.randrange(2**255)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    got, cpu = _call({2: u, 4: u, 0: 1, 3: 1}, bytes(k), 0)
    want = nacl.bindings.crypto_scalarmult(bytes(k), (u % P).to_bytes(32, "little"))
    assert (got[0] % P).to_bytes(32, "little") == want
    assert 1_000_000 < cpu.count < 3_000_000  # the whole X25519 in one call (rolled loops: ~2.2 M)
