"""Automatic shard ownership among gateways (``[mqtt] shard = "auto"``):
who is alive, which shards are mine, and what to forward again when I take
a dead gateway's shards over. No I/O and no clock of its own: the MQTT link
(gateway/mqtt.py) feeds it heartbeats and the time, and does what it says.

Invariants:
- The live set is this gateway plus every peer whose ``up`` heartbeat was
  heard less than ``timeout_s`` ago and that has not said ``down`` since
  (its own clean stop, or the will the broker publishes when its connection
  dies). Ownership is ``gateway.shard.owned_shards`` over that set, so
  gateways that see the same set agree, a join only moves shards to the
  newcomer, and a departure only moves the departed gateway's shards.
- Views may differ for a moment (one gateway heard a will before another).
  A gateway that hears a join stops forwarding the newcomer's shards only
  after the newcomer subscribed (its first heartbeat follows its SUBACK),
  so a join leaves no gap. A departure can: envelopes the dead gateway had
  received but not forwarded, and those that arrive before the survivors
  notice. So every gateway keeps the envelopes it left to others in a
  ``TakeoverBuffer`` and, on taking shards over, forwards again those of
  those shards received since ``replay_s`` before the departed gateway was
  last heard. A copy the dead gateway did forward arrives twice; the
  receiver's replay window drops it (docs/scaling.md).
- The buffer is bounded by count (``max_count``, the oldest go first,
  counted in ``evicted``) and by age (``max_age``); ``max_age`` covers
  ``timeout_s + replay_s`` plus a heartbeat, the longest look-back a
  takeover makes.

Heartbeats: topic ``moteseal/v1/gw/<client id>``, QoS 0, payload ``up <shards>``
(ASCII) every ``heartbeat_s``; ``down`` on a clean stop and as the MQTT will.
Anything else is counted in ``bad_heartbeats`` and ignored. A peer that
announces another shard count is ignored too (``shard_mismatch``): the
gateways would not agree on what a shard is.
"""

from __future__ import annotations

from collections import deque

from gateway.shard import owned_shards

__all__ = ["HEARTBEAT_PREFIX", "HEARTBEAT_FILTER", "Membership", "TakeoverBuffer",
           "heartbeat_payload", "parse_heartbeat", "valid_member_name"]

HEARTBEAT_PREFIX = "moteseal/v1/gw/"
HEARTBEAT_FILTER = HEARTBEAT_PREFIX + "+"
DOWN = b"down"
MAX_HEARTBEAT_BYTES = 16  # "up 1024" with room; longer is not ours
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
MAX_NAME_CHARS = 64  # an MQTT client id we generate is ~30 characters


def valid_member_name(name: str) -> bool:
    """Whether ``name`` can be a heartbeat topic level on Mosquitto and NATS
    (no ``/ + # .``, no spaces)."""
    return 0 < len(name) <= MAX_NAME_CHARS and set(name) <= _NAME_CHARS


def heartbeat_payload(shards: int) -> bytes:
    return f"up {shards}".encode()


def parse_heartbeat(payload: bytes) -> int:
    """The shard count an ``up`` heartbeat announces, or 0 for ``down``.
    Raises ``ValueError`` for anything else."""
    if payload == DOWN:
        return 0
    if len(payload) > MAX_HEARTBEAT_BYTES or not payload.startswith(b"up "):
        raise ValueError("not a heartbeat")
    digits = payload[3:]
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError("not a heartbeat")
    return int(digits)


class Membership:
    """One gateway's view of the live gateways and of the shards it owns.
    Not thread-safe: the MQTT link's network thread owns it (status reads
    copy its plain attributes)."""

    def __init__(self, me: str, shards: int, timeout_s: float, replay_s: float) -> None:
        self.me, self.shards = me, shards
        self.timeout_s, self.replay_s = timeout_s, replay_s
        self._heard: dict[str, float] = {}  # live peer -> when last heard
        self._departed: dict[str, float] = {}  # gone since the last update -> last heard
        self._joined = False  # a peer joined since the last update
        self.owned: frozenset[int] = owned_shards(me, (), shards)  # alone: every shard
        self.takeovers = 0  # shards taken over from a departed gateway
        self.bad_heartbeats = 0
        self.shard_mismatch = 0

    def peers(self) -> list[str]:
        return sorted(self._heard)

    def heartbeat(self, peer: str, payload: bytes, now: float) -> None:
        """A heartbeat from ``peer`` (its topic level) arrived at ``now``.
        Our own is ignored; a bad one is counted."""
        try:
            shards = parse_heartbeat(payload)
        except ValueError:
            self.bad_heartbeats += 1
            return
        if peer == self.me or not valid_member_name(peer):
            if peer != self.me:
                self.bad_heartbeats += 1
            return
        if shards == 0:
            last = self._heard.pop(peer, None)
            if last is not None:
                self._departed[peer] = last
        elif shards != self.shards:
            self.shard_mismatch += 1
        else:
            self._joined = self._joined or peer not in self._heard
            self._heard[peer] = now

    def update(self, now: float) -> tuple[frozenset[int], float]:
        """Expires silent peers and recomputes ``owned``. Returns the shards
        taken over from departed peers and the time from which their
        buffered envelopes are to be forwarded again (``now`` if none)."""
        for peer, last in list(self._heard.items()):
            if now - last >= self.timeout_s:
                del self._heard[peer]
                self._departed[peer] = last
        departed, self._departed = self._departed, {}
        if not departed and not self._joined:
            return frozenset(), now  # same live set: same shards (the hot path)
        self._joined = False
        old = self.owned
        self.owned = owned_shards(self.me, self._heard, self.shards)
        gained = self.owned - old
        if not departed or not gained:
            return frozenset(), now
        self.takeovers += len(gained)
        return gained, min(departed.values()) - self.replay_s


class TakeoverBuffer:
    """Recent envelopes of other gateways' shards, oldest first, bounded by
    ``max_count`` and ``max_age`` seconds (module invariants). Not
    thread-safe: the MQTT link's network thread owns it."""

    def __init__(self, max_count: int, max_age: float) -> None:
        self.max_count, self.max_age = max_count, max_age
        self._items: deque[tuple[float, int, str, bytes]] = deque()
        self.evicted = 0  # dropped for the count bound before they aged out

    def __len__(self) -> int:
        return len(self._items)

    def add(self, now: float, shard: int, arrived_from: str, envelope: bytes) -> None:
        self._items.append((now, shard, arrived_from, envelope))
        while len(self._items) > self.max_count:
            self._items.popleft()
            self.evicted += 1

    def prune(self, now: float) -> None:
        items = self._items
        while items and now - items[0][0] > self.max_age:
            items.popleft()

    def take(self, shards: frozenset[int], since: float) -> list[tuple[str, bytes]]:
        """Removes and returns, in arrival order, the (arrived_from,
        envelope) pairs of ``shards`` received at or after ``since``."""
        out: list[tuple[str, bytes]] = []
        keep: deque[tuple[float, int, str, bytes]] = deque()
        for item in self._items:
            if item[1] in shards:
                if item[0] >= since:
                    out.append((item[2], item[3]))
            else:
                keep.append(item)
        self._items = keep
        return out
