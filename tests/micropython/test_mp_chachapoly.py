"""ChaCha20-Poly1305 (micropython_port.chacha20poly1305) under the real
MicroPython unix port: RFC 8439 vectors, tag failures at every byte, zero
allocation under ``micropython.heap_lock()``, both paths, and a differential
run against ``cryptography``. The unix port (x86-64) runs the viper code; the
qemu lane (``tests/qemu/test_qemu_chachapoly_asm.py``) runs every test here
that goes through ``_mp_aead`` on the Cortex-M3's asm_thumb and viper paths.
Off the target: the inline-Thumb module is what its generator writes, and
each of its ``data()`` encodings is what GNU as assembles."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.mp_helpers import ROOT, run_mp_json

from tests.mp_vectors import SUNSCREEN, RFC8439_2_3_2, RFC8439_2_4_2, RFC8439_2_5_2, RFC8439_2_8_2, RFC8439_A_5

pytestmark = pytest.mark.micropython

PATHS = ["fast", "fallback"]

_MP_AEAD_PRELUDE = """
import json
from binascii import hexlify, unhexlify
from micropython_port import chacha20poly1305 as C
from tests import mp_primitive_hooks as T
from device.errors import AuthError
T.force_fallback_for_testing_only({fallback})
def hx(b):
    return hexlify(b).decode()
"""


def _mp_aead(path: str, body: str, timeout: float = 120) -> object:
    code = _MP_AEAD_PRELUDE.format(fallback=path == "fallback") + body
    return run_mp_json(code, timeout=timeout)


def test_rfc8439_vectors_are_the_published_ones() -> None:
    # Cross-check the transcribed vectors against an independent library.
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    k, iv, ad, pt, ct = RFC8439_2_8_2
    assert ChaCha20Poly1305(bytes.fromhex(k)).encrypt(bytes.fromhex(iv), bytes.fromhex(pt), bytes.fromhex(ad)).hex() == ct
    k, iv, ad, ct, pt = RFC8439_A_5
    assert ChaCha20Poly1305(bytes.fromhex(k)).decrypt(bytes.fromhex(iv), bytes.fromhex(ct), bytes.fromhex(ad)).hex() == pt


def test_aead_fast_path_loads_on_the_unix_port() -> None:
    assert _mp_aead("fast", "print(json.dumps(T.has_fast_path()[1]))") is True


def test_the_unix_port_chooses_viper_never_the_thumb_module() -> None:
    # x86-64 (native arch 2) never tries _chachapoly_thumb: viper runs.
    got = _mp_aead("fast", """
