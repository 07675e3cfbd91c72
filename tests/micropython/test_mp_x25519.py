"""X25519 (micropython_port.x25519) under the real MicroPython unix port:
RFC 7748 vectors, low-order and non-canonical inputs, both the viper and
the pure-Python paths, and a differential run against PyNaCl."""

from __future__ import annotations

import random

import nacl.bindings
import pytest

from tests.mp_helpers import run_mp_json

from tests.mp_vectors import P, RFC7748_5_2, RFC7748_ITER_1, RFC7748_ITER_1000, RFC7748_6_1, LOW_ORDER

pytestmark = pytest.mark.micropython

PATHS = ["fast", "fallback"]

_MP_PRELUDE = """
import json
from binascii import hexlify, unhexlify
from micropython_port import x25519 as X
from tests import mp_primitive_hooks as T
T.force_fallback_for_testing_only({fallback})
def hx(b):
    return hexlify(b).decode()
"""


def _mp_x25519(path: str, body: str, timeout: float = 120) -> object:
    code = _MP_PRELUDE.format(fallback=path == "fallback") + body
    return run_mp_json(code, timeout=timeout)


def test_x25519_fast_path_loads_on_the_unix_port() -> None:
    assert _mp_x25519("fast", "print(json.dumps(T.has_fast_path()))") == [True, True, True]


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_section_5_2_vectors(path: str) -> None:
    pairs = [(k, u) for k, u, _ in RFC7748_5_2]
    out = _mp_x25519(
        path,
        f"print(json.dumps([hx(X.x25519(unhexlify(k), unhexlify(u))) for k, u in {pairs!r}]))",
    )
    assert out == [r for _, _, r in RFC7748_5_2]


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_iterated_1_and_1000(path: str) -> None:
    body = """
k = u = unhexlify("09" + "00" * 31)
res = []
for i in range(1000):
    k, u = X.x25519(k, u), k
    if i == 0 or i == 999:
        res.append(hx(k))
print(json.dumps(res))
"""
    assert _mp_x25519(path, body, timeout=240) == [RFC7748_ITER_1, RFC7748_ITER_1000]


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_section_6_1_diffie_hellman(path: str) -> None:
    v = RFC7748_6_1
    body = f"""
a, b = unhexlify("{v['alice_priv']}"), unhexlify("{v['bob_priv']}")
A, B = X.x25519_base(a), X.x25519_base(b)
print(json.dumps([hx(A), hx(B), hx(X.x25519(a, B)), hx(X.x25519(b, A))]))
"""
    assert _mp_x25519(path, body) == [v["alice_pub"], v["bob_pub"], v["shared"], v["shared"]]


@pytest.mark.parametrize("path", PATHS)
def test_low_order_points_give_the_all_zero_output(path: str) -> None:
    # Every u above is of low order for libsodium too (it refuses them).
    k = bytes(range(1, 33))
    for u in LOW_ORDER:
        with pytest.raises(Exception):
            nacl.bindings.crypto_scalarmult(k, bytes.fromhex(u))
    out = _mp_x25519(
        path,
        f"print(json.dumps([hx(X.x25519(unhexlify('{k.hex()}'), unhexlify(u))) for u in {LOW_ORDER!r}]))",
    )
    assert out == ["00" * 32] * len(LOW_ORDER)


def _noncanonical_inputs() -> list[int]:
    rng = random.Random(7748)
    us = [P + d for d in range(2, 19)]  # p + 2 .. 2**255 - 1: non-canonical
    us += [rng.randrange(1 << 255) | (1 << 255) for _ in range(4)]  # top bit set
    us += [(P + 5) | (1 << 255), (1 << 256) - 1]
    return us


@pytest.mark.parametrize("path", PATHS)
def test_non_canonical_u_is_masked_and_reduced(path: str) -> None:
    rng = random.Random(255)
    cases = []
    for u in _noncanonical_inputs():
        k = rng.randbytes(32)
        # RFC 7748 section 5: mask bit 255, then treat the value mod p.
        canonical = ((u & ((1 << 255) - 1)) % P).to_bytes(32, "little")
        want = nacl.bindings.crypto_scalarmult(k, canonical).hex()
        cases.append((k.hex(), u.to_bytes(32, "little").hex(), want))
    out = _mp_x25519(
        path,
        f"print(json.dumps([hx(X.x25519(unhexlify(k), unhexlify(u))) for k, u, _ in {cases!r}]))",
    )
    assert out == [w for _, _, w in cases]


@pytest.mark.parametrize("path", PATHS)
def test_x25519_matches_libsodium_on_random_inputs(path: str) -> None:
    rng = random.Random(20260)
    cases = [(rng.randbytes(32), rng.randbytes(32)) for _ in range(24)]
    want = [nacl.bindings.crypto_scalarmult(k, u).hex() for k, u in cases]
    want_base = [nacl.bindings.crypto_scalarmult_base(k).hex() for k, _ in cases]
    hexcases = [(k.hex(), u.hex()) for k, u in cases]
    body = f"""
cs = [(unhexlify(k), unhexlify(u)) for k, u in {hexcases!r}]
print(json.dumps([[hx(X.x25519(k, u)) for k, u in cs], [hx(X.x25519_base(k)) for k, _ in cs]]))
"""
    assert _mp_x25519(path, body) == [want, want_base]
