"""Sharded hub workers: which worker holds which devices, and leases in
PostgreSQL that hand a dead worker's devices to the others within seconds
(docs/scaling.md, "Sharded hubs").

The design:
- A device belongs to one of ``count`` virtual shards (default 64):
  ``shard_of(id) = first 8 bytes of SHA-256(id), big-endian, mod count``.
  Stable across processes, machines and Python versions; the count is fixed
  for a deployment (stored in ``shard_config``; a worker configured with
  another count refuses to start).
- Live workers announce themselves in ``hub_workers`` (a heartbeat row with
  an expiry). Each shard's desired owner is the live worker with the
  highest rendezvous weight ``SHA-256("<shard>/<worker>")[:8]``: every
  worker computes the same assignment from the same list, a new worker
  takes about 1/N of the shards, and a dead one's shards spread over the
  rest.
- Ownership itself is a lease row per shard in ``shard_lease`` (owner,
  expiry by the database's clock). A worker renews the leases it holds and
  wants every ``renew`` seconds, releases the ones it no longer wants (after
  it stopped handling them), and claims the ones it wants whose lease is
  free or expired, in one transaction. A claim is one conditional upsert,
  so two workers never both hold a shard's lease.

Invariants:
- Rule 1: a worker handles a device only while it holds the device's
  shard lease, and stops before the lease can expire: if it cannot renew
  (the database is unreachable), it drops every shard ``lease - renew``
  seconds after its last successful renewal began, which is before any
  other worker may claim them.
- Rule 2 (takeover): a worker killed at time T is out of every other
  worker's live list and its leases are expired by T + ``lease``; the next
  renewal of the others, at most ``renew`` later, claims them. Takeover
  takes at most ``lease + renew`` seconds plus one MQTT subscription.
- Rule 3: the shared state that makes a handover safe is in PostgreSQL,
  never in a worker: message-1 counters (``PgRegistry``), readings and
  acknowledgement marks (``PgReadingStore``). A worker that gains a shard
  forgets its cached marks for those devices. Sessions are in memory: the
  new worker answers the devices' data with an unknown-session hint, they
  handshake again and resend what was not acknowledged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Callable

import psycopg

from device.errors import LocalError

__all__ = ["shard_of", "owner_of", "Leases", "ShardError", "DEFAULT_SHARDS"]

DEFAULT_SHARDS = 64
DEFAULT_LEASE = 5.0  # seconds a lease (and a heartbeat) lasts without renewal
DEFAULT_RENEW = 1.0  # seconds between renewals

_DDL = """
CREATE TABLE IF NOT EXISTS shard_config (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hub_workers (
    name TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS shard_lease (
    shard INTEGER PRIMARY KEY,
    owner TEXT,
    expires_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    taken_at DOUBLE PRECISION
);
"""
_NOW = "extract(epoch from clock_timestamp())"  # the database's clock: one clock for every worker


class ShardError(LocalError):
    """The shard configuration is wrong (a count that differs from the
    deployment's, a bad worker name) or the database cannot hold leases."""

    exit_code = 2


def shard_of(device_id: bytes | str, count: int) -> int:
    """The device's virtual shard: SHA-256(id)[:8] big-endian mod ``count``."""
    b = device_id.encode("ascii") if isinstance(device_id, str) else bytes(device_id)
    return int.from_bytes(hashlib.sha256(b).digest()[:8], "big") % count


def _weight(shard: int, worker: str) -> bytes:
    return hashlib.sha256(f"{shard}/{worker}".encode()).digest()[:8]


def owner_of(shard: int, workers: list[str]) -> str | None:
    """The desired owner of ``shard`` among ``workers`` (rendezvous hashing)."""
    return max(workers, key=lambda w: _weight(shard, w), default=None)


class Leases:
    """One worker's shard leases. ``tick()`` renews, releases and claims,
    and returns the shards held; ``on_change(held, gained, lost)`` runs
    before a lease is released (so the worker stops first) and after new
    ones are claimed.

    Not thread-safe: one thread (the worker's lease thread) calls ``tick``.
    """

    def __init__(self, dsn: str, worker: str, *, count: int = DEFAULT_SHARDS,
                 lease: float = DEFAULT_LEASE, renew: float = DEFAULT_RENEW,
                 password: str | None = None,
                 on_change: Callable[[set[int], set[int], set[int]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not worker or len(worker) > 64 or not worker.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ShardError(f"worker name {worker!r}: 1..64 characters of A-Z a-z 0-9 . _ -")
        if not 1 <= count <= 65536:
            raise ShardError("the shard count must be 1..65536")
        if not 0 < renew < lease:
            raise ShardError("renew must be positive and shorter than the lease")
        self.worker, self.count, self.lease, self.renew = worker, count, float(lease), float(renew)
        self.on_change = on_change
        self.clock = clock
        self.held: set[int] = set()
        self.valid_until = -1.0  # local clock: past it, Rule 1 drops every shard
        kw: dict[str, Any] = {"autocommit": True, "connect_timeout": 5}
        if password is not None:
            kw["password"] = password
        self._dsn, self._kw = dsn, kw
        try:
            self._conn = psycopg.connect(dsn, **kw)
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x73686172,))  # one creator
                self._conn.execute(_DDL)
                self._conn.execute("INSERT INTO shard_config (count) VALUES (%s) ON CONFLICT DO NOTHING", (count,))
                have = self._conn.execute("SELECT count FROM shard_config").fetchone()[0]
        except psycopg.Error as e:
            raise ShardError(f"shard leases: {_first_line(e)}") from None
        if have != count:
            raise ShardError(f"this deployment has {have} shards; the worker is configured with {count}")

    def _live_conn(self) -> psycopg.Connection:
        if self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._dsn, **self._kw)
        return self._conn

    def tick(self) -> set[int]:
        """One renewal round (Rules 1-2). Never raises for a database
        error: the shards stay held until ``valid_until``, then are dropped."""
        started = self.clock()
        try:
            conn = self._live_conn()
            with conn.transaction():
                conn.execute(f"INSERT INTO hub_workers (name, expires_at, started_at) VALUES (%s, {_NOW} + %s, {_NOW}) "
                             "ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at",
                             (self.worker, self.lease))
                live = [r[0] for r in conn.execute(f"SELECT name FROM hub_workers WHERE expires_at > {_NOW}")]
            want = {s for s in range(self.count) if owner_of(s, live) == self.worker}
            giving_up = self.held - want
            if giving_up:  # stop handling first, then release (Rule 1)
                self._change(self.held - giving_up, set(), giving_up)
            with conn.transaction():
                # Every lease held here but not wanted, also one a failed
                # round left behind (already not handled: Rule 1 holds).
                conn.execute("UPDATE shard_lease SET owner = NULL, expires_at = 0 "
                             "WHERE owner = %s AND NOT (shard = ANY(%s))", (self.worker, sorted(want)))
                renewed = {r[0] for r in conn.execute(
                    f"UPDATE shard_lease SET expires_at = {_NOW} + %s WHERE owner = %s AND shard = ANY(%s) "
                    "RETURNING shard", (self.lease, self.worker, sorted(want)))}
                claim = sorted(want - renewed)
                claimed: set[int] = set()
                if claim:
                    claimed = {r[0] for r in conn.execute(
                        f"INSERT INTO shard_lease (shard, owner, expires_at, taken_at) "
                        f"SELECT s, %s, {_NOW} + %s, {_NOW} FROM unnest(%s::int[]) AS s "
                        "ON CONFLICT (shard) DO UPDATE SET owner = excluded.owner, "
                        "expires_at = excluded.expires_at, taken_at = excluded.taken_at "
                        "WHERE shard_lease.owner IS NULL OR shard_lease.expires_at <= excluded.taken_at "
                        "RETURNING shard", (self.worker, self.lease, claim))}
        except psycopg.Error:
            if self.held and self.clock() > self.valid_until:
                self._change(set(), set(), set(self.held))  # Rule 1: fenced off
            return self.held
        self.valid_until = started + self.lease - self.renew
        now_held = renewed | claimed
        lost = (self.held - giving_up) - now_held
        gained = now_held - self.held
        if gained or lost:
            self._change(now_held, gained, lost)
        return self.held

    def _change(self, held: set[int], gained: set[int], lost: set[int]) -> None:
        self.held = set(held)
        if self.on_change is not None:
            self.on_change(set(held), gained, lost)

    def release_all(self) -> None:
        """A clean stop: stop handling, then free every lease at once so the
        others take over at their next renewal rather than after expiry."""
        held = set(self.held)
        if held:
            self._change(set(), set(), held)
        try:
            conn = self._live_conn()
            with conn.transaction():
                conn.execute("UPDATE shard_lease SET owner = NULL, expires_at = 0 WHERE owner = %s", (self.worker,))
                conn.execute("DELETE FROM hub_workers WHERE name = %s", (self.worker,))
        except psycopg.Error:
            pass  # the leases expire by themselves

    def close(self) -> None:
        self._conn.close()

    def run(self, stop: threading.Event) -> None:
        """``tick`` every ``renew`` seconds until ``stop`` is set."""
        while not stop.is_set():
            t = self.clock()
            self.tick()
            stop.wait(max(0.0, self.renew - (self.clock() - t)))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
