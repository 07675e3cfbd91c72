"""The relay core: decide, per envelope, to forward it or to drop and count it.

No I/O here. A link (the MQTT link ``gateway.mqtt``, the serial bridge)
hands each envelope it receives to ``Relay.handle(envelope, arrived_from,
link, done)``, where ``arrived_from`` is the id the link authenticated (the
MQTT topic, which the broker's ACL binds to the account; the serial port's
attachment). The relay validates the outer envelope, applies the route table
and the sender's token bucket, and calls ``send(dst, envelope, done)`` on the
link that reaches ``dst``.

Invariants:
- The bytes forwarded are the bytes received, unchanged.
- Every envelope is either forwarded once or counted once under exactly one
  drop reason; ``handle`` never raises for anything a sender can do.
- ``done`` is called exactly once: at once for a drop, and by the
  destination link once it has taken responsibility for the message (MQTT:
  the broker's PUBACK; serial: written or queued on disk). Links acknowledge
  their own inbound message only in ``done``, so a relay that dies between
  receiving and forwarding loses nothing: the sender's broker re-delivers.
- Per-sender work before the rate limit is O(1), so a flooding sender costs
  little and cannot delay others.
- ``handle`` may be called from several links' threads at once: decisions
  and counters are taken under one lock, and ``send`` is called outside it,
  so a slow link never holds up the others.
- Who may address whom is the ``RoutePolicy``'s call: by default a device
  addresses only a peer, and a peer only devices.
- Every table is bounded: token buckets (``RateLimiter.max_senders``), the
  route cache, and ``last_seen`` (``RelayStats.max_labelled`` ids; envelopes
  from further ids are counted in ``unlabelled``, never labelled).
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from typing import Callable, Iterable, Mapping, Protocol

from gateway.envelope import (DEFAULT_MAX_ENVELOPE_BYTES, MALFORMED, OVERSIZE,
                              UNKNOWN_VERSION, Header, Rejected, read_header)

__all__ = [
    "Link",
    "Done",
    "RouteTable",
    "RoutePolicy",
    "RateLimiter",
    "RelayStats",
    "Relay",
    "DROP_REASONS",
    "RATE_LIMITED",
    "SRC_MISMATCH",
    "UNKNOWN_SOURCE",
    "UNKNOWN_DESTINATION",
    "LINK_ERROR",
    "POLICY",
]

Done = Callable[[], None]

RATE_LIMITED = "rate_limited"
SRC_MISMATCH = "src_mismatch"
UNKNOWN_SOURCE = "unknown_source"
UNKNOWN_DESTINATION = "unknown_destination"
LINK_ERROR = "link_error"
POLICY = "policy"
DROP_REASONS = (OVERSIZE, MALFORMED, UNKNOWN_VERSION, RATE_LIMITED, SRC_MISMATCH,
                UNKNOWN_SOURCE, UNKNOWN_DESTINATION, LINK_ERROR, POLICY)


class Link(Protocol):
    """What the relay needs from a link: deliver ``envelope`` to device ``dst``
    and call ``done`` once the link has taken responsibility for it.

    ``send`` may raise ``OSError`` (or any ``Exception``) if it cannot take the
    message at all; the relay then counts a ``link_error`` drop.
    """

    def send(self, dst: str, envelope: bytes, done: Done | None) -> None: ...


class RouteTable:
    """Which link reaches which device id.

    ``routes`` maps a link name to id patterns (exact ids, or ``fnmatch``
    patterns such as ``sensor-*``). Exact ids win over patterns; patterns are
    tried in the order given. Lookups are cached (ids are at most 16 bytes and
    the cache is bounded). May be shared between threads (``Relay`` calls it
    under its lock; a lost cache entry costs only a recomputation).
    """

    _CACHE_MAX = 65536

    def __init__(self, routes: Mapping[str, Iterable[str]]) -> None:
        self._exact: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for link, ids in routes.items():
            for pattern in ids:
                if any(ch in pattern for ch in "*?["):
                    self._patterns.append((re.compile(fnmatch.translate(pattern)), link))
                else:
                    self._exact.setdefault(pattern, link)
        self._cache: dict[str, str | None] = {}

    def link_for(self, device_id: str) -> str | None:
        """The link name that reaches ``device_id``, or None."""
        try:
            return self._cache[device_id]
        except KeyError:
            pass
        link = self._exact.get(device_id)
        if link is None:
            for regex, name in self._patterns:
                if regex.match(device_id):
                    link = name
                    break
        if len(self._cache) >= self._CACHE_MAX:
            self._cache.clear()
        self._cache[device_id] = link
        return link


class RoutePolicy:
    """Which source may address which destination.

    ``peers`` are id patterns (exact ids or ``fnmatch`` patterns) of peers
    (hubs); every other id is a device. A device may address only a peer,
    and a peer only a device, so no account can make the gateway queue or
    deliver anything device to device. ``any_to_any=True`` lifts the policy
    (every id may address every other). May be shared between threads: a
    lookup only adds to a bounded cache, where a lost entry costs a
    recomputation.
    """

    def __init__(self, peers: Iterable[str] = (), *, any_to_any: bool = False) -> None:
        self.any_to_any = any_to_any
        self._peers = RouteTable({"peer": list(peers)})

    @classmethod
    def open(cls) -> "RoutePolicy":
        """The policy that allows everything (a relay built without one)."""
        return cls(any_to_any=True)

    def is_peer(self, device_id: str) -> bool:
        return self._peers.link_for(device_id) is not None

    def allows(self, src: str, dst: str) -> bool:
        """True if ``src`` may address ``dst``."""
        return self.any_to_any or self.is_peer(src) != self.is_peer(dst)


class RateLimiter:
    """One token bucket per sender: ``rate`` envelopes per second on average,
    bursts up to ``burst``. ``rate <= 0`` disables limiting.

    Memory is bounded: past ``max_senders`` buckets, idle (full) ones are
    forgotten, which changes nothing since a new bucket starts full. Not
    thread-safe: callers serialise ``allow`` (``Relay`` holds its lock).
    """

    def __init__(self, rate: float, burst: float, max_senders: int = 100_000) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self.max_senders = max_senders
        self._buckets: dict[str, list[float]] = {}  # id -> [tokens, last]

    def allow(self, sender: str, now: float) -> bool:
        """Take one token from ``sender``'s bucket; False if it is empty."""
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= self.max_senders:
                self._forget_idle(now)
            bucket = self._buckets[sender] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _forget_idle(self, now: float) -> None:
        full = [k for k, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_senders:
            self._buckets.clear()


class RelayStats:
    """Counters read by the metrics endpoint and the status file. Not
    thread-safe by itself: ``Relay`` guards it with its lock.

    ``last_seen`` labels at most ``max_labelled`` ids (the status file and
    Prometheus labels come from it); envelopes from ids beyond that are
    counted in ``unlabelled``.
    """

    DEFAULT_MAX_LABELLED = 4096

    def __init__(self, max_labelled: int = DEFAULT_MAX_LABELLED) -> None:
        self.relayed: dict[str, int] = {}  # destination link -> count
        self.dropped: dict[str, int] = {reason: 0 for reason in DROP_REASONS}
        self.last_seen: dict[str, float] = {}  # device id -> wall-clock seconds
        self.max_labelled = max_labelled
        self.unlabelled = 0

    def seen(self, device_id: str, when: float) -> None:
        if device_id in self.last_seen or len(self.last_seen) < self.max_labelled:
            self.last_seen[device_id] = when
        else:
            self.unlabelled += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "relayed": sum(self.relayed.values()),
            "relayed_by_link": dict(self.relayed),
            "dropped": dict(self.dropped),
            "last_seen": dict(self.last_seen),
            "unlabelled": self.unlabelled,
        }


