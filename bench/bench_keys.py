"""Registry and provisioning benchmark, side by side in one run. Not a test:
figures vary by machine (and the registry's by disk: it fsyncs).

    python3 bench/bench_keys.py [--quick]

Prints:
- full NKpsk0 handshakes/s through ``PeerSessions`` (both sides in one
  process, hs1 + hs2) with the in-memory ``NonpersistingDirectory`` (the
  limit) against the SQLite ``Registry`` (durable counter per message 1);
- each directory call the responder makes per message 1, per second;
- bundle encode+decode round trips/s and provisioning devices/s (PSK +
  registry row + 0600 bundle file);
- argon2id key-file open time at each cost level.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from moteseal.crypto.backend_nacl import NaclBackend  # noqa: E402
from device.counter import Msg1Counter, NonpersistingCounterStore  # noqa: E402
from moteseal.keys.keyfile import KDF_COSTS, encode_key_file, decode_key_file, generate_keypair, write_key_file  # noqa: E402
from moteseal.keys.provision import decode_bundle, encode_bundle, provision_device, write_bundle  # noqa: E402
from moteseal.keys.registry import Registry  # noqa: E402
from device.session import DeviceSession  # noqa: E402
from device.peer import NonpersistingDirectory, PeerSessions  # noqa: E402

SUITE = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
QUICK = "--quick" in sys.argv


def rate(fn, seconds: float = 0.3 if QUICK else 1.0) -> float:
    """Calls per second of fn(), best of 3 runs."""
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while True:
            for _ in range(10):
                fn()
            n += 10
            dt = time.perf_counter() - t0
            if dt >= seconds / 3:
                break
        best = max(best, n / dt)
    return best


def handshake_rate(directory, backend, kp, psk) -> float:
    peer = PeerSessions(backend, b"hub1", directory, suite=SUITE)
    dev = DeviceSession(backend, b"s1", b"hub1", kp.pub, psk, Msg1Counter(NonpersistingCounterStore()), SUITE)

    def one() -> None:
        r = peer.receive(dev.handshake(b"t=21.5"))
        dev.receive(r.reply)

    return rate(one)


def main() -> None:
    backend = NaclBackend()
    kp = generate_keypair()
    psk = os.urandom(32)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_key_file(t / "hub1.key", kp)
        reg = Registry(t / "hub1.sqlite", create_for_peer=b"hub1")
        reg.add_peer_key(kp.pub, t / "hub1.key")
        reg.provision(b"s1", psk, SUITE)
        mem = NonpersistingDirectory([(kp.priv, kp.pub)])
        mem.add(b"s1", psk)

        print("handshakes/s through PeerSessions (hs1 + hs2, both sides):")
        h_mem = handshake_rate(mem, backend, kp, psk)
        reg.provision(b"s1", psk, SUITE, replace=True)  # counter back to -1
        h_reg = handshake_rate(reg, backend, kp, psk)
        print(f"  NonpersistingDirectory (limit) {h_mem:9.0f}")
        print(f"  Registry (SQLite, fsync)       {h_reg:9.0f}   ratio {h_reg / h_mem:.2f}")

        print("directory calls/s (Registry):")
        c = [0]

        def counter_set() -> None:
            c[0] += 1
            reg.counter_set(b"s1", 10**6 + c[0])

        for name, fn in [
            ("psk_for", lambda: reg.psk_for(b"s1")),
            ("is_revoked", lambda: reg.is_revoked(b"s1")),
            ("counter_get", lambda: reg.counter_get(b"s1")),
            ("statics (cached keys)", reg.statics),
            ("counter_set (durable)", counter_set),
            ("count_refusal (buffered)", lambda: reg.count_refusal(b"s1", "auth")),
        ]:
            print(f"  {name:26} {rate(fn):9.0f}")

        b = provision_device(reg, b"s2", SUITE, {"kind": "mqtt", "host": "h", "port": 1883})[1]
        print(f"bundle encode+decode/s         {rate(lambda: decode_bundle(encode_bundle(b))):9.0f}")
        n = [0]

        def provision_one() -> None:
            n[0] += 1
            dev = f"d{n[0]}".encode()
            _, bb = provision_device(reg, dev, SUITE, {"kind": "none"})
            write_bundle(t / f"d{n[0]}.bundle", bb)

        print(f"provisioned devices/s          {rate(provision_one):9.0f}")
        reg.close()

    print("argon2id key file open (ms):")
    for level in KDF_COSTS:
        if QUICK and level == "sensitive":
            continue
        data = encode_key_file(kp, b"pw", kdf=level)
        t0 = time.perf_counter()
        decode_key_file(data, b"pw")
        print(f"  {level:12} {1000 * (time.perf_counter() - t0):8.0f}")


if __name__ == "__main__":
    main()
