"""Differential fuzzing (issue 8).

1. The device-side envelope codec (``device.envelope``, no cbor2) against a
   reference reader built on cbor2 straight from the CDDL in
   docs/protocol.md: the same accept/reject decision and the same fields on
   every input, valid, near-valid or random.
2. ``micropython_port.backend.MicroBackend`` against
   ``moteseal.crypto.backend_nacl.NaclBackend``: the same outputs and the same
   accept/reject decisions on random inputs, on CPython (pure-Python paths)
   and under the real MicroPython unix port (viper paths).
"""

from __future__ import annotations

import json
import os
import random

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from device import envelope as E
from moteseal.crypto.backend_nacl import NaclBackend
from device.errors import AuthError, DecodeError, RemoteError
from device.noise import dh
from micropython_port.backend import MicroBackend

EXAMPLES = int(os.environ.get("MOTESEAL_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=list(HealthCheck))

# -- 1. envelope codec vs cbor2 ---------------------------------------------------


def reference(data: bytes, limit: int = E.ENVELOPE_MAX_BYTES):
    """The CDDL of docs/protocol.md read with cbor2: a tuple of fields, or
    None for a rejected envelope."""
    if len(data) > limit or not data:
        return None
    try:
        items = cbor2.loads(data)
        if cbor2.dumps(items, canonical=True) != data:
            return None  # not canonical, or trailing bytes
    except Exception:
        return None
    if type(items) is not list or len(items) not in (5, 6):
        return None

    def uint(x, top):
        return type(x) is int and 0 <= x <= top

    def ident(x):
        return type(x) is bytes and 1 <= len(x) <= E.ID_MAX_BYTES

    head = items[0]
    if not uint(head, 23) or head >> 2 != E.VERSION:
        return None
    kind = head & 3
    if len(items) != (6 if kind == E.DATA else 5):
        return None
    if not (ident(items[1]) and ident(items[2]) and uint(items[3], E.SID_MAX)):
        return None
    nonce = reason = -1
    msg = b""
    if kind == E.DATA:
        if not (uint(items[4], E.NONCE_MAX) and type(items[5]) is bytes):
            return None
        nonce, msg = items[4], items[5]
    elif kind == E.HINT:
        if not uint(items[4], 2 ** 64 - 1):
            return None
        reason = items[4]
    else:
        if type(items[4]) is not bytes:
            return None
        msg = items[4]
    return (head, items[1], items[2], items[3], nonce, reason, msg)


def ours(data: bytes, limit: int = E.ENVELOPE_MAX_BYTES):
    try:
        env = E.Envelope().decode_into(data, len(data), limit)
    except DecodeError:
        return None
    return (env.head, env.src, env.dst, env.sid, env.nonce, env.reason, env.msg)


def _check_same(data: bytes) -> None:
    try:
        got = ours(data)
    except RemoteError as e:  # another RemoteError subclass: also a rejection, but say so
        raise AssertionError(f"decoder raised {type(e).__name__}, documented DecodeError") from e
    assert got == reference(data), data.hex()


item = st.recursive(
    st.one_of(st.integers(min_value=-2, max_value=2 ** 64 + 1), st.binary(max_size=20),
              st.text(max_size=4), st.booleans(), st.none(), st.sampled_from([4, 5, 6, 7, 8, 3])),
    lambda inner: st.lists(inner, max_size=3), max_leaves=8)


@st.composite
def near_envelopes(draw):
    """cbor2-encoded lists shaped like envelopes, with wrong items mixed in,
    canonical or not, sometimes with bytes added or cut."""
    head = draw(st.sampled_from([4, 5, 6, 7, 0, 8, 11, 23, 24, 255]))
    ids = st.one_of(st.binary(min_size=0, max_size=18), item)
    fields = [head, draw(ids), draw(ids), draw(st.one_of(st.integers(0, 2 ** 33), item))]
    n = draw(st.integers(min_value=1, max_value=3))
    for _ in range(n):
        fields.append(draw(st.one_of(st.integers(0, 2 ** 64), st.binary(max_size=40), item)))
    data = cbor2.dumps(fields, canonical=draw(st.booleans()))
    cut = draw(st.integers(min_value=-3, max_value=3))
    if cut < 0:
        data = data[:cut]
    elif cut > 0:
        data += draw(st.binary(min_size=cut, max_size=cut))
    return data


@SETTINGS
@given(near_envelopes())
def test_envelope_codec_agrees_with_cbor2_on_near_envelopes(data):
    _check_same(data)


@SETTINGS
@given(st.binary(max_size=64))
def test_envelope_codec_agrees_with_cbor2_on_random_bytes(data):
    _check_same(data)


@SETTINGS
@given(st.sampled_from([
    E.encode(E.HEAD_HS1, b"sensor-1", b"hub", 3, bytes(80)),
    E.encode(E.HEAD_DATA, b"a" * 16, b"b" * 16, 2 ** 32 - 1, b"x" * 300, nonce=2 ** 40),
    E.encode(E.HEAD_HINT, b"hub", b"s", 5, 2 ** 63),
    E.encode(E.HEAD_HS2, b"hub", b"s", 0, b""),
]), st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), min_size=1, max_size=3))
def test_envelope_codec_agrees_with_cbor2_on_mutated_envelopes(env, edits):
    b = bytearray(env)
    for pos, x in edits:
        b[pos % len(b)] ^= x
    _check_same(bytes(b))


