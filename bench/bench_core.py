"""Core benchmark: moteseal vs the `noiseprotocol` package vs raw primitives,
side by side, as ratios from interleaved rounds. Not a test: figures vary by
machine; the ratios are what to compare.

    python3 bench/bench_core.py [--quick] [--rounds N]

Every comparison runs its cases once per round, the order reversed every
other round (bench/abab.py), and each ratio is taken within one round, so a
slow spell on a shared machine moves both sides of it. Printed: the median
rate per case, and each ratio as its median with the spread (min-max) over
the rounds (at least five). Times are CPU time of this process (abab.CPU).

Prints: NK(psk0) handshakes/s with both sides in one process, against
noiseprotocol and the six-X25519 bound; transport encrypt+decrypt round
trips/s at 16, 64, 256 and 4096 B for moteseal's Transport, moteseal's
whole envelope path (DeviceSession.send_into -> PeerSessions.receive),
noiseprotocol, and raw libsodium AEAD calls (the limit); and the envelope
overhead in bytes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

sys.path.insert(0, os.path.dirname(__file__))

from nacl._sodium import ffi, lib  # noqa: E402
from noise.connection import Keypair, NoiseConnection  # noqa: E402

from device import envelope as E  # noqa: E402
from moteseal.crypto.backend_nacl import NaclBackend  # noqa: E402
from device.noise import NKInitiator, NKResponder  # noqa: E402
from tests.pair import Pair  # noqa: E402
from abab import CPU, MIN_ROUNDS, fmt_rate, fmt_ratio, interleave, rate, ratios  # noqa: E402

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
QUICK = "--quick" in sys.argv
ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv \
    else (MIN_ROUNDS if QUICK else 7)
SLICE = 0.05 if QUICK else 0.15  # CPU seconds per case per round


def measure(fn):
    """A case for abab.interleave: calls of fn() per CPU second."""
    return lambda: rate(fn, SLICE, clock=CPU)


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
    print(f"moteseal core benchmark ({SUITE}), Python {sys.version.split()[0]}, "
          f"{ROUNDS} interleaved rounds, CPU time")
    print()
    runs = interleave({"moteseal": measure(hs_ours(b, priv, pub, psk)),
                       "noiseprotocol": measure(hs_theirs(priv, pub, psk)),
                       "bound": measure(hs_bound(priv, pub))}, ROUNDS)
    print("full NK handshakes/s (both sides, one process)")
    print(f"  {'moteseal':<14}{fmt_rate(runs['moteseal'])}")
    print(f"  {'noiseprotocol':<14}{fmt_rate(runs['noiseprotocol'])}")
    print(f"  {'bound (6 DH)':<14}{fmt_rate(runs['bound'])}")
    print(f"  moteseal / noiseprotocol  {fmt_ratio(ratios(runs['moteseal'], runs['noiseprotocol']))}")
    print(f"  moteseal / bound          {fmt_ratio(ratios(runs['moteseal'], runs['bound']))}")
    print(f"  noiseprotocol / bound     {fmt_ratio(ratios(runs['noiseprotocol'], runs['bound']))}")
    print()
    print("transport encrypt+decrypt round trips/s (median rate; ratios: median (min-max))")
    print(f"  {'size':>6} {'transport':>10} {'envelope':>10} {'noiseprot':>10} {'raw AEAD':>10}"
          f"   {'tr/np':<25}{'env/np':<25}{'tr/raw':<25}")
    for size in (16, 64, 256, 4096):
        pt = os.urandom(size)
        # (a) moteseal Transport, explicit nonces, buffers reused.
        ti, tr = pair_ours(b, priv, pub, psk, max_payload=4096, window=4096,
                           rekey_interval=1 << 20, max_messages=1 << 29)
        ct = bytearray(size + 16)
        back = bytearray(size)

        def transport_rt(ti=ti, tr=tr, ct=ct, back=back, pt=pt, size=size):
            nonce = ti.send_nonce
            n = ti.encrypt_into(b"", 0, pt, 0, size, ct, 0)
            tr.decrypt_into(nonce, b"", 0, ct, 0, n, back, 0)
        # (b) the whole envelope path: header, AD binding, decode, session lookup.
        p = Pair(SUITE, max_payload=4096, window=4096, rekey_interval=1 << 20,
                 max_messages=1 << 29)
        p.handshake()
        env = bytearray(E.HEADER_MAX_BYTES + size + 16)

        def envelope_rt(dev=p.device, peer=p.peer, env=env, pt=pt, size=size):
            n = dev.send_into(pt, size, env)
            peer.receive(bytes(env[:n]))
        # noiseprotocol (implicit nonces; its own API).
        ni, nr = pair_theirs(priv, pub, psk)
        # Raw libsodium AEAD (no framework at all): the limit.
        key = os.urandom(32)
        nonce = bytes(12)
        cb = ffi.from_buffer(ct)
        bb = ffi.from_buffer(back)

        def raw_rt(cb=cb, bb=bb, pt=pt, size=size, key=key):
            lib.crypto_aead_chacha20poly1305_ietf_encrypt(cb, ffi.NULL, pt, size, b"", 0,
                                                          ffi.NULL, nonce, key)
            lib.crypto_aead_chacha20poly1305_ietf_decrypt(bb, ffi.NULL, ffi.NULL, cb, size + 16,
                                                          b"", 0, nonce, key)
        runs = interleave({"tr": measure(transport_rt), "env": measure(envelope_rt),
                           "np": measure(lambda ni=ni, nr=nr, pt=pt: nr.decrypt(ni.encrypt(pt))),
                           "raw": measure(raw_rt)}, ROUNDS)
        med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
        print(f"  {size:>5}B {med['tr']:>10.0f} {med['env']:>10.0f} {med['np']:>10.0f} "
              f"{med['raw']:>10.0f}   {fmt_ratio(ratios(runs['tr'], runs['np'])):<25}"
              f"{fmt_ratio(ratios(runs['env'], runs['np'])):<25}"
              f"{fmt_ratio(ratios(runs['tr'], runs['raw']), '%'):<25}")
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
