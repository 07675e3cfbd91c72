"""Viper ChaCha20 and Poly1305 (RFC 8439) on preallocated arrays (generated
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
  are <= 16894 when a product starts, r limbs are at most [8191, 8191, 7939, 8191, 255, 8190, 8191, 8065, 8191, 127]
  after clamping, and 5 * r <= 5 * 8191 = 40_955. A column of the product is
  the sum of ten terms h[j] * r' (r' = r or 5 * r); the generator splits a
  column's running sum (carrying its high part into the next column) before
  it could pass 2**31 - 1, so every signed intermediate stays below 2**31 and
  the arithmetic shift is exact. After the final carry every h limb is < 2**13
  except limb 1, which is <= 8703.

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


@micropython.viper
def chacha_setkey(st: ptr32, key: ptr8):
    """st[0..3] = "expand 32-byte k", st[4..11] = the 32-byte key."""
    st[0] = (uint(0x6170) << 16) | 0x7865
    st[1] = (uint(0x3320) << 16) | 0x646E
    st[2] = (uint(0x7962) << 16) | 0x2D32
    st[3] = (uint(0x6B20) << 16) | 0x6574
    st[4] = (uint(key[3]) << 24) | (key[2] << 16) | (key[1] << 8) | key[0]
    st[5] = (uint(key[7]) << 24) | (key[6] << 16) | (key[5] << 8) | key[4]
    st[6] = (uint(key[11]) << 24) | (key[10] << 16) | (key[9] << 8) | key[8]
    st[7] = (uint(key[15]) << 24) | (key[14] << 16) | (key[13] << 8) | key[12]
    st[8] = (uint(key[19]) << 24) | (key[18] << 16) | (key[17] << 8) | key[16]
    st[9] = (uint(key[23]) << 24) | (key[22] << 16) | (key[21] << 8) | key[20]
    st[10] = (uint(key[27]) << 24) | (key[26] << 16) | (key[25] << 8) | key[24]
    st[11] = (uint(key[31]) << 24) | (key[30] << 16) | (key[29] << 8) | key[28]


@micropython.viper
def chacha_block(st: ptr32):
    """st[32..47] = the ChaCha20 block (RFC 8439 section 2.3) for the state
    st[0..15]; then st[12] (the block counter) += 1."""
    M = (uint(0xFFFF) << 16) | 0xFFFF
    x0 = uint(st[0])
    x1 = uint(st[1])
    x2 = uint(st[2])
    x3 = uint(st[3])
    x4 = uint(st[4])
    x5 = uint(st[5])
    x6 = uint(st[6])
    x7 = uint(st[7])
    x8 = uint(st[8])
    x9 = uint(st[9])
    x10 = uint(st[10])
    x11 = uint(st[11])
    x12 = uint(st[12])
    x13 = uint(st[13])
    x14 = uint(st[14])
    x15 = uint(st[15])
    for _ in range(10):
        x0 = (x0 + x4) & M
        x12 ^= x0
        x12 = ((x12 << 16) & M) | (x12 >> 16)
        x8 = (x8 + x12) & M
        x4 ^= x8
        x4 = ((x4 << 12) & M) | (x4 >> 20)
        x0 = (x0 + x4) & M
        x12 ^= x0
        x12 = ((x12 << 8) & M) | (x12 >> 24)
        x8 = (x8 + x12) & M
        x4 ^= x8
        x4 = ((x4 << 7) & M) | (x4 >> 25)
        x1 = (x1 + x5) & M
        x13 ^= x1
        x13 = ((x13 << 16) & M) | (x13 >> 16)
        x9 = (x9 + x13) & M
        x5 ^= x9
        x5 = ((x5 << 12) & M) | (x5 >> 20)
        x1 = (x1 + x5) & M
        x13 ^= x1
        x13 = ((x13 << 8) & M) | (x13 >> 24)
        x9 = (x9 + x13) & M
        x5 ^= x9
        x5 = ((x5 << 7) & M) | (x5 >> 25)
        x2 = (x2 + x6) & M
        x14 ^= x2
        x14 = ((x14 << 16) & M) | (x14 >> 16)
        x10 = (x10 + x14) & M
        x6 ^= x10
        x6 = ((x6 << 12) & M) | (x6 >> 20)
        x2 = (x2 + x6) & M
        x14 ^= x2
        x14 = ((x14 << 8) & M) | (x14 >> 24)
        x10 = (x10 + x14) & M
        x6 ^= x10
        x6 = ((x6 << 7) & M) | (x6 >> 25)
        x3 = (x3 + x7) & M
        x15 ^= x3
        x15 = ((x15 << 16) & M) | (x15 >> 16)
        x11 = (x11 + x15) & M
        x7 ^= x11
        x7 = ((x7 << 12) & M) | (x7 >> 20)
        x3 = (x3 + x7) & M
        x15 ^= x3
        x15 = ((x15 << 8) & M) | (x15 >> 24)
        x11 = (x11 + x15) & M
        x7 ^= x11
        x7 = ((x7 << 7) & M) | (x7 >> 25)
        x0 = (x0 + x5) & M
        x15 ^= x0
        x15 = ((x15 << 16) & M) | (x15 >> 16)
        x10 = (x10 + x15) & M
        x5 ^= x10
        x5 = ((x5 << 12) & M) | (x5 >> 20)
        x0 = (x0 + x5) & M
        x15 ^= x0
        x15 = ((x15 << 8) & M) | (x15 >> 24)
        x10 = (x10 + x15) & M
        x5 ^= x10
        x5 = ((x5 << 7) & M) | (x5 >> 25)
        x1 = (x1 + x6) & M
        x12 ^= x1
        x12 = ((x12 << 16) & M) | (x12 >> 16)
        x11 = (x11 + x12) & M
        x6 ^= x11
        x6 = ((x6 << 12) & M) | (x6 >> 20)
        x1 = (x1 + x6) & M
        x12 ^= x1
        x12 = ((x12 << 8) & M) | (x12 >> 24)
        x11 = (x11 + x12) & M
        x6 ^= x11
        x6 = ((x6 << 7) & M) | (x6 >> 25)
        x2 = (x2 + x7) & M
        x13 ^= x2
        x13 = ((x13 << 16) & M) | (x13 >> 16)
        x8 = (x8 + x13) & M
        x7 ^= x8
        x7 = ((x7 << 12) & M) | (x7 >> 20)
        x2 = (x2 + x7) & M
        x13 ^= x2
        x13 = ((x13 << 8) & M) | (x13 >> 24)
        x8 = (x8 + x13) & M
        x7 ^= x8
        x7 = ((x7 << 7) & M) | (x7 >> 25)
        x3 = (x3 + x4) & M
        x14 ^= x3
        x14 = ((x14 << 16) & M) | (x14 >> 16)
        x9 = (x9 + x14) & M
        x4 ^= x9
        x4 = ((x4 << 12) & M) | (x4 >> 20)
        x3 = (x3 + x4) & M
        x14 ^= x3
        x14 = ((x14 << 8) & M) | (x14 >> 24)
        x9 = (x9 + x14) & M
        x4 ^= x9
        x4 = ((x4 << 7) & M) | (x4 >> 25)
    st[32] = (x0 + uint(st[0])) & M
    st[33] = (x1 + uint(st[1])) & M
    st[34] = (x2 + uint(st[2])) & M
    st[35] = (x3 + uint(st[3])) & M
    st[36] = (x4 + uint(st[4])) & M
    st[37] = (x5 + uint(st[5])) & M
    st[38] = (x6 + uint(st[6])) & M
    st[39] = (x7 + uint(st[7])) & M
    st[40] = (x8 + uint(st[8])) & M
    st[41] = (x9 + uint(st[9])) & M
    st[42] = (x10 + uint(st[10])) & M
    st[43] = (x11 + uint(st[11])) & M
    st[44] = (x12 + uint(st[12])) & M
    st[45] = (x13 + uint(st[13])) & M
    st[46] = (x14 + uint(st[14])) & M
    st[47] = (x15 + uint(st[15])) & M
    st[12] = (uint(st[12]) + 1) & M


@micropython.viper
def chacha_polykey(sto, ps: ptr32):
    """RFC 8439 section 2.6: the Poly1305 key is the first 32 bytes of
    ChaCha20 block 0; set r (clamped, 13-bit limbs), s and h = 0 in ps
    straight from the block words. The nonce words st[13..15] come from
    the six 16-bit pieces st[20..25]. Leaves the block counter at 1."""
    st = ptr32(sto)
    st[12] = 0
    st[13] = (uint(st[21]) << 16) | st[20]
    st[14] = (uint(st[23]) << 16) | st[22]
    st[15] = (uint(st[25]) << 16) | st[24]
    chacha_block(sto)
    x0 = uint(st[32]) & 0x0FFFFFFF
    x1 = uint(st[33]) & 0x0FFFFFFC
    x2 = uint(st[34]) & 0x0FFFFFFC
    x3 = uint(st[35]) & 0x0FFFFFFC
    x4 = uint(st[36])
    x5 = uint(st[37])
    x6 = uint(st[38])
    x7 = uint(st[39])
    t0 = x0 & 0xFFFF
    t1 = x0 >> 16
    t2 = x1 & 0xFFFF
    t3 = x1 >> 16
    t4 = x2 & 0xFFFF
    t5 = x2 >> 16
    t6 = x3 & 0xFFFF
    t7 = x3 >> 16
    ps[10] = (t0) & 0x1FFF
    ps[0] = 0
    ps[11] = ((t0 >> 13) | (t1 << 3)) & 0x1FFF
    ps[1] = 0
    ps[12] = ((t1 >> 10) | (t2 << 6)) & 0x1FFF
    ps[2] = 0
    ps[13] = ((t2 >> 7) | (t3 << 9)) & 0x1FFF
    ps[3] = 0
    ps[14] = ((t3 >> 4) | (t4 << 12)) & 0x1FFF
    ps[4] = 0
    ps[15] = ((t4 >> 1)) & 0x1FFF
    ps[5] = 0
    ps[16] = ((t4 >> 14) | (t5 << 2)) & 0x1FFF
    ps[6] = 0
    ps[17] = ((t5 >> 11) | (t6 << 5)) & 0x1FFF
    ps[7] = 0
    ps[18] = ((t6 >> 8) | (t7 << 8)) & 0x1FFF
    ps[8] = 0
    ps[19] = ((t7 >> 5)) & 0x1FFF
    ps[9] = 0
    ps[20] = x4 & 0xFFFF
    ps[21] = x4 >> 16
    ps[22] = x5 & 0xFFFF
    ps[23] = x5 >> 16
    ps[24] = x6 & 0xFFFF
    ps[25] = x6 >> 16
    ps[26] = x7 & 0xFFFF
    ps[27] = x7 >> 16


@micropython.viper
def chacha_xor(sto, src: ptr8, dst: ptr8):
    """dst[st[17]:][:n] = src[st[16]:][:n] ^ keystream, n = st[18], starting
    at block counter st[12], which ends one past the last block used.
    src and dst may be the same buffer at the same offset."""
    st = ptr32(sto)
    so = int(st[16])
    do = int(st[17])
    n = int(st[18])
    while n > 0:
        chacha_block(sto)
        if n >= 64:
            for w in range(16):
                x = uint(st[32 + w])
                o = w << 2
                dst[do + o] = src[so + o] ^ (x & 0xFF)
                dst[do + o + 1] = src[so + o + 1] ^ ((x >> 8) & 0xFF)
                dst[do + o + 2] = src[so + o + 2] ^ ((x >> 16) & 0xFF)
                dst[do + o + 3] = src[so + o + 3] ^ ((x >> 24) & 0xFF)
            so += 64
            do += 64
            n -= 64
        else:
            for i in range(n):
                dst[do + i] = src[so + i] ^ ((uint(st[32 + (i >> 2)]) >> ((i & 3) << 3)) & 0xFF)
            n = 0


@micropython.viper
def poly_update(ps: ptr32, ad: ptr8, m: ptr8, blk: ptr8) -> int:
    """Absorb ad[:ps[31]], then m[ps[28]:][:ps[29]], into h. Mode bits in
    ps[30]: 1 = zero-pad each of the two to a whole block (AEAD, RFC 8439
    section 2.8), else append 0x01 without the high bit (plain Poly1305,
    with ps[31] = 0); 2 = then absorb le64(ps[31]) || le64(ps[29]) (the
    AEAD length block); 4 = then finish: write the tag to the 16 bytes
    after the message, m[ps[28] + ps[29]:], or with 8 as well, compare it
    with those bytes instead and return the OR of the byte XORs (0 iff
    equal; no early exit, so the time does not depend on where they
    differ). Returns 0 otherwise. blk: 16 bytes of scratch."""
    mo = int(ps[28])
    mn = int(ps[29])
    an = int(ps[31])
    mode = int(ps[30])
    lens = mode & 2
    src = ad
    o = 0
    n = an
    on_m = 0  # 1 once the AD is done and m is being absorbed
    h0 = int(ps[0])
    r0 = int(ps[10])
    h1 = int(ps[1])
    r1 = int(ps[11])
    h2 = int(ps[2])
    r2 = int(ps[12])
    h3 = int(ps[3])
    r3 = int(ps[13])
    h4 = int(ps[4])
    r4 = int(ps[14])
    h5 = int(ps[5])
    r5 = int(ps[15])
    h6 = int(ps[6])
    r6 = int(ps[16])
    h7 = int(ps[7])
    r7 = int(ps[17])
    h8 = int(ps[8])
    r8 = int(ps[18])
    h9 = int(ps[9])
    r9 = int(ps[19])
    s1 = r1 * 5
    s2 = r2 * 5
    s3 = r3 * 5
    s4 = r4 * 5
    s5 = r5 * 5
    s6 = r6 * 5
    s7 = r7 * 5
    s8 = r8 * 5
    s9 = r9 * 5
    while True:
        p = src
        hibit = 1 << 11  # 2**128 = bit 11 of limb 9 (9 * 13 + 11 = 128)
        if n >= 16:
            n -= 16
        elif n > 0:
            for i in range(16):
                blk[i] = 0
            for i in range(n):
                blk[i] = src[o + i]
            if (mode & 1) == 0:
                blk[n] = 1
                hibit = 0
            p = blk
            o = 0
            n = 0
        elif on_m == 0:
            src = m
            o = mo
            n = mn
            on_m = 1
            continue
        elif lens:
            for i in range(16):
                blk[i] = 0
            for i in range(4):
                blk[i] = (an >> (i << 3)) & 0xFF
                blk[8 + i] = (mn >> (i << 3)) & 0xFF
            p = blk
            o = 0
            lens = 0
        else:
            break
        t0 = p[o + 0] | (p[o + 1] << 8)
        t1 = p[o + 2] | (p[o + 3] << 8)
        t2 = p[o + 4] | (p[o + 5] << 8)
        t3 = p[o + 6] | (p[o + 7] << 8)
        t4 = p[o + 8] | (p[o + 9] << 8)
        t5 = p[o + 10] | (p[o + 11] << 8)
        t6 = p[o + 12] | (p[o + 13] << 8)
        t7 = p[o + 14] | (p[o + 15] << 8)
        h0 += (t0) & 0x1FFF
        h1 += ((t0 >> 13) | (t1 << 3)) & 0x1FFF
        h2 += ((t1 >> 10) | (t2 << 6)) & 0x1FFF
        h3 += ((t2 >> 7) | (t3 << 9)) & 0x1FFF
        h4 += ((t3 >> 4) | (t4 << 12)) & 0x1FFF
        h5 += ((t4 >> 1)) & 0x1FFF
        h6 += ((t4 >> 14) | (t5 << 2)) & 0x1FFF
        h7 += ((t5 >> 11) | (t6 << 5)) & 0x1FFF
        h8 += ((t6 >> 8) | (t7 << 8)) & 0x1FFF
        h9 += (((t7 >> 5)) & 0x1FFF) | hibit
        o += 16
        c = 0
        d = c + h0 * r0
        c = 0
        d += h1 * s9
        d += h2 * s8
        d += h3 * s7
        c += d >> 13
        d &= 0x1FFF
        d += h4 * s6
        d += h5 * s5
        d += h6 * s4
        d += h7 * s3
        c += d >> 13
        d &= 0x1FFF
        d += h8 * s2
        d += h9 * s1
        c += d >> 13
        g0 = d & 0x1FFF
        d = c + h0 * r1
        c = 0
        d += h1 * r0
        d += h2 * s9
        d += h3 * s8
        d += h4 * s7
        c += d >> 13
        d &= 0x1FFF
        d += h5 * s6
        d += h6 * s5
        d += h7 * s4
        d += h8 * s3
        c += d >> 13
        d &= 0x1FFF
        d += h9 * s2
        c += d >> 13
        g1 = d & 0x1FFF
        d = c + h0 * r2
        c = 0
        d += h1 * r1
        d += h2 * r0
        d += h3 * s9
        d += h4 * s8
        d += h5 * s7
        c += d >> 13
        d &= 0x1FFF
        d += h6 * s6
        d += h7 * s5
        d += h8 * s4
        d += h9 * s3
        c += d >> 13
        g2 = d & 0x1FFF
        d = c + h0 * r3
        c = 0
        d += h1 * r2
        d += h2 * r1
        d += h3 * r0
        d += h4 * s9
        d += h5 * s8
        d += h6 * s7
        c += d >> 13
        d &= 0x1FFF
        d += h7 * s6
        d += h8 * s5
        d += h9 * s4
        c += d >> 13
        g3 = d & 0x1FFF
        d = c + h0 * r4
        c = 0
        d += h1 * r3
        d += h2 * r2
        d += h3 * r1
        d += h4 * r0
        d += h5 * s9
        d += h6 * s8
        d += h7 * s7
        c += d >> 13
        d &= 0x1FFF
        d += h8 * s6
        d += h9 * s5
        c += d >> 13
        g4 = d & 0x1FFF
        d = c + h0 * r5
        c = 0
        d += h1 * r4
        d += h2 * r3
        d += h3 * r2
        d += h4 * r1
        d += h5 * r0
        d += h6 * s9
        d += h7 * s8
        d += h8 * s7
        c += d >> 13
        d &= 0x1FFF
        d += h9 * s6
        c += d >> 13
        g5 = d & 0x1FFF
        d = c + h0 * r6
        c = 0
        d += h1 * r5
        d += h2 * r4
        d += h3 * r3
        d += h4 * r2
        d += h5 * r1
        d += h6 * r0
        d += h7 * s9
        d += h8 * s8
        c += d >> 13
        d &= 0x1FFF
        d += h9 * s7
        c += d >> 13
        g6 = d & 0x1FFF
        d = c + h0 * r7
        c = 0
        d += h1 * r6
        d += h2 * r5
        d += h3 * r4
        d += h4 * r3
        d += h5 * r2
        d += h6 * r1
        d += h7 * r0
        d += h8 * s9
        d += h9 * s8
        c += d >> 13
        g7 = d & 0x1FFF
        d = c + h0 * r8
        c = 0
        d += h1 * r7
        d += h2 * r6
        d += h3 * r5
        d += h4 * r4
        d += h5 * r3
        d += h6 * r2
        d += h7 * r1
        d += h8 * r0
        d += h9 * s9
        c += d >> 13
        g8 = d & 0x1FFF
        d = c + h0 * r9
        c = 0
        d += h1 * r8
        d += h2 * r7
        d += h3 * r6
        d += h4 * r5
        d += h5 * r4
        d += h6 * r3
        d += h7 * r2
        d += h8 * r1
        d += h9 * r0
        c += d >> 13
        g9 = d & 0x1FFF
        c = c * 5 + g0
        h0 = c & 0x1FFF
        h1 = g1 + (c >> 13)
        h2 = g2
        h3 = g3
        h4 = g4
        h5 = g5
        h6 = g6
        h7 = g7
        h8 = g8
        h9 = g9
    ps[0] = h0
    ps[1] = h1
    ps[2] = h2
    ps[3] = h3
    ps[4] = h4
    ps[5] = h5
    ps[6] = h6
    ps[7] = h7
    ps[8] = h8
    ps[9] = h9
    if mode & 4:
        o = mo + mn
        c = h1 >> 13
        h1 &= 0x1FFF
        h2 += c
        c = h2 >> 13
        h2 &= 0x1FFF
        h3 += c
        c = h3 >> 13
        h3 &= 0x1FFF
        h4 += c
        c = h4 >> 13
        h4 &= 0x1FFF
        h5 += c
        c = h5 >> 13
        h5 &= 0x1FFF
        h6 += c
        c = h6 >> 13
        h6 &= 0x1FFF
        h7 += c
        c = h7 >> 13
        h7 &= 0x1FFF
        h8 += c
        c = h8 >> 13
        h8 &= 0x1FFF
        h9 += c
        c = h9 >> 13
        h9 &= 0x1FFF
        h0 += c * 5
        c = h0 >> 13
        h0 &= 0x1FFF
        h1 += c
        c = h1 >> 13
        h1 &= 0x1FFF
        h2 += c
        c = h2 >> 13
        h2 &= 0x1FFF
        h3 += c
        c = h3 >> 13
        h3 &= 0x1FFF
        h4 += c
        c = h4 >> 13
        h4 &= 0x1FFF
        h5 += c
        c = h5 >> 13
        h5 &= 0x1FFF
        h6 += c
        c = h6 >> 13
        h6 &= 0x1FFF
        h7 += c
        c = h7 >> 13
        h7 &= 0x1FFF
        h8 += c
        c = h8 >> 13
        h8 &= 0x1FFF
        h9 += c
        # now h = sum(h[i] << 13 i) < 2**130 + 2**117 < 2 p, limbs 0..8 < 2**13
        # and limb 9 <= 2**13; g = h + 5 - 2**130 = h - p
        g0 = h0 + 5
        c = g0 >> 13
        g0 &= 0x1FFF
        g1 = h1 + c
        c = g1 >> 13
        g1 &= 0x1FFF
        g2 = h2 + c
        c = g2 >> 13
        g2 &= 0x1FFF
        g3 = h3 + c
        c = g3 >> 13
        g3 &= 0x1FFF
        g4 = h4 + c
        c = g4 >> 13
        g4 &= 0x1FFF
        g5 = h5 + c
        c = g5 >> 13
        g5 &= 0x1FFF
        g6 = h6 + c
        c = g6 >> 13
        g6 &= 0x1FFF
        g7 = h7 + c
        c = g7 >> 13
        g7 &= 0x1FFF
        g8 = h8 + c
        c = g8 >> 13
        g8 &= 0x1FFF
        g9 = h9 + c - (1 << 13)
        # h < p  <=>  g9 < 0: mh = -1 selects h, else 0 selects g
        mh = g9 >> 30
        mg = -1 - mh
        h0 = (h0 & mh) | (g0 & mg)
        h1 = (h1 & mh) | (g1 & mg)
        h2 = (h2 & mh) | (g2 & mg)
        h3 = (h3 & mh) | (g3 & mg)
        h4 = (h4 & mh) | (g4 & mg)
        h5 = (h5 & mh) | (g5 & mg)
        h6 = (h6 & mh) | (g6 & mg)
        h7 = (h7 & mh) | (g7 & mg)
        h8 = (h8 & mh) | (g8 & mg)
        h9 = (h9 & mh) | (g9 & mg)
        w0 = (h0 | (h1 << 13)) & 0xFFFF
        w1 = ((h1 >> 3) | (h2 << 10)) & 0xFFFF
        w2 = ((h2 >> 6) | (h3 << 7)) & 0xFFFF
        w3 = ((h3 >> 9) | (h4 << 4)) & 0xFFFF
        w4 = ((h4 >> 12) | (h5 << 1) | (h6 << 14)) & 0xFFFF
        w5 = ((h6 >> 2) | (h7 << 11)) & 0xFFFF
        w6 = ((h7 >> 5) | (h8 << 8)) & 0xFFFF
        w7 = ((h8 >> 8) | (h9 << 5)) & 0xFFFF
        f = 0
        f += w0 + ps[20]
        w0 = f & 0xFFFF
        f >>= 16
        f += w1 + ps[21]
        w1 = f & 0xFFFF
        f >>= 16
        f += w2 + ps[22]
        w2 = f & 0xFFFF
        f >>= 16
        f += w3 + ps[23]
        w3 = f & 0xFFFF
        f >>= 16
        f += w4 + ps[24]
        w4 = f & 0xFFFF
        f >>= 16
        f += w5 + ps[25]
        w5 = f & 0xFFFF
        f >>= 16
        f += w6 + ps[26]
        w6 = f & 0xFFFF
        f >>= 16
        f += w7 + ps[27]
        w7 = f & 0xFFFF
        f >>= 16
        if mode & 8:
            acc = 0
            acc |= m[o + 0] ^ (w0 & 0xFF)
            acc |= m[o + 1] ^ (w0 >> 8)
            acc |= m[o + 2] ^ (w1 & 0xFF)
            acc |= m[o + 3] ^ (w1 >> 8)
            acc |= m[o + 4] ^ (w2 & 0xFF)
            acc |= m[o + 5] ^ (w2 >> 8)
            acc |= m[o + 6] ^ (w3 & 0xFF)
            acc |= m[o + 7] ^ (w3 >> 8)
            acc |= m[o + 8] ^ (w4 & 0xFF)
            acc |= m[o + 9] ^ (w4 >> 8)
            acc |= m[o + 10] ^ (w5 & 0xFF)
            acc |= m[o + 11] ^ (w5 >> 8)
            acc |= m[o + 12] ^ (w6 & 0xFF)
            acc |= m[o + 13] ^ (w6 >> 8)
            acc |= m[o + 14] ^ (w7 & 0xFF)
            acc |= m[o + 15] ^ (w7 >> 8)
            return acc
        m[o + 0] = w0 & 0xFF
        m[o + 1] = w0 >> 8
        m[o + 2] = w1 & 0xFF
        m[o + 3] = w1 >> 8
        m[o + 4] = w2 & 0xFF
        m[o + 5] = w2 >> 8
        m[o + 6] = w3 & 0xFF
        m[o + 7] = w3 >> 8
        m[o + 8] = w4 & 0xFF
        m[o + 9] = w4 >> 8
        m[o + 10] = w5 & 0xFF
        m[o + 11] = w5 >> 8
        m[o + 12] = w6 & 0xFF
        m[o + 13] = w6 >> 8
        m[o + 14] = w7 & 0xFF
        m[o + 15] = w7 >> 8
    return 0