import sys
print(json.dumps([C.PATH, C._v.__name__, "micropython_port._chachapoly_thumb" in sys.modules]))
""")
    assert got == ["viper", "micropython_port._chachapoly_viper", False]


_GEN = ROOT / "micropython_port" / "tools" / "gen_chachapoly_thumb.py"
_THUMB = ROOT / "micropython_port" / "_chachapoly_thumb.py"


def test_the_committed_thumb_module_is_what_the_generator_writes() -> None:
    ns: dict = {"__name__": "gen", "__file__": str(_GEN)}
    exec(compile(_GEN.read_text(), str(_GEN), "exec"), ns)
    assert _THUMB.read_text() == ns["generate"]()


@pytest.mark.skipif(not shutil.which("arm-none-eabi-as"), reason="arm-none-eabi-as not installed")
def test_every_thumb_data_encoding_is_what_gnu_as_assembles(tmp_path: Path) -> None:
    pairs = sorted(set(re.findall(r"data\(2, (0x[0-9a-f]+(?:, 0x[0-9a-f]+)?)\)  # (.+)", _THUMB.read_text())))
    (tmp_path / "a.s").write_text(".syntax unified\n.thumb\n" + "".join(f"{asm}\n" for _, asm in pairs))
    r = subprocess.run(["arm-none-eabi-as", "-mcpu=cortex-m3", "-mthumb", str(tmp_path / "a.s"),
                        "-o", str(tmp_path / "a.o")], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr  # no warning either (e.g. UNPREDICTABLE)
    objcopy = shutil.which("arm-none-eabi-objcopy")
    assert objcopy
    subprocess.run([objcopy, "-O", "binary", "-j", ".text", str(tmp_path / "a.o"), str(tmp_path / "a.bin")],
                   check=True)
    want = b"".join(int(h, 16).to_bytes(2, "little") for hws, _ in pairs for h in hws.split(", "))
    assert (tmp_path / "a.bin").read_bytes() == want and len(pairs) > 250


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_3_2_block_function(path: str) -> None:
    k, ctr, iv, want = RFC8439_2_3_2
    out = _mp_aead(path, f"print(json.dumps(hx(T.chacha20_block(unhexlify('{k}'), {ctr}, unhexlify('{iv}')))))")
    assert out == want


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_4_2_chacha20_encryption(path: str) -> None:
    k, ctr, iv, want = RFC8439_2_4_2
    out = _mp_aead(
        path,
        f"print(json.dumps(hx(T.chacha20_encrypt(unhexlify('{k}'), {ctr}, unhexlify('{iv}'), unhexlify('{SUNSCREEN.hex()}')))))",
    )
    assert out == want


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_5_2_poly1305(path: str) -> None:
    k, msg, want = RFC8439_2_5_2
    out = _mp_aead(path, f"print(json.dumps(hx(T.poly1305(unhexlify('{k}'), unhexlify('{msg}')))))")
    assert out == want


def _poly1305_edge_cases() -> list[tuple[bytes, bytes]]:
    """Keys and messages shaped like RFC 8439 appendix A.3 #5-#11 (h or
    h + s next to p or 2**128, carries through every limb), plus random ones;
    the expected tags come from ``cryptography``."""
    ff16 = b"\xff" * 16

    def key(r: bytes, s: bytes = b"") -> bytes:
        return r.ljust(16, b"\0") + s.ljust(16, b"\0")

    cases = [
        (key(b"\x02"), ff16),  # A.3 #5: h = p + 3 before the final reduction
        (key(b"\x02", ff16), b"\x02" + bytes(15)),  # #6: s + h wraps 2**128
        (key(b"\x01"), ff16 + b"\xf0" + b"\xff" * 15 + b"\x11" + bytes(15)),  # #7
        (key(b"\x01"), ff16 + b"\xfb" + b"\xfe" * 15 + b"\x01" * 16),  # #8: h = p + 2**128: a zero tag
        (key(b"\x02"), b"\xfd" + b"\xff" * 15),  # #9: h = p - 1
        (key(b"\x01" + bytes(7) + b"\x04"), bytes.fromhex(
            "e33594d7505e43b900000000000000003394d7505e4379cd01000000000000000000000000000000000000000000000000000000000000000000000000000000")),  # #10
        (key(b"\x01" + bytes(7) + b"\x04"), bytes.fromhex(
            "e33594d7505e43b900000000000000003394d7505e4379cd010000000000000000000000000000000000000000000000")),  # #11
        (b"\xff" * 32, ff16 * 4 + b"\xff"),  # every r bit the clamp allows
        (bytes(32), ff16),  # r = 0, s = 0
    ]
    rng = random.Random(1305)
    cases += [(rng.randbytes(32), rng.randbytes(n)) for n in (0, 1, 15, 16, 17, 31, 32, 33, 64, 100, 300)]
    return cases


@pytest.mark.parametrize("path", PATHS)
def test_poly1305_edge_cases_match_cryptography(path: str) -> None:
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    cases = _poly1305_edge_cases()
    want = [Poly1305.generate_tag(k, m).hex() for k, m in cases]
    body = f"""
print(json.dumps([hx(T.poly1305(unhexlify(k), unhexlify(m))) for k, m in {[(k.hex(), m.hex()) for k, m in cases]!r}]))
"""
    assert _mp_aead(path, body) == want


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_section_2_8_2_aead_encryption(path: str) -> None:
    k, iv, ad, pt, ct = RFC8439_2_8_2
    body = f"""
