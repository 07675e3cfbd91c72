"""Generate ``micropython_port/_chachapoly_viper.py``: viper ChaCha20 and
Poly1305 (RFC 8439) on preallocated word arrays.

Run ``python3 micropython_port/tools/gen_chachapoly.py`` after editing; a test
checks that the committed file is current. The Poly1305 column schedule (where
a column's running sum is split to stay below 2**31) is computed here from the
limb bounds, and re-checked by the CPython 32-bit model in the tests.
"""

import os

LIMIT = (1 << 31) - 1  # every signed viper int stays at or below this
H_AFTER_MUL = 8191 + 512  # h limb bound after a block (limb 1 carries in <= 512)
H_MAX = H_AFTER_MUL + 8191  # plus a message limb (< 2**13)


def _clamped_r_limb_max():
    r = (1 << 128) - 1
    r &= 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF  # RFC 8439 section 2.5.1 clamp
    return [(r >> (13 * i)) & 0x1FFF for i in range(10)]


R_MAX = _clamped_r_limb_max()

HEADER = '''"""Viper ChaCha20 and Poly1305 (RFC 8439) on preallocated arrays (generated
by ``micropython_port/tools/gen_chachapoly.py``; do not edit by hand).

Word-size rules (viper ``int``/``uint`` is 32 bits on ESP32, RP2040 and STM32
and 64 bits on the unix port; both must compute the same):
- No integer literal above 2**30 - 1 (it would not be a small int on a 32-bit
  port, and viper would see an object): the ChaCha constants and the 32-bit
  mask are built from 16-bit halves at run time.
- ChaCha20 works on ``uint`` words and masks every sum and left shift with
  ``M = 0xFFFFFFFF``: on a 32-bit word the mask is the identity and the wrap
  is the hardware's; on a 64-bit word the mask does the wrap. Right shifts of
  ``uint`` are logical on both.
- Poly1305 uses 10 limbs of 13 bits (the scheme of poly1305-donna-16): h limbs
  are <= {h_max} when a product starts, r limbs are at most {r_max}
  after clamping, and 5 * r <= 5 * 8191 = 40_955. A column of the product is
  the sum of ten terms h[j] * r' (r' = r or 5 * r); the generator splits a
  column's running sum (carrying its high part into the next column) before
  it could pass 2**31 - 1, so every signed intermediate stays below 2**31 and
  the arithmetic shift is exact. After the final carry every h limb is < 2**13
  except limb 1, which is <= {h_after}.

Buffers and parameters (to keep viper calls at <= 4 arguments and free of
heap objects):
- ``st``: 48 words. 0..15 the ChaCha20 input state (constants, key, block
  counter, nonce); 16 = source offset, 17 = destination offset, 18 = length;
  20..25 = the 96-bit nonce as six 16-bit pieces, little-endian, which
  ``chacha_polykey`` assembles into st[13..15] (a Noise nonce, section 12.3,
  is 32 zero bits then a little-endian uint64: its writer sets 22..25 and
  leaves 20 and 21 zero); 32..47 the keystream block ``chacha_block`` just
  made.
- The rounds exist once, in ``chacha_block``; ``chacha_xor`` and
  ``chacha_polykey`` call it (one viper-to-viper call per 64-byte block). They
  take the state as a plain object (``sto``) and cast it, so that the call
  passes the array itself rather than its address as an integer, which could
  be a heap integer on a 32-bit port. Unrolling the XOR and a second copy of
  the rounds was no faster within noise and cost 5.5 KB of native code.
- ``ps``: 32 words. 0..9 h, 10..19 r, 20..27 s as 16-bit words; 28 = message
  offset, 29 = message length, 30 = mode bits (see ``poly_update``),
  31 = AD length. The tag sits right after the message, at offset
  ps[28] + ps[29], in the AEAD and in plain Poly1305 alike.
- Multi-byte values are assembled from single bytes, so nothing depends on the
  machine's byte order.
"""

import micropython

'''


def gen_setkey():
    L = ["@micropython.viper", "def chacha_setkey(st: ptr32, key: ptr8):",
         '    """st[0..3] = "expand 32-byte k", st[4..11] = the 32-byte key."""']
    consts = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    for i, c in enumerate(consts):
        L.append(f"    st[{i}] = (uint(0x{c >> 16:04X}) << 16) | 0x{c & 0xFFFF:04X}")
    for i in range(8):
        b = 4 * i
        L.append(f"    st[{4 + i}] = (uint(key[{b + 3}]) << 24) | (key[{b + 2}] << 16) | (key[{b + 1}] << 8) | key[{b}]")
    return L


