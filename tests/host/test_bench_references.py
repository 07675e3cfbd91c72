"""The benchmarks' references must compute what they stand in for: a
"minimal" handshake that derived other keys would make every ratio against
it meaningless."""

import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from device.noise import NKInitiator, NKResponder
from moteseal import NaclBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import hs_floor  # noqa: E402

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"


def test_minimal_handshake_derives_the_same_transport_keys_as_ours():
    b = NaclBackend()
    priv, pub = b.generate_keypair()
    psk = os.urandom(32)
    e, f = os.urandom(32), os.urandom(32)
    order = [e, f]
    c_i1, c_i2, c_r1, c_r2 = hs_floor.both_sides(priv, pub, hs_floor.prefix(pub, psk),
                                                 lambda n: order.pop(0))

    b.fixed_ephemeral_key_for_testing_only = [e, f]
    i = NKInitiator(b, pub, psk=psk, suite=SUITE)
    r = NKResponder(b, (priv, pub), psk=psk, suite=SUITE)
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    ti, tr = i.into_transport(), r.into_transport()

    n = bytes(12)
    for ref, key in ((c_i1, ti._s_key), (c_i2, ti._r_key), (c_r1, tr._r_key), (c_r2, tr._s_key)):
        assert ref.encrypt(n, b"probe", b"ad") == ChaCha20Poly1305(bytes(key)).encrypt(n, b"probe", b"ad")
    # and a different PSK gives different keys (the prefix is not ignored)
    order[:] = [e, f]
    other = hs_floor.both_sides(priv, pub, hs_floor.prefix(pub, os.urandom(32)),
                                lambda n: order.pop(0))
    assert other[0].encrypt(n, b"probe", b"ad") != c_i1.encrypt(n, b"probe", b"ad")