k = unhexlify('{k}')
ct = T.encrypt_iv(k, unhexlify('{iv}'), unhexlify('{ad}'), unhexlify('{pt}'))
print(json.dumps([hx(ct), hx(T.decrypt_iv(k, unhexlify('{iv}'), unhexlify('{ad}'), ct))]))
"""
    assert _mp_aead(path, body) == [ct, pt]


@pytest.mark.parametrize("path", PATHS)
def test_rfc8439_appendix_a_5_decryption(path: str) -> None:
    k, iv, ad, ct, pt = RFC8439_A_5
    body = f"""
print(json.dumps(hx(T.decrypt_iv(unhexlify('{k}'), unhexlify('{iv}'), unhexlify('{ad}'), unhexlify('{ct}')))))
"""
    assert _mp_aead(path, body) == pt


@pytest.mark.parametrize("path", PATHS)
def test_a_flip_at_every_byte_of_ciphertext_and_tag_is_rejected_and_writes_nothing(path: str) -> None:
    body = """
c = C.ChaCha20Poly1305(bytes(range(32)))
ad = b"routing header"
pt = bytes(range(100, 141))  # 41 bytes: two full blocks and a short one
wire = bytearray(len(pt) + 16)
c.encrypt_into(7, ad, len(ad), pt, 0, len(pt), wire, 0)
res = {"flips": 0, "rejected": 0, "untouched": 0}
dst = bytearray(b"\\xa5" * 64)
for i in range(len(wire)):
    for bit in (0x01, 0x80):
        bad = bytearray(wire)
        bad[i] ^= bit
        res["flips"] += 1
        try:
            c.decrypt_into(7, ad, len(ad), bad, 0, len(bad), dst, 3)
        except AuthError:
            res["rejected"] += 1
        if dst == bytearray(b"\\xa5" * 64):
            res["untouched"] += 1
other = []
for args in ((8, ad, len(ad)), (7, b"routing headeR", len(ad)), (7, ad, len(ad) - 1)):
    try:
        c.decrypt_into(args[0], args[1], args[2], wire, 0, len(wire), dst, 3)
        other.append("accepted")
    except AuthError:
        other.append("rejected")
for n in (0, 15):
    try:
        c.decrypt_into(7, ad, len(ad), wire, 0, n, dst, 3)
        other.append("accepted")
    except AuthError:
        other.append("rejected")
res["other"] = other
res["untouched_after_other"] = dst == bytearray(b"\\xa5" * 64)
n = c.decrypt_into(7, ad, len(ad), wire, 0, len(wire), dst, 3)
res["good"] = bytes(dst[3:3 + n]) == pt and dst[:3] == b"\\xa5\\xa5\\xa5" and dst[3 + n] == 0xa5
print(json.dumps(res))
"""
    res = _mp_aead(path, body)
    assert res["flips"] == 2 * (41 + 16)
    assert res["rejected"] == res["flips"]
    assert res["untouched"] == res["flips"]
    assert res["other"] == ["rejected"] * 5
    assert res["untouched_after_other"] is True
    assert res["good"] is True


def test_aead_allocates_nothing_per_call_under_heap_lock() -> None:
    body = """
import micropython
c = C.ChaCha20Poly1305(bytes(range(32)))
ad = bytearray(b"header bytes")
buf = bytearray(1100)
out = bytearray(1100)
sizes = (0, 1, 15, 16, 17, 63, 64, 65, 200, 1024)
for i in range(len(buf)):
    buf[i] = i & 0xFF
want = bytes(buf)
ok = bytearray(31)  # results go into preallocated storage: no list growth
big = 2**40
i = m = k = n = ad_len = 0  # globals exist before the lock: a new global could grow the dict
micropython.heap_lock()
try:
    for n in sizes:
        for ad_len in (0, 5, 12):
            m = c.encrypt_into(n + 1000, ad, ad_len, buf, 10, n, out, 3)
            k = c.decrypt_into(n + 1000, ad, ad_len, out, 3, m, buf, 10)
            ok[i] = m == n + 16 and k == n
            i += 1
    # in place: same buffer, same offset
    m = c.encrypt_into(big, ad, 12, buf, 0, 64, buf, 0)
    k = c.decrypt_into(big, ad, 12, buf, 0, m, buf, 0)
    ok[i] = k == 64
