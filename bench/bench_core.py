"""Core benchmark: moteseal vs the `noiseprotocol` package vs raw primitives,
side by side in one run, with ratios. Not a test: figures vary by machine.

    python3 bench/bench_core.py [--quick]

Prints: NK(psk0) handshakes/s with both sides in one process; transport
encrypt+decrypt round trips/s at 16, 64, 256 and 4096 B for moteseal's
Transport, moteseal's whole envelope path (DeviceSession.send_into ->
PeerSessions.receive), noiseprotocol, and raw libsodium AEAD calls (the
limit); and the envelope overhead in bytes.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nacl._sodium import ffi, lib  # noqa: E402
from noise.connection import Keypair, NoiseConnection  # noqa: E402

from device import envelope as E  # noqa: E402
from moteseal.crypto.backend_nacl import NaclBackend  # noqa: E402
from device.noise import NKInitiator, NKResponder  # noqa: E402
from tests.pair import Pair  # noqa: E402

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
QUICK = "--quick" in sys.argv


def rate(fn, seconds=0.3 if QUICK else 1.0):
    """Calls per second of fn(), best of 3 runs."""
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while True:
            for _ in range(50):
                fn()
            n += 50
            dt = time.perf_counter() - t0
            if dt >= seconds / 3:
                break
        best = max(best, n / dt)
    return best


def pair_ours(b, priv, pub, psk, **limits):
    """A finished moteseal handshake: (initiator, responder) transports."""
    i = NKInitiator(b, pub, psk=psk, suite=SUITE)
    r = NKResponder(b, (priv, pub), psk=psk, suite=SUITE)
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    return i.into_transport(**limits), r.into_transport(**limits)


def hs_ours(b, priv, pub, psk):
    return lambda: pair_ours(b, priv, pub, psk)


def pair_theirs(priv, pub, psk):
    """A finished noiseprotocol handshake: (initiator, responder)."""
    i = NoiseConnection.from_name(SUITE.encode())
    i.set_as_initiator()
    i.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, pub)
    i.set_psks(psk)
    r = NoiseConnection.from_name(SUITE.encode())
    r.set_as_responder()
    r.set_keypair_from_private_bytes(Keypair.STATIC, priv)
    r.set_psks(psk)
    i.start_handshake()
    r.start_handshake()
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    return i, r


def hs_theirs(priv, pub, psk):
    return lambda: pair_theirs(priv, pub, psk)


def hs_bound(priv, pub):
    """Six X25519 scalar multiplications (2 base + 4 variable), raw libsodium."""
    out = ffi.new("unsigned char[32]")

    def run():
        lib.crypto_scalarmult_base(out, priv)
        lib.crypto_scalarmult_base(out, priv)
        for _ in range(4):
            lib.crypto_scalarmult(out, priv, pub)
    return run


def main() -> None:
    b = NaclBackend()
    priv, pub = b.generate_keypair()
    psk = os.urandom(32)
    print(f"moteseal core benchmark ({SUITE}), Python {sys.version.split()[0]}")
    print()
    ours = rate(hs_ours(b, priv, pub, psk))
    theirs = rate(hs_theirs(priv, pub, psk))
    bound = rate(hs_bound(priv, pub))
    print("full NK handshakes/s (both sides, one process)")
    print(f"  {'moteseal':<14}{ours:>10.0f}/s   {ours / theirs:5.2f}x noiseprotocol   "
          f"{ours / bound:4.0%} of the 6-scalar-mult bound")
    print(f"  {'noiseprotocol':<14}{theirs:>10.0f}/s   {1:5.2f}x                 "
          f"{theirs / bound:4.0%} of the bound")
    print(f"  {'bound (6 DH)':<14}{bound:>10.0f}/s")
    print()
    print("transport encrypt+decrypt round trips/s")
    print(f"  {'size':>6} {'transport':>11} {'envelope':>11} {'noiseprotocol':>14} "
          f"{'raw AEAD':>11} {'tr/np':>7} {'env/np':>7} {'tr/raw':>7}")
    for size in (16, 64, 256, 4096):
        pt = os.urandom(size)
        # (a) moteseal Transport, explicit nonces, buffers reused.
        ti, tr = pair_ours(b, priv, pub, psk, max_payload=4096, window=4096,
                           rekey_interval=1 << 20)
        ct = bytearray(size + 16)
        back = bytearray(size)

        def transport_rt():
            nonce = ti.send_nonce
            n = ti.encrypt_into(b"", 0, pt, 0, size, ct, 0)
            tr.decrypt_into(nonce, b"", 0, ct, 0, n, back, 0)
        t_tr = rate(transport_rt)
        # (b) the whole envelope path: header, AD binding, decode, session lookup.
        p = Pair(SUITE, max_payload=4096, window=4096, rekey_interval=1 << 20)
        p.handshake()
        env = bytearray(E.HEADER_MAX_BYTES + size + 16)
        dev, peer = p.device, p.peer

        def envelope_rt():
            n = dev.send_into(pt, size, env)
            peer.receive(bytes(env[:n]))
        t_env = rate(envelope_rt)
        # noiseprotocol (implicit nonces; its own API).
        ni, nr = pair_theirs(priv, pub, psk)
        t_np = rate(lambda: nr.decrypt(ni.encrypt(pt)))
        # Raw libsodium AEAD (no framework at all): the limit.
        key = os.urandom(32)
        nonce = bytes(12)
        cb = ffi.from_buffer(ct)
        bb = ffi.from_buffer(back)

        def raw_rt():
            lib.crypto_aead_chacha20poly1305_ietf_encrypt(cb, ffi.NULL, pt, size, b"", 0,
                                                          ffi.NULL, nonce, key)
            lib.crypto_aead_chacha20poly1305_ietf_decrypt(bb, ffi.NULL, ffi.NULL, cb, size + 16,
                                                          b"", 0, nonce, key)
        t_raw = rate(raw_rt)
        print(f"  {size:>5}B {t_tr:>10.0f} {t_env:>11.0f} {t_np:>14.0f} {t_raw:>11.0f} "
              f"{t_tr / t_np:>6.2f}x {t_env / t_np:>6.2f}x {t_tr / t_raw:>6.0%}")
    print()
    pt = 20
    e = E.encode(E.HEAD_DATA, b"sensor-01", b"hub", 5, bytes(pt + 16), nonce=1000)
    print(f"envelope overhead (data, 20 B plaintext, nonce 1000, sid 5): "
          f"{len(e) - pt - len(b'sensor-01') - len(b'hub')} B beyond plaintext and ids "
          f"(16 of them the tag); budget 26")
    e = E.encode(E.HEAD_DATA, b"sensor-01", b"hub", 5, bytes(pt + 16), nonce=7)
    print(f"  with nonce < 24: {len(e) - pt - 12} B")


if __name__ == "__main__":
    main()
