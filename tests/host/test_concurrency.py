"""Objects shared between threads (docs/security.md, "Threads").

Real threads hammer one ``NaclBackend`` and one session for a bounded time
(``SECONDS``), and every result is checked against a single-threaded
reference: a DH output, a ciphertext, or the set of nonces and plaintexts
that come out. No wall-clock assertion: the time only bounds the work.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from device import envelope as E
from device.counter import Msg1Counter, NonpersistingCounterStore
from device.peer import NonpersistingDirectory, PeerSessions
from device.session import EV_DATA, EV_HANDSHAKE, DeviceSession
from device.errors import LocalError
from moteseal.crypto.backend_nacl import LARGE_BYTES, NaclBackend
from moteseal.peer.locked import LockedDeviceSession

SECONDS = 2.0
THREADS = 4


def _hammer(work, seconds=SECONDS, threads=THREADS):
    """Runs ``work(thread_index, deadline)`` in ``threads`` threads at once;
    returns the exceptions they raised (none expected)."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)
    deadline = [0.0]

    def run(i):
        try:
            start.wait(timeout=30)
            deadline[0] = deadline[0] or time.monotonic() + seconds
            work(i, deadline[0])
        except BaseException as e:  # reported to the test thread
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=seconds + 60)
    assert not any(t.is_alive() for t in ts), "a hammering thread did not finish"
    return errors


def test_shared_backend_x25519_never_returns_another_threads_result():
    be = NaclBackend()
    privs = [os.urandom(32) for _ in range(64)]
    pubs = [be.x25519_base(os.urandom(32)) for _ in range(64)]
    ref_dh = [be.x25519(privs[i], pubs[i]) for i in range(64)]  # single-threaded reference
    ref_pub = [be.x25519_base(privs[i]) for i in range(64)]
    bad = []
    calls = [0] * THREADS

    def work(t, deadline):
        i = t
        while time.monotonic() < deadline:
            k = i % 64
            if be.x25519(privs[k], pubs[k]) != ref_dh[k]:
                bad.append(("x25519", k))
            if be.x25519_base(privs[k]) != ref_pub[k]:
                bad.append(("x25519_base", k))
            i += 7
            calls[t] += 2

    assert _hammer(work) == []
    assert sum(calls) > 1000  # the threads really overlapped a lot of calls
    assert bad == [], f"{len(bad)} of {sum(calls)} results belonged to another call"


def test_shared_cipher_seals_as_single_threaded():
    be = NaclBackend()
    c = be.cipher(os.urandom(32))
    msgs = [os.urandom(n) for n in (0, 1, 64, LARGE_BYTES - 1, LARGE_BYTES, 1024)]

    def seal(nonce, m):
        out = bytearray(len(m) + 16)
        c.encrypt_into(nonce, b"ad", 2, m, 0, len(m), out, 0)
        return bytes(out)

    ref = {(n, j): seal(n, m) for n in range(8) for j, m in enumerate(msgs)}
    bad = []

    def work(t, deadline):
        while time.monotonic() < deadline:
            for (n, j), ct in ref.items():
                if seal(n, msgs[j]) != ct:
                    bad.append((n, j))
                back = bytearray(len(msgs[j]))
                c.decrypt_into(n, b"ad", 2, ct, 0, len(ct), back, 0)
                if bytes(back) != msgs[j]:
                    bad.append(("open", n, j))

    assert _hammer(work) == []
    assert bad == []


def _pair(lock):
    be = NaclBackend()
    static = be.generate_keypair()
    psk = be.random_bytes(32)
    d = NonpersistingDirectory([static])
    d.add(b"sensor-1", psk)
    peer = PeerSessions(be, b"hub", d, lock=lock() if lock else None)
    args = (be, b"sensor-1", b"hub", static[1], psk, Msg1Counter(NonpersistingCounterStore()))
    dev = LockedDeviceSession(*args, lock=lock()) if lock else DeviceSession(*args)
    r = peer.receive(dev.handshake(b""))
    assert dev.receive(r.reply)[0] == EV_HANDSHAKE
    return peer, dev


def test_a_device_session_refuses_a_lock_it_would_not_take():
    # The core's DeviceSession has no locking (a board never shares it);
    # lock= there must fail loudly rather than be ignored (session Rule 7).
    be = NaclBackend()
    static = be.generate_keypair()
    with pytest.raises(LocalError):
        DeviceSession(be, b"sensor-1", b"hub", static[1], bytes(32),
                      Msg1Counter(NonpersistingCounterStore()), lock=threading.Lock())


