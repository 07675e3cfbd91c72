"""Shard assignment and leases (moteseal/hub/shard.py) against a real
PostgreSQL: the documented hash, rendezvous assignment, exclusive leases,
takeover after expiry, handover on a clean stop, and the fence that makes a
worker that cannot renew stop before anyone else may start."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from moteseal.hub.shard import Leases, ShardError, owner_of, shard_of


def test_the_shard_of_an_id_is_the_documented_sha256_prefix() -> None:
    # docs/scaling.md: first 8 bytes of SHA-256(id), big-endian, mod count.
    assert shard_of("sensor-1", 64) == 28 == int.from_bytes(hashlib.sha256(b"sensor-1").digest()[:8], "big") % 64
    assert shard_of(b"a", 64) == shard_of("a", 64) == 10
    assert shard_of("sensor-1", 1) == 0


def test_rendezvous_moves_only_a_dead_workers_shards() -> None:
    three = {s: owner_of(s, ["w1", "w2", "w3"]) for s in range(64)}
    two = {s: owner_of(s, ["w1", "w3"]) for s in range(64)}
    assert set(three.values()) == {"w1", "w2", "w3"}
    assert all(two[s] == o for s, o in three.items() if o != "w2")  # the survivors keep theirs
    assert owner_of(0, []) is None


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _leases(dsn: str, name: str, **kw) -> Leases:
    kw.setdefault("count", 16)
    kw.setdefault("lease", 2.0)
    kw.setdefault("renew", 0.5)
    return Leases(dsn, name, **kw)


def test_two_workers_split_the_shards_and_never_hold_one_together(pg_dsn: str) -> None:
    a, b = _leases(pg_dsn, "a"), _leases(pg_dsn, "b")
    try:
        overlaps: list[set[int]] = []
        stop = threading.Event()

        def spin(lz: Leases) -> None:
            while not stop.is_set():
                lz.tick()

        threads = [threading.Thread(target=spin, args=(x,)) for x in (a, b)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # both renew flat out meanwhile
            overlaps.append(a.held & b.held)
            time.sleep(0.001)
        stop.set()
        for t in threads:
            t.join(30)
        for _ in range(2):  # settle: a release by one, then the claim by the other
            a.tick()
            b.tick()
        assert a.held | b.held == set(range(16)) and not a.held & b.held
        assert a.held == {s for s in range(16) if owner_of(s, ["a", "b"]) == "a"}
        assert len(overlaps) > 100 and not any(overlaps)
    finally:
        a.close()
        b.close()


def test_a_silent_workers_shards_are_claimed_after_the_lease_expires(pg_dsn: str) -> None:
    changes: list[tuple[set[int], set[int]]] = []
    a = _leases(pg_dsn, "a", lease=1.0, renew=0.2)
    b = _leases(pg_dsn, "b", lease=1.0, renew=0.2, on_change=lambda h, g, lost: changes.append((g, lost)))
    try:
        a.tick()
        b.tick()
        a.tick()
        b.tick()
        a_had = set(a.held)
        assert a_had and b.held and not a_had & b.held
        # a stops renewing (killed): b cannot take its shards before expiry...
        b.tick()
        assert not a_had & b.held
        time.sleep(1.3)
        b.tick()
        assert b.held == set(range(16))
        assert any(a_had <= g for g, _ in changes)
    finally:
        a.close()
        b.close()


def test_a_clean_stop_hands_over_at_the_next_renewal(pg_dsn: str) -> None:
    a, b = _leases(pg_dsn, "a", lease=30.0), _leases(pg_dsn, "b", lease=30.0)
    lost: list[set[int]] = []
    a.on_change = lambda h, g, gone: lost.append(gone)
    try:
        a.tick(), b.tick(), a.tick(), b.tick()
        had = set(a.held)
        assert had
        a.release_all()
        assert a.held == set() and lost[-1] == had  # stopped handling first
        b.tick()
        assert b.held == set(range(16))  # no 30 s wait
    finally:
        a.close()
        b.close()


def test_a_worker_that_cannot_renew_drops_its_shards_before_they_expire(pg_dsn: str) -> None:
    clock = _Clock()
    dropped: list[set[int]] = []
    a = _leases(pg_dsn, "a", lease=5.0, renew=1.0, clock=clock,
                on_change=lambda h, g, lost: dropped.append(lost))
    try:
        a.tick()
        assert a.held == set(range(16))
        a._conn.close()
        a._dsn = pg_dsn.rsplit("/", 1)[0].rsplit(":", 1)[0] + ":1/nowhere"  # the database is unreachable
        clock.t += 3.0
        assert a.tick() == set(range(16))  # within lease - renew: still ours
        clock.t += 1.5
        assert a.tick() == set()  # past it: fenced off, before any expiry elsewhere
        assert dropped[-1] == set(range(16))
    finally:
        a.close()


def test_a_worker_with_another_shard_count_refuses_to_start(pg_dsn: str) -> None:
    a = _leases(pg_dsn, "a", count=16)
    try:
        with pytest.raises(ShardError, match="has 16 shards"):
            _leases(pg_dsn, "b", count=64)
        with pytest.raises(ShardError, match="worker name"):
            _leases(pg_dsn, "bad name!")
    finally:
        a.close()