def qr(a, b, c, d):
    def rot(v, n):
        return [f"        {v} = (({v} << {n}) & M) | ({v} >> {32 - n})"]
    L = []
    L.append(f"        x{a} = (x{a} + x{b}) & M")
    L.append(f"        x{d} ^= x{a}")
    L += rot(f"x{d}", 16)
    L.append(f"        x{c} = (x{c} + x{d}) & M")
    L.append(f"        x{b} ^= x{c}")
    L += rot(f"x{b}", 12)
    L.append(f"        x{a} = (x{a} + x{b}) & M")
    L.append(f"        x{d} ^= x{a}")
    L += rot(f"x{d}", 8)
    L.append(f"        x{c} = (x{c} + x{d}) & M")
    L.append(f"        x{b} ^= x{c}")
    L += rot(f"x{b}", 7)
    return L


def rounds(indent):
    body = []
    for a, b, c, d in [(0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                       (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)]:
        body += qr(a, b, c, d)
    return [" " * (indent - 8) + x for x in body]


def gen_block():
    L = ["@micropython.viper", "def chacha_block(st: ptr32):",
         '    """st[32..47] = the ChaCha20 block (RFC 8439 section 2.3) for the state',
         '    st[0..15]; then st[12] (the block counter) += 1."""',
         "    M = (uint(0xFFFF) << 16) | 0xFFFF"]
    for i in range(16):
        L.append(f"    x{i} = uint(st[{i}])")
    L.append("    for _ in range(10):")
    L += rounds(8)
    for i in range(16):
        L.append(f"    st[{32 + i}] = (x{i} + uint(st[{i}])) & M")
    L.append("    st[12] = (uint(st[12]) + 1) & M")
    return L


def gen_polykey():
    L = ["@micropython.viper", "def chacha_polykey(sto, ps: ptr32):",
         '    """RFC 8439 section 2.6: the Poly1305 key is the first 32 bytes of',
         '    ChaCha20 block 0; set r (clamped, 13-bit limbs), s and h = 0 in ps',
         '    straight from the block words. The nonce words st[13..15] come from',
         '    the six 16-bit pieces st[20..25]. Leaves the block counter at 1."""',
         "    st = ptr32(sto)",
         "    st[12] = 0",
         "    st[13] = (uint(st[21]) << 16) | st[20]",
         "    st[14] = (uint(st[23]) << 16) | st[22]",
         "    st[15] = (uint(st[25]) << 16) | st[24]",
         "    chacha_block(sto)"]
    clamp = ["0x0FFFFFFF", "0x0FFFFFFC", "0x0FFFFFFC", "0x0FFFFFFC"]
    for i in range(8):
        e = f"uint(st[{32 + i}])"
        if i < 4:
            e = f"{e} & {clamp[i]}"
        L.append(f"    x{i} = {e}")
    for k in range(8):
        w = f"x{k // 2}"
        L.append(f"    t{k} = {w} & 0xFFFF" if k % 2 == 0 else f"    t{k} = {w} >> 16")
    for i in range(10):
        L.append(f"    ps[{10 + i}] = " + limb_from_words(i, lambda k: f"t{k}"))
        L.append(f"    ps[{i}] = 0")
    for k in range(8):
        w = f"x{4 + k // 2}"
        L.append(f"    ps[{20 + k}] = {w} & 0xFFFF" if k % 2 == 0 else f"    ps[{20 + k}] = {w} >> 16")
    return L


def gen_xor():
    L = ["@micropython.viper", "def chacha_xor(sto, src: ptr8, dst: ptr8):",
         '    """dst[st[17]:][:n] = src[st[16]:][:n] ^ keystream, n = st[18], starting',
         '    at block counter st[12], which ends one past the last block used.',
         '    src and dst may be the same buffer at the same offset."""',
         "    st = ptr32(sto)",
         "    so = int(st[16])",
         "    do = int(st[17])",
         "    n = int(st[18])",
         "    while n > 0:",
         "        chacha_block(sto)",
         "        if n >= 64:",
         "            for w in range(16):",
         "                x = uint(st[32 + w])",
         "                o = w << 2",
         "                dst[do + o] = src[so + o] ^ (x & 0xFF)",
         "                dst[do + o + 1] = src[so + o + 1] ^ ((x >> 8) & 0xFF)",
         "                dst[do + o + 2] = src[so + o + 2] ^ ((x >> 16) & 0xFF)",
         "                dst[do + o + 3] = src[so + o + 3] ^ ((x >> 24) & 0xFF)",
         "            so += 64",
         "            do += 64",
         "            n -= 64",
         "        else:",
         "            for i in range(n):",
         "                dst[do + i] = src[so + i] ^ ((uint(st[32 + (i >> 2)]) >> ((i & 3) << 3)) & 0xFF)",
         "            n = 0"]
    return L


def limb_from_words(i, w):
    """Expression for 13-bit limb i of a 128-bit value given as 16-bit word
    names w(k)."""
    lo = 13 * i
    k = lo // 16
    sh = lo - 16 * k
    parts = []
    parts.append(f"({w(k)} >> {sh})" if sh else w(k))
    if sh + 13 > 16 and k + 1 < 8:
        parts.append(f"({w(k + 1)} << {16 - sh})")
    return "(" + " | ".join(parts) + ") & 0x1FFF"


def column_schedule():
    """For each output column i, the list of (j, coef) terms and after which
    term to split; returns code lines and the carry bound out of column 9."""
    L = []
    c_in = 0
    for i in range(10):
        terms = []
        for j in range(10):
            if j <= i:
                terms.append((j, f"r{i - j}", R_MAX[i - j]))
            else:
                terms.append((j, f"s{i + 10 - j}", 5 * R_MAX[i + 10 - j]))
        bound = c_in
        c_acc = 0
        first = True
        for j, name, rmax in terms:
            tmax = H_MAX * rmax
            if bound + tmax > LIMIT:
                L.append(f"            c += d >> 13")
                L.append(f"            d &= 0x1FFF")
                c_acc += bound >> 13
                bound = 0x1FFF
            if first:
                L.append(f"            d = c + h{j} * {name}")
                L.append("            c = 0")
                first = False
            else:
                L.append(f"            d += h{j} * {name}")
            bound += tmax
            assert bound <= LIMIT
        c_out = c_acc + (bound >> 13)
        L.append("            c += d >> 13")
        L.append(f"            g{i} = d & 0x1FFF")
        c_in = c_out
    return L, c_in


def gen_update():
    L = ["@micropython.viper", "def poly_update(ps: ptr32, ad: ptr8, m: ptr8, blk: ptr8) -> int:",
         '    """Absorb ad[:ps[31]], then m[ps[28]:][:ps[29]], into h. Mode bits in',
         '    ps[30]: 1 = zero-pad each of the two to a whole block (AEAD, RFC 8439',
         '    section 2.8), else append 0x01 without the high bit (plain Poly1305,',
         '    with ps[31] = 0); 2 = then absorb le64(ps[31]) || le64(ps[29]) (the',
         '    AEAD length block); 4 = then finish: write the tag to the 16 bytes',
         '    after the message, m[ps[28] + ps[29]:], or with 8 as well, compare it',
         '    with those bytes instead and return the OR of the byte XORs (0 iff',
         '    equal; no early exit, so the time does not depend on where they',
         '    differ). Returns 0 otherwise. blk: 16 bytes of scratch."""',
         "    mo = int(ps[28])",
         "    mn = int(ps[29])",
         "    an = int(ps[31])",
         "    mode = int(ps[30])",
         "    lens = mode & 2",
         "    src = ad",
         "    o = 0",
         "    n = an",
         "    on_m = 0  # 1 once the AD is done and m is being absorbed"]
    for i in range(10):
        L.append(f"    h{i} = int(ps[{i}])")
        L.append(f"    r{i} = int(ps[{10 + i}])")
    for i in range(1, 10):
        L.append(f"    s{i} = r{i} * 5")
    L += ["    while True:",
          "        p = src",
          "        hibit = 1 << 11  # 2**128 = bit 11 of limb 9 (9 * 13 + 11 = 128)",
          "        if n >= 16:",
          "            n -= 16",
          "        elif n > 0:",
          "            for i in range(16):",
          "                blk[i] = 0",
          "            for i in range(n):",
          "                blk[i] = src[o + i]",
          "            if (mode & 1) == 0:",
          "                blk[n] = 1",
          "                hibit = 0",
          "            p = blk",
          "            o = 0",
          "            n = 0",
          "        elif on_m == 0:",
          "            src = m",
          "            o = mo",
          "            n = mn",
          "            on_m = 1",
          "            continue",
          "        elif lens:",
          "            for i in range(16):",
          "                blk[i] = 0",
          "            for i in range(4):",
          "                blk[i] = (an >> (i << 3)) & 0xFF",
          "                blk[8 + i] = (mn >> (i << 3)) & 0xFF",
          "            p = blk",
          "            o = 0",
          "            lens = 0",
          "        else:",
          "            break"]
    for k in range(8):
        L.append(f"        t{k} = p[o + {2 * k}] | (p[o + {2 * k + 1}] << 8)")
    for i in range(10):
        e = limb_from_words(i, lambda k: f"t{k}")
        if i == 9:
            e = f"({e}) | hibit"
        L.append(f"        h{i} += {e}")
    L.append("        o += 16")
    L.append("        c = 0")
    cols, c9 = column_schedule()
    L += [x[4:] for x in cols]
    # fold the carry out of column 9 (2**130 = 5 mod p) into limb 0
    L.append("        c = c * 5 + g0")
    L.append("        h0 = c & 0x1FFF")
    L.append("        h1 = g1 + (c >> 13)")
    for i in range(2, 10):
        L.append(f"        h{i} = g{i}")
    assert 5 * c9 + 8191 <= LIMIT
    assert ((5 * c9 + 8191) >> 13) + 8191 <= H_AFTER_MUL, c9
    for i in range(10):
        L.append(f"    ps[{i}] = h{i}")
    L.append("    if mode & 4:")
    L += ["    " + x for x in finish_lines()]
    L.append("    return 0")
    return L


def finish_lines():
    """m[mo + mn:][:16] = (h mod p + s) mod 2**128 from locals h0..h9, h
    reduced in constant time (select h or h - p with a mask)."""
    L = ["    o = mo + mn"]
    L.append("    c = h1 >> 13")
    L.append("    h1 &= 0x1FFF")
    for i in range(2, 10):
        L += [f"    h{i} += c", f"    c = h{i} >> 13", f"    h{i} &= 0x1FFF"]
    L += ["    h0 += c * 5", "    c = h0 >> 13", "    h0 &= 0x1FFF"]
    for i in range(1, 10):
        L += [f"    h{i} += c"]
        if i < 9:
            L += [f"    c = h{i} >> 13", f"    h{i} &= 0x1FFF"]
    L += ["    # now h = sum(h[i] << 13 i) < 2**130 + 2**117 < 2 p, limbs 0..8 < 2**13",
          "    # and limb 9 <= 2**13; g = h + 5 - 2**130 = h - p"]
    L.append("    g0 = h0 + 5")
    L.append("    c = g0 >> 13")
    L.append("    g0 &= 0x1FFF")
    for i in range(1, 9):
        L += [f"    g{i} = h{i} + c", f"    c = g{i} >> 13", f"    g{i} &= 0x1FFF"]
    L += ["    g9 = h9 + c - (1 << 13)",
          "    # h < p  <=>  g9 < 0: mh = -1 selects h, else 0 selects g",
          "    mh = g9 >> 30",
          "    mg = -1 - mh"]
    for i in range(10):
        L.append(f"    h{i} = (h{i} & mh) | (g{i} & mg)")
    # pack 13-bit limbs into 16-bit words w0..w7
    for k in range(8):
        parts = []
        for i in range(10):
            lo = 13 * i - 16 * k
            if -13 < lo < 16:
                parts.append(f"(h{i} << {lo})" if lo > 0 else (f"(h{i} >> {-lo})" if lo < 0 else f"h{i}"))
        L.append(f"    w{k} = (" + " | ".join(parts) + ") & 0xFFFF")
    # tag = (h + s) mod 2**128, 16 bits at a time with the carry in f
    L.append("    f = 0")
    for k in range(8):
        L += [f"    f += w{k} + ps[{20 + k}]",
              f"    w{k} = f & 0xFFFF",
              "    f >>= 16"]
    L.append("    if mode & 8:")
    L.append("        acc = 0")
    for k in range(8):
        L += [f"        acc |= m[o + {2 * k}] ^ (w{k} & 0xFF)",
              f"        acc |= m[o + {2 * k + 1}] ^ (w{k} >> 8)"]
    L.append("        return acc")
    for k in range(8):
        L += [f"    m[o + {2 * k}] = w{k} & 0xFF",
              f"    m[o + {2 * k + 1}] = w{k} >> 8"]
    return L


def generate():
    parts = [gen_setkey(), gen_block(), gen_polykey(), gen_xor(), gen_update()]
    body = "\n\n\n".join("\n".join(p) for p in parts)
    hdr = HEADER.format(h_max=H_MAX, r_max=R_MAX, h_after=H_AFTER_MUL)
    return hdr + "\n" + body + "\n"


def target_path():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(here), "_chachapoly_viper.py")


if __name__ == "__main__":
    with open(target_path(), "w") as f:
        f.write(generate())