DropHook = Callable[[str, str, str, int, "str | None"], None]  # reason, from, link, size, dst
ForwardHook = Callable[[Header, int, str], None]


class Relay:
    """Validate, route, rate-limit and forward envelopes between links.

    ``links`` maps a link name to a ``Link``; links may be added later with
    ``add_link``. ``on_drop(reason, arrived_from, link, size, dst)`` is called for
    each drop (the runner logs it, without payload bytes);
    ``on_forward(header, size, out_link)`` for each forwarded envelope (the
    demo shows what the gateway sees: ids, kinds, sizes). ``clock`` is a
    monotonic clock for the token buckets and ``wall_clock`` stamps last-seen.
    ``policy`` says who may address whom (``RoutePolicy.open()`` when None;
    the gateway runner passes the config's). ``handle`` and ``drop`` may be
    called from any thread.
    """

    def __init__(self, routes: RouteTable, limiter: RateLimiter,
                 links: Mapping[str, Link] | None = None, *,
                 max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
                 on_drop: DropHook | None = None,
                 on_forward: ForwardHook | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 policy: RoutePolicy | None = None) -> None:
        self.routes = routes
        self.policy = policy or RoutePolicy.open()
        self.limiter = limiter
        self.links: dict[str, Link] = dict(links or {})
        self.max_envelope_bytes = max_envelope_bytes
        self.on_drop = on_drop
        self.on_forward = on_forward
        self.clock = clock
        self.wall_clock = wall_clock
        self.stats = RelayStats()
        self._lock = threading.Lock()

    def add_link(self, name: str, link: Link) -> None:
        self.links[name] = link

    def snapshot(self) -> dict[str, object]:
        """A consistent copy of the counters (safe from any thread)."""
        with self._lock:
            return self.stats.snapshot()

    def handle(self, envelope: bytes, arrived_from: str, link: str,
               done: Done | None = None) -> str | None:
        """Forward ``envelope`` (which ``link`` received from ``arrived_from``)
        or drop it. Returns None if forwarded, else the drop reason."""
        with self._lock:
            reason, header, out_name = self._decide(envelope, arrived_from, link)
            if reason is not None:
                self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1
        if reason is not None:
            return self._dropped(reason, arrived_from, link, len(envelope), done,
                                 header.dst if header is not None else None)
        out = self.links[out_name]  # type: ignore[index]
        try:
            out.send(header.dst, envelope, done)  # type: ignore[union-attr]
        except Exception:
            with self._lock:
                self.stats.dropped[LINK_ERROR] += 1
            return self._dropped(LINK_ERROR, arrived_from, link, len(envelope), done, header.dst)  # type: ignore[union-attr]
        with self._lock:
            stats = self.stats
            stats.relayed[out_name] = stats.relayed.get(out_name, 0) + 1  # type: ignore[index]
            stats.seen(header.src, self.wall_clock())  # type: ignore[union-attr]
        if self.on_forward is not None:
            try:
                self.on_forward(header, len(envelope), out_name)  # type: ignore[arg-type]
            except Exception:
                pass  # an observer must not stop the relay
        return None

    def _decide(self, envelope: bytes, arrived_from: str,
                link: str) -> tuple[str | None, Header | None, str | None]:
        if len(envelope) > self.max_envelope_bytes:
            return OVERSIZE, None, None
        if not self.limiter.allow(arrived_from, self.clock()):
            return RATE_LIMITED, None, None
        try:
            header = read_header(envelope, self.max_envelope_bytes)
        except Rejected as exc:
            return exc.reason, None, None
        if header.src != arrived_from:
            return SRC_MISMATCH, None, None
        if self.routes.link_for(header.src) != link:
            # Also catches a device claiming, on one link, an id that lives on another.
            return UNKNOWN_SOURCE, None, None
        out_name = self.routes.link_for(header.dst)
        if out_name is None or out_name not in self.links:
            return UNKNOWN_DESTINATION, header, None  # the drop line names dst
        if not self.policy.allows(header.src, header.dst):
            return POLICY, header, None
        return None, header, out_name

    def drop(self, reason: str, arrived_from: str, link: str, size: int,
             done: Done | None = None) -> str:
        """Count and report a drop a link decided itself (a serial port's
        own rate limit); ``reason`` is one of ``DROP_REASONS``."""
        with self._lock:
            self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1
        return self._dropped(reason, arrived_from, link, size, done)

    def _dropped(self, reason: str, arrived_from: str, link: str, size: int,
                 done: Done | None, dst: str | None = None) -> str:
        if self.on_drop is not None:
            try:
                self.on_drop(reason, arrived_from, link, size, dst)
            except Exception:
                pass  # a logging failure must not stop the relay
        if done is not None:
            done()
        return reason