def _nonce(envelope: bytes) -> int:
    return E.Envelope().decode_into(envelope, len(envelope), 1 << 16).nonce


def _send_from_threads(send):
    """Each thread sends distinct payloads until the deadline; returns
    ``[(envelope, payload)]`` from all threads."""
    sent: list[list[tuple[bytes, bytes]]] = [[] for _ in range(THREADS)]

    def work(t, deadline):
        k = 0
        while time.monotonic() < deadline and k < 3000:
            p = b"%d:%d" % (t, k)
            sent[t].append((send(p), p))
            k += 1

    assert _hammer(work) == []
    return [x for s in sent for x in s]


def _check_unique_and_opens(sent, receive):
    nonces = [_nonce(e) for e, _ in sent]
    assert len(set(nonces)) == len(nonces), \
        f"{len(nonces) - len(set(nonces))} nonces went out twice"
    assert sorted(nonces) == list(range(len(nonces)))  # 0, 1, 2, ... (transport Rule 1)
    # In nonce order, so that the replay window takes every one.
    for env, payload in sorted(sent, key=lambda x: _nonce(x[0])):
        assert receive(env) == payload


def test_device_session_with_lock_sends_each_nonce_once_from_threads():
    import threading as th
    peer, dev = _pair(th.Lock)
    sent = _send_from_threads(dev.send)
    assert len(sent) > 1000
    _check_unique_and_opens(sent, lambda e: peer.receive(e).payload)


def test_peer_sessions_with_lock_sends_each_nonce_once_from_threads():
    import threading as th
    peer, dev = _pair(th.Lock)
    sent = _send_from_threads(lambda p: peer.send(b"sensor-1", p))
    assert len(sent) > 1000

    def receive(e):
        ev, payload = dev.receive(e)
        assert ev == EV_DATA
        return payload

    _check_unique_and_opens(sent, receive)


def test_peer_sessions_with_lock_accepts_each_replayed_message_once_from_threads():
    # A replay-window check and its commit are one step under the lock: the
    # same data envelope delivered by several threads at once opens once.
    import threading as th
    peer, dev = _pair(th.Lock)
    envs = [dev.send(b"m%d" % i) for i in range(200)]
    opened = [0] * THREADS

    def work(t, deadline):
        for e in envs:
            try:
                peer.receive(e)
                opened[t] += 1
            except Exception as ex:  # the replay refusals
                assert type(ex).__name__ == "ReplayError", repr(ex)

    assert _hammer(work) == []
    assert sum(opened) == len(envs)


def test_one_peer_on_a_real_registry_serves_handshakes_and_data_from_threads(tmp_path):
    # The peer as a threaded host runs it: one backend, one PeerSessions
    # (lock=) over one Registry, devices handshaking and sending at once.
    # Every handshake completes, every reading arrives once and intact, and
    # the registry holds each device's last counter.
    import threading as th

    from moteseal.keys.keyfile import generate_keypair, write_key_file
    from moteseal.keys.registry import Registry

    be = NaclBackend()
    kp = generate_keypair()
    write_key_file(tmp_path / "hub.key", kp)
    reg = Registry(tmp_path / "hub.sqlite", create_for_peer=b"hub")
    reg.add_peer_key(kp.pub, tmp_path / "hub.key")
    suite = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
    ids = [b"s%d" % i for i in range(THREADS)]
    psks = {d: os.urandom(32) for d in ids}
    for d in ids:
        reg.provision(d, psks[d], suite)
    peer = PeerSessions(be, b"hub", reg, suite, lock=th.Lock())
    got: list[tuple[bytes, bytes]] = []
    rounds = [0] * THREADS

    def work(t, deadline):
        dev = DeviceSession(be, ids[t], b"hub", kp.pub, psks[ids[t]],
                            Msg1Counter(NonpersistingCounterStore()), suite=suite)
        while time.monotonic() < deadline and rounds[t] < 200:
            r = peer.receive(dev.handshake(b"hs %d" % rounds[t]))
            got.append((r.device_id, r.payload))
            assert dev.receive(r.reply)[0] == EV_HANDSHAKE
            p = b"data %d" % rounds[t]
            d = peer.receive(dev.send(p))
            got.append((d.device_id, d.payload))
            rounds[t] += 1

    try:
        assert _hammer(work) == []
        want = sorted((ids[t], b"%s %d" % (kind, i)) for t in range(THREADS)
                      for i in range(rounds[t]) for kind in (b"hs", b"data"))
        assert sorted(got) == want
        assert sum(rounds) > 20
        for t in range(THREADS):
            assert reg.counter_get(ids[t]) == rounds[t] - 1
    finally:
        reg.close()