finally:
    micropython.heap_unlock()
# buf[64:80] now holds the in-place tag; everything else is the plaintext again
print(json.dumps([all(ok), i + 1, bytes(buf[:64]) == want[:64] and bytes(buf[80:]) == want[80:]]))
"""
    assert _mp_aead("fast", body) == [True, 31, True]


@pytest.mark.parametrize("path", PATHS)
def test_aead_matches_cryptography_on_random_inputs(path: str) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    rng = random.Random(8439)
    cases = []
    for _ in range(40):
        key = rng.randbytes(32)
        nonce = rng.choice([0, 1, rng.randrange(1 << 32), rng.randrange(1 << 64), (1 << 64) - 1])
        ad = rng.randbytes(rng.choice([0, 1, 13, 16, 40]))
        pt = rng.randbytes(rng.choice([0, 1, 15, 16, 17, 64, 100, 257]))
        ref = ChaCha20Poly1305(key).encrypt(b"\0\0\0\0" + nonce.to_bytes(8, "little"), pt, ad)
        cases.append((key.hex(), nonce, ad.hex(), pt.hex(), ref.hex()))
    body = f"""
res = []
for k, nonce, ad, pt in {[c[:4] for c in cases]!r}:
    c = C.ChaCha20Poly1305(unhexlify(k))
    ad = unhexlify(ad)
    pt = unhexlify(pt)
    dst = bytearray(len(pt) + 16 + 5)
    n = c.encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), dst, 5)
    back = bytearray(len(pt))
    c.decrypt_into(nonce, ad, len(ad), dst, 5, n, back, 0)
    res.append([hx(dst[5:5 + n]), back == pt])
print(json.dumps(res))
"""
    out = _mp_aead(path, body)
    assert [o[0] for o in out] == [c[4] for c in cases]
    assert all(o[1] for o in out)


def test_aead_fallback_matches_fast_path_on_one_interpreter() -> None:
    body = """
res = []
for fb in (False, True):
    T.force_fallback_for_testing_only(fb)
    c = C.ChaCha20Poly1305(bytes(range(1, 33)))
    out = []
    for n in (0, 5, 64, 130):
        dst = bytearray(n + 16)
        c.encrypt_into(n * 3 + 1, b"ad", 2, bytes(range(n)), 0, n, dst, 0)
        out.append(hx(dst))
    res.append(out)
print(json.dumps(res[0] == res[1]))
"""
    assert _mp_aead("fast", body) is True


def test_bad_ranges_raise_local_errors_before_touching_memory() -> None:
    body = """
from device.errors import LocalError, BufferTooSmall
c = C.ChaCha20Poly1305(bytes(32))
res = []
for args in ((0, b"", 0, bytes(10), 0, 11, bytearray(40), 0),
             (0, b"", 0, bytes(10), 0, 10, bytearray(25), 0),
             (0, b"", 0, bytes(10), 0, 10, bytearray(26), 1),
             (0, b"ab", 3, bytes(10), 0, 10, bytearray(40), 0),
             (-1, b"", 0, bytes(10), 0, 10, bytearray(40), 0),
             (1 << 64, b"", 0, bytes(10), 0, 10, bytearray(40), 0),
             (0, b"", 0, bytes(10), -1, 10, bytearray(40), 0),
             (0, b"", 0, bytes(10), 0, 10, bytes(40), 0)):
    try:
        c.encrypt_into(*args)
        res.append("ok")
    except BufferTooSmall:
        res.append("small")
    except LocalError:
        res.append("local")
try:
    C.ChaCha20Poly1305(bytes(31))
    res.append("ok")
except LocalError:
    res.append("local")
print(json.dumps(res))
"""
    assert _mp_aead("fast", body) == ["local", "small", "small", "local", "local", "local", "local", "local", "local"]
