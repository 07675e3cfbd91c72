"""Thumb-2 32-bit instruction encodings for the generators of inline
assembler modules (``gen_chachapoly_thumb.py``): MicroPython's inline
assembler has no mnemonic for shifted register operands, UMULL/UMLAL,
UBFX/BFC, LDRD/STRD, LDM/STM of high registers or post-indexed loads, but
``data(2, hw1, hw2)`` emits any instruction. Each encoder returns that
``data()`` line with the GNU as spelling as its comment, which a test
assembles to check the encoding (ARMv7-M Architecture Reference Manual,
A7.7)."""

LR = 14
SP = 13


def _r(n):
    return {13: "sp", 14: "lr"}.get(n, "r%d" % n)


def _hw(comment, *halfwords):
    return "    data(2, " + ", ".join("0x%04x" % h for h in halfwords) + ")  # " + comment


_SHIFT = {"lsl": 0, "lsr": 1, "asr": 2, "ror": 3}
_DP_REG = {"and": 0xEA00, "bic": 0xEA20, "orr": 0xEA40, "eor": 0xEA80, "add": 0xEB00,
           "adc": 0xEB40, "sub": 0xEBA0}
_DP_IMM = {"and": 0xF000, "orr": 0xF040, "add": 0xF100, "adc": 0xF140, "sub": 0xF1A0,
           "rsb": 0xF1C0}


class E:
    """Thumb-2 32-bit encodings, each with its GNU as spelling."""

    @staticmethod
    def dp(op, d, n, m, s=False, shift="lsl", amount=0):
        """``op{s}.w rd, rn, rm{, shift #amount}`` (data processing, register)."""
        assert 0 <= amount < 32 and d not in (SP, 15) and n not in (SP, 15) and m not in (SP, 15)
        hw2 = ((amount >> 2) << 12) | (d << 8) | ((amount & 3) << 6) | (_SHIFT[shift] << 4) | m
        asm = "%s%s.w %s, %s, %s" % (op, "s" if s else "", _r(d), _r(n), _r(m))
        if amount:
            asm += ", %s #%d" % (shift, amount)
        return _hw(asm, _DP_REG[op] | (0x10 if s else 0) | n, hw2)

    @staticmethod
    def imm(op, d, n, k, s=False):
        """``op{s}.w rd, rn, #k`` for 0 <= k < 256 (modified immediate)."""
        assert 0 <= k < 256
        return _hw("%s%s.w %s, %s, #%d" % (op, "s" if s else "", _r(d), _r(n), k),
                   _DP_IMM[op] | (0x10 if s else 0) | n, (d << 8) | k)

    @staticmethod
    def cmp(n, k):
        assert 0 <= k < 256
        return _hw("cmp.w %s, #%d" % (_r(n), k), 0xF1B0 | n, 0x0F00 | k)

    @staticmethod
    def tst(n, k):
        assert 0 <= k < 256
        return _hw("tst.w %s, #%d" % (_r(n), k), 0xF010 | n, 0x0F00 | k)

    @staticmethod
    def movi(d, k):
        assert 0 <= k < 256
        return _hw("mov.w %s, #%d" % (_r(d), k), 0xF04F, (d << 8) | k)

    @staticmethod
    def sh(op, d, m, amount):
        """``lsl.w/lsr.w/ror.w rd, rm, #amount`` (MOV, shifted register)."""
        assert 0 < amount < 32
        hw2 = ((amount >> 2) << 12) | (d << 8) | ((amount & 3) << 6) | (_SHIFT[op] << 4) | m
        return _hw("%s.w %s, %s, #%d" % (op, _r(d), _r(m), amount), 0xEA4F, hw2)

    @staticmethod
    def ubfx(d, n, lsb, width):
        assert 0 <= lsb < 32 and 1 <= width <= 32 - lsb
        return _hw("ubfx %s, %s, #%d, #%d" % (_r(d), _r(n), lsb, width), 0xF3C0 | n,
                   ((lsb >> 2) << 12) | (d << 8) | ((lsb & 3) << 6) | (width - 1))

    @staticmethod
    def bfc(d, lsb, width):
        msb = lsb + width - 1
        assert 0 <= lsb <= msb < 32
        return _hw("bfc %s, #%d, #%d" % (_r(d), lsb, width), 0xF36F,
                   ((lsb >> 2) << 12) | (d << 8) | ((lsb & 3) << 6) | msb)

    @staticmethod
    def mem(op, t, n, off):
        """``ldr.w/str.w/ldrb.w/strb.w rt, [rn, #off]``, 0 <= off < 4096."""
        assert 0 <= off < 4096 and (op[-1] == "b" or off % 4 == 0)
        base = {"ldr": 0xF8D0, "str": 0xF8C0, "ldrb": 0xF890, "strb": 0xF880}[op]
        return _hw("%s.w %s, [%s, #%d]" % (op, _r(t), _r(n), off), base | n, (t << 12) | off)

    @staticmethod
    def post(op, t, n, step):
        """``ldr/str/ldrb/strb rt, [rn], #step`` (post-indexed, rn += step)."""
        assert 0 < step < 256
        base = {"ldr": 0xF850, "str": 0xF840, "ldrb": 0xF810, "strb": 0xF800}[op]
        return _hw("%s %s, [%s], #%d" % (op, _r(t), _r(n), step), base | n, (t << 12) | 0x0B00 | step)

    @staticmethod
    def dual(op, t, t2, n, off):
        """``ldrd/strd rt, rt2, [rn, #off]``, off a multiple of 4 below 1024."""
        assert off % 4 == 0 and 0 <= off < 1024
        base = {"ldrd": 0xE9D0, "strd": 0xE9C0}[op]
        return _hw("%s %s, %s, [%s, #%d]" % (op, _r(t), _r(t2), _r(n), off), base | n,
                   (t << 12) | (t2 << 8) | (off >> 2))

    @staticmethod
    def multi(op, n, regs, wback=False):
        """``ldmia.w/stmia.w rn{!}, {regs}``."""
        base = {"ldmia": 0xE890, "stmia": 0xE880}[op]
        mask = 0
        for r in regs:
            mask |= 1 << r
        asm = "%s.w %s%s, {%s}" % (op, _r(n), "!" if wback else "", ", ".join(_r(r) for r in regs))
        return _hw(asm, base | (0x20 if wback else 0) | n, mask)

    @staticmethod
    def add_sp(d, k):
        """``add.w rd, sp, #k`` (k < 256)."""
        assert 0 <= k < 256
        return _hw("add.w %s, sp, #%d" % (_r(d), k), 0xF10D, (d << 8) | k)

    @staticmethod
    def mul64(op, lo, hi, n, m):
        """``umull/umlal rdlo, rdhi, rn, rm``."""
        base = {"umull": 0xFBA0, "umlal": 0xFBE0}[op]
        return _hw("%s %s, %s, %s, %s" % (op, _r(lo), _r(hi), _r(n), _r(m)), base | n,
                   (lo << 12) | (hi << 8) | m)




def frame(size):
    """Save r8-r11 (the entry saved r4-r7 and lr) and reserve ``size`` bytes."""
    return ["    push({r8, r9, r10, r11})", "    data(2, 0x%04x)  # sub sp, #%d" % (0xB080 | size // 4, size)]


def unframe(size):
    return ["    data(2, 0x%04x)  # add sp, #%d" % (0xB000 | size // 4, size), "    pop({r8, r9, r10, r11})"]
