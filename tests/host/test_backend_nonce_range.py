"""Both backends refuse a nonce outside 0 .. 2^64 - 1 with ``LocalError``
(the contract's nonce is a uint64, device/backend.py), on every path:
seal and open, small and large (OpenSSL) messages."""

from __future__ import annotations

import pytest

from device.errors import LocalError
from moteseal.crypto.backend_nacl import LARGE_BYTES, NaclBackend
from tests.mp_helpers import run_mp_json

BAD_NONCES = (-1, 1 << 64, (1 << 64) + 5)
SIZES = (0, 10, LARGE_BYTES + 10)


@pytest.mark.parametrize("nonce", BAD_NONCES)
@pytest.mark.parametrize("size", SIZES)
def test_nacl_backend_refuses_an_out_of_range_nonce_with_local_error(nonce, size):
    c = NaclBackend().cipher(bytes(32))
    with pytest.raises(LocalError):
        c.encrypt_into(nonce, b"", 0, bytes(size), 0, size, bytearray(size + 16), 0)
    with pytest.raises(LocalError):
        c.decrypt_into(nonce, b"", 0, bytes(size + 16), 0, size + 16, bytearray(size), 0)


def test_micropython_backend_refuses_the_same_nonces_with_local_error():
    code = """
import json
from device.errors import LocalError
from micropython_port.backend import MicroBackend
c = MicroBackend().cipher(bytes(32))
res = []
for nonce in %r:
    for size in %r:
        for op in ("encrypt_into", "decrypt_into"):
            n = size + 16 if op == "decrypt_into" else size
            try:
                getattr(c, op)(nonce, b"", 0, bytes(n), 0, n, bytearray(size + 16), 0)
                res.append("ok")
            except LocalError:
                res.append("local")
            except Exception as e:
                res.append(type(e).__name__)
print(json.dumps(res))
""" % (BAD_NONCES, SIZES)
    assert run_mp_json(code, timeout=120) == ["local"] * (len(BAD_NONCES) * len(SIZES) * 2)