def test_the_reference_accepts_what_the_codec_writes():
    # Guards the oracle: a reference that rejects everything would agree on
    # every rejection above.
    for env in (E.encode(E.HEAD_DATA, b"s", b"h", 1, b"ct", nonce=24),
                E.encode(E.HEAD_HINT, b"h", b"s", 1, 2)):
        assert reference(env) is not None and reference(env) == ours(env)


# -- 2. MicroBackend vs NaclBackend ------------------------------------------------

NACL, MICRO = NaclBackend(), MicroBackend()
P = 2 ** 255 - 19
# Low-order points (RFC 7748 section 7 / the cr.yp.to list) and non-canonical u >= p.
SPECIAL_U = [0, 1, 325606250916557431795983626356110631294008115727848805560023387167927233504,
             39382357235489614581723060781553021112529911719440698176882885853963445705823,
             P - 1, P, P + 1, 2 ** 255 - 1, 2 ** 256 - 1, 9]


def _dh_outcome(backend, priv, pub):
    try:
        return dh(backend, priv, pub)
    except AuthError:
        return "AuthError"


@SETTINGS
@given(st.binary(min_size=32, max_size=32),
       st.one_of(st.binary(min_size=32, max_size=32),
                 st.sampled_from([u.to_bytes(32, "little") for u in SPECIAL_U])))
def test_x25519_agrees(priv, pub):
    assert MICRO.x25519_base(priv) == NACL.x25519_base(priv)
    assert _dh_outcome(MICRO, priv, pub) == _dh_outcome(NACL, priv, pub)


@SETTINGS
@given(st.binary(min_size=32, max_size=32), st.integers(0, 2 ** 64 - 1),
       st.binary(max_size=80), st.binary(max_size=300), st.data())
