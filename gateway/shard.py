"""Which shard owns a device: the one stable function every moteseal part
that splits devices uses (gateways here; the hub workers the same).

Invariant: ``shard_of(id, n)`` is the first 8 bytes of SHA-256 of the id's
UTF-8 bytes, read as a big-endian integer, mod ``n`` (docs/scaling.md). It
depends on nothing but its arguments, so every process, host and version
agrees. The id is public (an MQTT topic level); no key is involved, which
is why this is the one gateway module that may import hashlib
(tests/test_architecture.py).

Invariant: the owner of a shard among live gateways is the one with the
highest rendezvous weight, the first 8 bytes of SHA-256 of
``"<shard>/<gateway>"`` (the hub workers' scheme, moteseal/hub/shard.py);
ties, which need equal digests, go to the larger name. It depends only on
the shard and the set of names, so gateways that see the same live set
agree, and removing a gateway moves only the shards it owned.
"""

from __future__ import annotations

import hashlib

__all__ = ["shard_of", "weight", "owner_of", "owned_shards"]


def shard_of(device_id: str, shards: int) -> int:
    """The shard (0 .. ``shards`` - 1) owning ``device_id``. Raises
    ``ValueError`` if ``shards`` < 1."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    digest = hashlib.sha256(device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def weight(shard: int, gateway: str) -> bytes:
    """The rendezvous weight of ``gateway`` for ``shard`` (compared as bytes,
    i.e. as a big-endian integer)."""
    return hashlib.sha256(f"{shard}/{gateway}".encode()).digest()[:8]


def owner_of(shard: int, gateways: "list[str] | set[str] | frozenset[str]") -> str | None:
    """The live gateway that owns ``shard``; None if there is none."""
    return max(gateways, key=lambda g: (weight(shard, g), g), default=None)


def owned_shards(me: str, gateways: "list[str] | set[str] | frozenset[str]",
                 shards: int) -> frozenset[int]:
    """The shards (of 0 .. ``shards`` - 1) that ``me`` owns when ``gateways``
    (``me`` included or not) are live."""
    live = set(gateways) | {me}
    return frozenset(s for s in range(shards) if owner_of(s, live) == me)