def test_chacha20poly1305_agrees_and_refuses_the_same(key, nonce, ad, pt, data):
    outs = []
    for b in (MICRO, NACL):
        out = bytearray(len(pt) + 16)
        assert b.cipher(key).encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), out, 0) == len(pt) + 16
        outs.append(bytes(out))
    assert outs[0] == outs[1]
    ct = bytearray(outs[0])
    if data.draw(st.booleans()):  # tamper, or keep it genuine
        ct[data.draw(st.integers(0, len(ct) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.sampled_from([len(ct), len(ct), max(0, len(ct) - 1), 15, 0]))
    verdicts = []
    for b in (MICRO, NACL):
        dst = bytearray(b"\xee" * len(ct))
        try:
            n = b.cipher(key).decrypt_into(nonce, ad, len(ad), ct, 0, cut, dst, 0)
            verdicts.append(bytes(dst[:n]))
        except AuthError:
            assert b is NACL or dst == b"\xee" * len(ct), "plaintext written on failure"
            verdicts.append("AuthError")
    assert verdicts[0] == verdicts[1]
    if verdicts[0] != "AuthError":
        assert verdicts[0] == pt


@SETTINGS
@given(st.sampled_from(["SHA256", "BLAKE2s"]), st.binary(max_size=200), st.binary(max_size=130))
def test_hashes_and_hmac_agree(name, data, key):
    m, n = MICRO.hash(name), NACL.hash(name)
    assert (m.HASHLEN, m.BLOCKLEN) == (n.HASHLEN, n.BLOCKLEN)
    assert m.digest(data) == n.digest(data)
    assert m.hmac(key, data) == n.hmac(key, data)


def _mp_cases(seed: int = 8, n: int = 24) -> list[dict]:
    rng = random.Random(seed)

    def rb(k):
        return bytes(rng.randrange(256) for _ in range(k))

    cases = []
    for i in range(n):
        key, priv = rb(32), rb(32)
        pub = SPECIAL_U[i].to_bytes(32, "little") if i < len(SPECIAL_U) else rb(32)
        pt, ad = rb(rng.choice([0, 1, 15, 16, 63, 64, 65, 200])), rb(rng.randrange(40))
        nonce = rng.choice([0, 1, 2 ** 32, 2 ** 64 - 1, rng.randrange(2 ** 64)])
        out = bytearray(len(pt) + 16)
        NACL.cipher(key).encrypt_into(nonce, ad, len(ad), pt, 0, len(pt), out, 0)
        bad = bytearray(out)
        bad[rng.randrange(len(bad))] ^= 1 + rng.randrange(255)
        hname = rng.choice(["SHA256", "BLAKE2s"])
        hkey = rb(rng.choice([0, 32, 64, 65, 100]))
        cases.append({
            "priv": priv.hex(), "pub": pub.hex(), "key": key.hex(), "nonce": nonce, "ad": ad.hex(),
            "pt": pt.hex(), "bad": bytes(bad).hex(), "hash": hname, "hkey": hkey.hex(),
            "expect": {"base": NACL.x25519_base(priv).hex(),
                       "dh": _dh_outcome(NACL, priv, pub) if isinstance(_dh_outcome(NACL, priv, pub), str)
                       else _dh_outcome(NACL, priv, pub).hex(),
                       "ct": bytes(out).hex(), "bad": "AuthError",
                       "digest": NACL.hash(hname).digest(pt).hex(),
                       "hmac": NACL.hash(hname).hmac(hkey, pt).hex()},
        })
    return cases


MP_SCRIPT = r"""
import sys, json
from binascii import hexlify, unhexlify
from device.errors import AuthError
from device.noise import dh
from micropython_port.backend import MicroBackend
b = MicroBackend()
h = lambda x: hexlify(x).decode()
cases = json.loads(open(sys.argv[1]).read())
res = []
for c in cases:
    priv, pub, key = unhexlify(c["priv"]), unhexlify(c["pub"]), unhexlify(c["key"])
    ad, pt, bad = unhexlify(c["ad"]), unhexlify(c["pt"]), unhexlify(c["bad"])
    try:
        d = h(dh(b, priv, pub))
    except AuthError:
        d = "AuthError"
    out = bytearray(len(pt) + 16)
    b.cipher(key).encrypt_into(c["nonce"], ad, len(ad), pt, 0, len(pt), out, 0)
    dst = bytearray(len(bad))
    try:
        b.cipher(key).decrypt_into(c["nonce"], ad, len(ad), bad, 0, len(bad), dst, 0)
        v = "accepted"
    except AuthError:
        v = "AuthError"
    back = bytearray(len(pt))
    n = b.cipher(key).decrypt_into(c["nonce"], ad, len(ad), out, 0, len(out), back, 0)
    assert bytes(back[:n]) == pt
    hh = b.hash(c["hash"])
    res.append({"base": h(b.x25519_base(priv)), "dh": d, "ct": h(out), "bad": v,
                "digest": h(hh.digest(pt)), "hmac": h(hh.hmac(unhexlify(c["hkey"]), pt))})
print(json.dumps(res))
"""


@pytest.mark.micropython
def test_micropython_backend_under_real_micropython_agrees_with_nacl(tmp_path):
    from tests.mp_helpers import run_mp

    cases = _mp_cases()
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    got = json.loads(run_mp(MP_SCRIPT, args=[str(path)], timeout=120).strip().splitlines()[-1])
    assert len(got) == len(cases)
    for c, g in zip(cases, got):
        assert g == c["expect"], (c, g)
